"""`normbench sweep --pack-seeds`: a grid point's seeds trained as one packed model give the
index rows, run directories and (to float32 closeness) the numbers of an unpacked sweep, and
resume like one."""

import json
import shutil
from pathlib import Path

import pytest

from normbench.cli import app
from normbench.results import read_meta

from conftest import rows

SEEDS = ("0", "2")  # not consecutive: a sweep packs any seeds
SAME = ("point", "norm.type", "batch_size", "seed", "lr", "status", "reason", "run_dir")  # index columns that must be equal


def sweep(runner, config: Path, results: Path, *args: str):
    return runner.invoke(app, ["sweep", str(config), "--results-dir", str(results), "--jobs", "1", *args])


@pytest.fixture
def config(write_config):
    """mlp + batch norm, one epoch: packable, as in test_packed's float32 CLI comparison."""
    return write_config(**{"model": "mlp", "norm.type": "batch", "epochs": 1})


def assert_close_runs(packed: Path, alone: Path) -> None:
    """Two run directories of one seed: the same epochs, losses within float32 drift (as
    test_packed.test_cli_pack_matches_separate_cli_runs_in_float32), at most 2 of 64 test samples flipped."""
    for p, s in zip(rows(packed / "epochs.csv"), rows(alone / "epochs.csv"), strict=True):
        assert float(p["train_loss"]) == pytest.approx(float(s["train_loss"]), rel=1e-3)
        assert float(p["test_loss"]) == pytest.approx(float(s["test_loss"]), rel=1e-3)
        assert float(p["test_acc"]) == pytest.approx(float(s["test_acc"]), abs=2 / 64)


def test_packed_sweep_has_the_rows_and_run_dirs_and_results_of_an_unpacked_one(runner, config, tmp_path):
    args = ("--norms", "batch,layer", "--seeds", ",".join(SEEDS))
    packed = sweep(runner, config, tmp_path, *args, "--pack-seeds", "on", "--name", "packed")
    assert packed.exit_code == 0, packed.output
    plan = " ".join(packed.output.split())
    assert "4 packed into 2 run(s), 0 run(s) alone" in plan and plan.count("run, packed (0+2)") == 4
    alone = sweep(runner, config, tmp_path, *args, "--pack-seeds", "off", "--name", "alone")
    assert alone.exit_code == 0, alone.output
    assert "packed (" not in alone.output

    packed_dir, alone_dir = tmp_path / "sweeps" / "packed", tmp_path / "sweeps" / "alone"
    index_p, index_a = rows(packed_dir / "index.csv"), rows(alone_dir / "index.csv")
    assert list(index_p[0]) == list(index_a[0])  # the same columns
    assert [[r[c] for c in SAME] for r in index_p] == [[r[c] for c in SAME] for r in index_a]
    assert {r["status"] for r in index_p} == {"completed"}
    for row_p, row_a in zip(index_p, index_a):
        assert float(row_p["test_acc"]) == pytest.approx(float(row_a["test_acc"]), abs=2 / 64)
        run_p, run_a = packed_dir / row_p["run_dir"], alone_dir / row_a["run_dir"]
        assert sorted(f.name for f in run_p.iterdir()) == sorted(f.name for f in run_a.iterdir())
        assert (run_p / "config.yaml").read_text() == (run_a / "config.yaml").read_text()
        assert_close_runs(run_p, run_a)
        meta = read_meta(run_p)
        norm = row_p["norm.type"]
        assert meta["pack"]["run_dirs"] == [f"norm={norm}_bs=16_seed={s}" for s in SEEDS]
        assert meta["sweep"]["point"] == row_p["point"] and meta["sweep"]["values"]["seed"] == int(row_p["seed"])
        assert "pack" not in read_meta(run_a)


