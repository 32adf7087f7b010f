"""`normbench run` end to end through the CLI: results layout, CSV schema, determinism, endings."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normbench import __version__
from normbench.cli import app
from normbench.config import validate
from normbench.results import EPOCH_COLUMNS, STEP_COLUMNS, read_meta
from normbench.train.runner import run as run_config

from conftest import REPO, TIMING, rows, tiny_config, write_tiny_cifar, write_tiny_mnist

def only_run_dir(results: Path) -> Path:
    dirs = list((results / "runs").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"normbench {__version__}"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "normbench", "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and __version__ in out.stdout


def test_run_writes_the_results_layout(runner, write_config, tmp_path):
    results = tmp_path / "results"
    result = runner.invoke(app, ["run", str(write_config()), "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(results)
    assert "test_acc" in result.output and str(run_dir) in result.output.replace("\n", "")
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "meta.json", "steps.csv", "epochs.csv", "model.pt"}

    saved = validate(yaml.safe_load((run_dir / "config.yaml").read_text()), "saved")
    assert saved == validate(tiny_config(), "t")

    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["end_time"] >= meta["start_time"]
    env = meta["environment"]
    for key in ("normbench", "torch", "torchvision", "python", "device", "device_name", "threads", "host"):
        assert env[key] not in (None, "")
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert meta["steps_per_epoch"] == 256 // 16 and meta["dropped_per_epoch"] == 0
    assert meta["data"]["name"] == "synthetic"

    with open(run_dir / "epochs.csv") as f:
        assert tuple(next(csv.reader(f))) == EPOCH_COLUMNS
    with open(run_dir / "steps.csv") as f:
        assert tuple(next(csv.reader(f))) == STEP_COLUMNS
    epochs, steps = rows(run_dir / "epochs.csv"), rows(run_dir / "steps.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert [int(r["step"]) for r in steps] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert [int(r["samples_seen"]) for r in steps] == [64 * k for k in range(1, 9)]
    assert float(epochs[-1]["test_acc"]) == pytest.approx(meta["final_test_acc"])
    assert float(epochs[-1]["test_acc"]) > 0.5  # 4 classes: chance is 0.25


def test_trailing_partial_batch_is_dropped_and_counted(tmp_path):
    cfg = validate(tiny_config(batch_size=24, epochs=1), "t")  # 256 = 10 * 24 + 16
    outcome = run_config(cfg, tmp_path)
    meta = read_meta(outcome.run_dir)
    assert meta["steps_per_epoch"] == 10 and meta["dropped_per_epoch"] == 16
    assert int(rows(outcome.run_dir / "epochs.csv")[0]["samples_seen"]) == 240


def test_max_samples_overrides_epochs(tmp_path):
    cfg = validate(tiny_config(max_samples=16 * 20, epochs=50), "t")  # 20 steps = 1 epoch + 4 steps
    outcome = run_config(cfg, tmp_path)
    epochs = rows(outcome.run_dir / "epochs.csv")
    assert [int(r["samples_seen"]) for r in epochs] == [256, 320]
    assert read_meta(outcome.run_dir)["steps_done"] == 20


def _without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(path)]


def test_same_config_and_seed_give_identical_results_on_cpu(tmp_path):
    cfg = validate(tiny_config(), "t")
    a = run_config(cfg, tmp_path / "a").run_dir
    b = run_config(cfg, tmp_path / "b").run_dir
    for name in ("epochs.csv", "steps.csv"):
        assert _without_timing(a / name) == _without_timing(b / name)
    other = run_config(validate(tiny_config(seed=1), "t"), tmp_path / "c").run_dir
    assert _without_timing(a / "steps.csv") != _without_timing(other / "steps.csv")


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group", "instance"])
def test_every_norm_runs_end_to_end(tmp_path, norm):
    cfg = validate(tiny_config(**{"norm.type": norm, "epochs": 1}), "t")
    outcome = run_config(cfg, tmp_path)
    assert outcome.status == "completed"


def test_run_on_tiny_mnist_files(runner, write_config, tmp_path):
    write_tiny_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=64, n_test=32)
    config = write_config(**{"dataset": {"name": "mnist"}, "epochs": 3})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "data"),
                                 "--results-dir", str(tmp_path / "r")],
                           env={"NORMBENCH_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    meta = read_meta(only_run_dir(tmp_path / "r"))
    assert meta["data"]["source"].endswith("raw")
    assert (meta["data"]["train_samples"], meta["data"]["val_samples"]) == (58, 6)  # a tenth held out for validation


def test_run_on_tiny_cifar_files(runner, write_config, tmp_path):
    write_tiny_cifar(tmp_path / "data", n_train=40, n_test=20)
    config = write_config(**{"dataset": {"name": "cifar10", "data_dir": str(tmp_path / "data")}, "batch_size": 8})
    result = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    meta = read_meta(only_run_dir(tmp_path / "r"))
    assert (meta["data"]["train_samples"], meta["data"]["val_samples"], meta["steps_per_epoch"]) == (36, 4, 4)


def test_divergence_is_recorded_with_exit_code_3(runner, write_config, tmp_path):
    config = write_config(**{"norm.type": "none", "optimizer": {"name": "sgd", "lr": 1e12}, "log_every": 1})
    result = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 3, result.output
    assert "run diverged" in result.output and "Traceback" not in result.output
    meta = read_meta(only_run_dir(tmp_path / "r"))
    assert meta["status"] == "diverged" and "training loss became" in meta["reason"]


class InterruptAfter:
    """A reporter that presses Ctrl-C after a few steps."""

    def __init__(self, steps):
        self.steps = steps

    def start(self, *a): ...
    def log(self, *a): ...
    def epoch(self, *a): ...
    def finish(self): ...

    def advance(self, steps=1):
        self.steps -= steps
        if self.steps == 0:
            raise KeyboardInterrupt


def test_interrupt_is_recorded_and_files_are_flushed(tmp_path):
    cfg = validate(tiny_config(log_every=2), "t")
    outcome = run_config(cfg, tmp_path, reporter=InterruptAfter(7))
    assert outcome.status == "interrupted" and outcome.exit_code == 130
    meta = read_meta(outcome.run_dir)
    assert meta["status"] == "interrupted" and meta["end_time"]
    assert [int(r["step"]) for r in rows(outcome.run_dir / "steps.csv")] == [2, 4, 6]


def test_sigterm_ends_a_cli_run_as_interrupted(tmp_path, write_config):
    """A real process, really signalled: the run directory says interrupted and the CSVs are intact."""
    import signal
    import time

    config = write_config(**{"dataset.train_samples": 4096, "epochs": 50})
    proc = subprocess.Popen([sys.executable, "-m", "normbench", "run", str(config), "--results-dir", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    steps_csv = None
    while time.time() < deadline:
        found = list((tmp_path / "r").glob("runs/*/steps.csv"))
        if found and len(found[0].read_text().splitlines()) > 2:
            steps_csv = found[0]
            break
        time.sleep(0.2)
    assert steps_csv is not None, "the run never logged a step"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    meta = read_meta(steps_csv.parent)
    assert meta["status"] == "interrupted"
    lines = steps_csv.read_text().splitlines()
    assert all(len(line.split(",")) == len(STEP_COLUMNS) for line in lines)


def test_completed_run_directory_is_never_overwritten(tmp_path):
    cfg = validate(tiny_config(epochs=1), "t")
    outcome = run_config(cfg, tmp_path)
    before = (outcome.run_dir / "epochs.csv").read_text()
    from normbench.errors import NormbenchError

    with pytest.raises(NormbenchError, match="holds a completed run; it is never overwritten"):
        run_config(cfg, tmp_path, run_path=outcome.run_dir, replace_incomplete=True)
    assert (outcome.run_dir / "epochs.csv").read_text() == before
    assert json.loads((outcome.run_dir / "meta.json").read_text())["status"] == "completed"


def test_meta_is_valid_json_even_after_nan(tmp_path):
    cfg = validate(tiny_config(**{"norm.type": "none", "optimizer": {"name": "sgd", "lr": 1e12}, "log_every": 1}), "t")
    outcome = run_config(cfg, tmp_path)
    json.loads((outcome.run_dir / "meta.json").read_text())  # NaN written as null, not as invalid JSON


def test_dry_run_prints_the_resolved_config_and_trains_nothing(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config()), "--dry-run", "--set", "norm.type=group",
                                 "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["norm"]["type"] == "group"
    assert not (tmp_path / "r").exists()


@pytest.mark.gpu
def test_cuda_run_keeps_data_on_the_gpu(tmp_path):
    cfg = validate(tiny_config(device="cuda"), "t")
    outcome = run_config(cfg, tmp_path)
    assert outcome.status == "completed"
    assert read_meta(outcome.run_dir)["environment"]["device"].startswith("cuda")


def test_run_names_carry_the_overrides_and_meta_records_the_command(runner, write_config, tmp_path):
    results = tmp_path / "results"
    args = ["run", str(write_config(epochs=1)), "--set", "norm.type=group", "--set", "batch_size=8",
            "--results-dir", str(results)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(results)
    assert run_dir.name.startswith("tiny-norm=group-bs=8-20"), run_dir.name
    meta = read_meta(run_dir)
    assert meta["argv"] == ["normbench", *args] and meta["overrides"] == ["norm.type=group", "batch_size=8"]


def test_packed_run_names_carry_the_overrides_but_not_pack_or_seed(runner, write_config, tmp_path):
    args = ["run", str(write_config(epochs=1)), "--set", "pack=2", "--set", "batch_size=8",
            "--results-dir", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "r" / "runs").iterdir())
    assert [n.split("-20")[0] for n in names] == ["tiny-bs=8-seed0", "tiny-bs=8-seed1"], names


def test_name_option_names_the_run(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(epochs=1)), "--set", "batch_size=8", "--name", "gn-small",
                                 "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "r")
    assert run_dir.name.startswith("gn-small-20") and read_meta(run_dir)["name"] == "gn-small"
    result = runner.invoke(app, ["run", str(write_config()), "--name", "a b", "--results-dir", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "name=" in result.stderr and not (tmp_path / "r2").exists()


def test_a_long_override_tag_is_bounded_and_safe():
    from normbench.train.dispatch import MAX_TAG, override_tag

    assert override_tag(["norm={type: group, groups: 4}", "optimizer.lr=1e-3"]) == "norm=type_group_groups_4-lr=1e-3"
    tag = override_tag([f"optimizer.weight_decay=0.{'1' * 40}", "model=mlp", "norm.eps=1e-5"])
    assert len(tag) <= MAX_TAG and tag.startswith("weight_decay=0.111") and "/" not in tag


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_meta_json_has_the_mode_of_every_other_file(tmp_path, umask):
    import os

    previous = os.umask(umask)
    try:
        outcome = run_config(validate(tiny_config(epochs=1), "t"), tmp_path / "r")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in outcome.run_dir.iterdir()}
    assert modes["meta.json"] == modes["config.yaml"] == 0o666 & ~umask, modes