def test_rerun_runs_only_the_missing_seeds_packed_and_keeps_the_done_ones(runner, config, tmp_path):
    args = ("--norms", "batch", "--seeds", "0,1,2", "--pack-seeds", "on", "--name", "s")
    assert sweep(runner, config, tmp_path, *args).exit_code == 0
    runs = tmp_path / "sweeps" / "s" / "runs"
    before = {p.name: (p / "epochs.csv").read_text() for p in runs.iterdir()}
    kept = (runs / "norm=batch_bs=16_seed=0" / "meta.json").read_bytes()
    shutil.rmtree(runs / "norm=batch_bs=16_seed=2")  # never started
    failed = runs / "norm=batch_bs=16_seed=1"  # a failed attempt
    meta = read_meta(failed)
    (failed / "meta.json").write_text(json.dumps({**meta, "status": "failed", "reason": "planted"}))

    again = sweep(runner, config, tmp_path, *args)
    assert again.exit_code == 0, again.output
    plan = " ".join(again.output.split())
    assert "done (skip)" in plan and "rerun (failed), packed (1+2)" in plan and "run, packed (1+2)" in plan
    assert (runs / "norm=batch_bs=16_seed=0" / "meta.json").read_bytes() == kept  # untouched
    assert [r["status"] for r in rows(tmp_path / "sweeps" / "s" / "index.csv")] == ["completed"] * 3
    assert read_meta(failed)["pack"]["seeds"] == [1, 2]
    for seed in ("1", "2"):  # packed with another seed now, the same numbers
        name = f"norm=batch_bs=16_seed={seed}"
        for p, s in zip(rows(runs / name / "epochs.csv"), before[name].splitlines()[1:], strict=True):
            assert float(p["test_acc"]) == pytest.approx(float(s.split(",")[list(p).index("test_acc")]), abs=2 / 64)

    shutil.rmtree(runs / "norm=batch_bs=16_seed=1")  # one seed left: it runs alone, and says why
    last = sweep(runner, config, tmp_path, *args)
    assert last.exit_code == 0 and "run, alone: one seed to run" in " ".join(last.output.split())
    assert "pack" not in read_meta(runs / "norm=batch_bs=16_seed=1")


def ctrl_c_in_epoch_2(monkeypatch, runner, config: Path, results: Path, *args: str) -> list[dict]:
    """Run the sweep with one Ctrl-C at the first progress line of epoch 2 (after epoch 1's
    checkpoint); its index rows."""
    from normbench.sweep.view import SweepProgress

    handle, stopped_at = SweepProgress.handle, []

    def interrupt(self, event):
        if event[1] == "log" and event[2]["epoch"] == 2 and not stopped_at:
            stopped_at.append(event)
            raise KeyboardInterrupt
        handle(self, event)

    with monkeypatch.context() as patch:
        patch.setattr(SweepProgress, "handle", interrupt)
        stopped = sweep(runner, config, results, *args)
    assert stopped.exit_code == 130 and stopped_at, stopped.output
    return rows(next((results / "sweeps").iterdir()) / "index.csv")


def test_an_interrupted_pack_resumes_from_its_checkpoint(runner, write_config, tmp_path, monkeypatch):
    """Ctrl-C in epoch 2 (checkpoint after epoch 1): the rerun continues the pack; its seeds end
    with the numbers of an uninterrupted unpacked sweep."""
    config = write_config(**{"model": "mlp", "norm.type": "batch", "epochs": 3})
    args = ("--norms", "batch", "--seeds", ",".join(SEEDS), "--pack-seeds", "on", "--name", "i")
    index = ctrl_c_in_epoch_2(monkeypatch, runner, config, tmp_path, *args)
    assert [r["status"] for r in index] == ["interrupted"] * 2

    resumed = sweep(runner, config, tmp_path, *args)
    assert resumed.exit_code == 0, resumed.output
    alone = sweep(runner, config, tmp_path, *args[:4], "--pack-seeds", "off", "--name", "a")
    assert alone.exit_code == 0, alone.output
    for seed in SEEDS:
        name = f"norm=batch_bs=16_seed={seed}"
        run = tmp_path / "sweeps" / "i" / "runs" / name
        meta = read_meta(run)
        assert meta["status"] == "completed" and meta["resumes"][0]["from_step"] > 0
        assert [r["epoch"] for r in rows(run / "epochs.csv")] == ["1", "2", "3"]
        assert_close_runs(run, tmp_path / "sweeps" / "a" / "runs" / name)


def test_what_cannot_pack_runs_alone_and_the_plan_says_why(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path, "--norms", "batch,rms", "--seeds", "0,1", "--pack-seeds", "on",
                   "--dry-run")
    assert result.exit_code == 0, result.output
    plan = " ".join(result.output.split())
    assert "2 packed into 1 run(s), 2 run(s) alone" in plan
    assert plan.count("run, packed (0+1)") == 2 and plan.count("run, alone: norm rms (impl torch)") == 2


def test_auto_is_off_on_a_cpu(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path, "--norms", "layer", "--seeds", "0,1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "one run each (auto on a GPU only; this sweep runs on cpu)" in " ".join(result.output.split())
    assert "packed (" not in result.output


@pytest.mark.parametrize("args, message", [
    (("--pack-seeds", "yes"), "--pack-seeds yes: valid values are auto, on, off"),
    (("--set", "pack=2", "--pack-seeds", "on"), "the base config sets pack=2; a sweep packs each point's seeds itself"),
])
def test_bad_packing_options_are_one_line_errors(runner, write_config, tmp_path, args, message):
    result = sweep(runner, write_config(), tmp_path, "--norms", "layer", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "sweeps").exists()


def test_an_interrupted_unpacked_seed_continues_alone_and_the_others_pack(runner, write_config, tmp_path, monkeypatch):
    config = write_config(**{"model": "mlp", "norm.type": "batch", "epochs": 3})
    args = ("--norms", "batch", "--seeds", "0,1,2", "--name", "u")
    index = ctrl_c_in_epoch_2(monkeypatch, runner, config, tmp_path, *args, "--pack-seeds", "off")
    assert [r["status"] for r in index] == ["interrupted", "pending", "pending"]

    again = sweep(runner, config, tmp_path, *args, "--pack-seeds", "on")
    assert again.exit_code == 0, again.output
    plan = " ".join(again.output.split())
    assert "rerun (interrupted), alone: continues its checkpoint" in plan and plan.count("run, packed (1+2)") == 2
    runs = tmp_path / "sweeps" / "u" / "runs"
    first = read_meta(runs / "norm=batch_bs=16_seed=0")
    assert first["status"] == "completed" and first["resumes"][0]["from_step"] > 0 and "pack" not in first
    assert read_meta(runs / "norm=batch_bs=16_seed=1")["pack"]["seeds"] == [1, 2]


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_ctrl_c_records_every_seed_of_the_packs_in_flight_as_interrupted(tmp_path, kind):
    from normbench.config import validate
    from normbench.sweep.executor import LocalPlan
    from normbench.sweep.grid import build_axes, expand
    from normbench.sweep.packing import plan_units
    from normbench.sweep.plan import Sweep
    from test_executor import check_interrupted

    from conftest import tiny_config

    base = validate(tiny_config(epochs=4, log_every=2, **{"dataset.train_samples": 512}), "t")
    axes = build_axes(["batch", "layer"], [2], [0, 1], [])
    sweep = Sweep(tmp_path / "sweeps" / "s", base, axes, "none", expand(base, axes, "none", 1))
    sweep.write_spec()
    sweep.write_index()
    plan = LocalPlan(2, 1, "cpu", kind)
    check_interrupted(sweep, lambda sweep, points, view: plan.execute(sweep, plan_units(points, True)[0], view))
    statuses = [r["status"] for r in rows(sweep.path / "index.csv")]
    assert statuses[0] == statuses[1] and statuses[2] == statuses[3]  # the seeds of a pack end alike


def test_seeds_that_differ_in_more_than_their_seed_do_not_pack(tmp_path):
    from normbench.config import validate
    from normbench.errors import ConfigError
    from normbench.train.runner import pack_config, run_seeds_packed

    from conftest import tiny_config

    one, other = validate(tiny_config(seed=0), "t"), validate(tiny_config(seed=3, batch_size=8), "t")
    with pytest.raises(ConfigError, match="seeds 0 and 3 differ in more than their seed"):
        run_seeds_packed([one, other], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="different seeds"):
        pack_config([one, one])
    assert pack_config([one, validate(tiny_config(seed=3), "t")]).pack == 2
    assert not list(tmp_path.iterdir())  # refused before any run directory


def test_ctrl_c_between_two_seeds_directories_leaves_none_running(tmp_path, monkeypatch):
    """A SIGTERM (KeyboardInterrupt) after the first seed's run directory is made and before the
    second's: the first records itself interrupted, not running, and the interrupt goes on up."""
    from normbench.config import validate
    from normbench.train import runner

    from conftest import tiny_config

    made, open_run_dir = [], runner._open_run_dir

    def interrupt_the_second(*args, **kwargs):
        if made:
            raise KeyboardInterrupt
        made.append(open_run_dir(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(runner, "_open_run_dir", interrupt_the_second)
    configs = [validate(tiny_config(seed=s), "t") for s in (0, 1)]
    with pytest.raises(KeyboardInterrupt):
        runner.run_seeds_packed(configs, [tmp_path / "a", tmp_path / "b"])
    assert read_meta(tmp_path / "a")["status"] == "interrupted"
    assert not (tmp_path / "b").exists()
