"""`normbench sweep`: the grid and its plan, a tiny sweep end to end, resume, failures, --jobs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normbench.cli import app
from normbench.config import validate
from normbench.errors import ConfigError
from normbench.sweep.grid import build_axes, expand, parse_grid, point_id, scaled_lr
from normbench.results import read_meta
from normbench.sweep.plan import exit_code, plan_workers, point_state

from conftest import REPO, TIMING, rows, tiny_config

def sweep_dir(results: Path) -> Path:
    dirs = list((results / "sweeps").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def sweep(runner, config: Path, results: Path, *args: str):
    return runner.invoke(app, ["sweep", str(config), "--results-dir", str(results), *args])


# --- the grid and the plan ------------------------------------------------------------------


def test_grid_is_the_product_in_order_with_deterministic_ids():
    base = validate(tiny_config(), "t")
    axes = build_axes(["batch", "group"], [4, 16], [0], parse_grid(["optimizer.lr=0.01,0.001"]))
    points = expand(base, axes)
    assert [p.point_id for p in points][:3] == [
        "norm=batch_bs=4_seed=0_optimizer.lr=0.01", "norm=batch_bs=4_seed=0_optimizer.lr=0.001",
        "norm=batch_bs=16_seed=0_optimizer.lr=0.01",
    ]
    assert len(points) == 8 and not any(p.invalid for p in points)
    last = points[-1].config
    assert (last.norm.type, last.batch_size, last.optimizer.lr) == ("group", 16, 0.001)
    assert point_id({"norm.type": "batch", "dataset.name": "fashion-mnist"}) == "norm=batch_dataset.name=fashion-mnist"


def test_invalid_points_carry_their_reason_instead_of_crashing():
    base = validate(tiny_config(**{"norm.groups": 3}), "t")
    points = {p.point_id: p for p in expand(base, build_axes(["batch", "group", "layer"], [1, 4], [0], []))}
    assert "at least 2 samples" in points["norm=batch_bs=1_seed=0"].invalid
    assert "does not divide the 32 channels" in points["norm=group_bs=4_seed=0"].invalid
    assert points["norm=layer_bs=1_seed=0"].config is not None
    assert points["norm=batch_bs=4_seed=0"].config is not None


def test_lr_scaling_is_relative_to_the_base_batch_size():
    base = validate(tiny_config(batch_size=16, **{"optimizer.lr": 0.004}), "t")
    for scaling, expected in (("none", 0.004), ("linear", 0.001), ("sqrt", 0.002)):
        (point,) = expand(base, build_axes(["batch"], [4], [0], []), scaling)
        assert point.config.optimizer.lr == pytest.approx(expected)
        assert point.info == {"lr_scaling": scaling, "unscaled_lr": 0.004, "base_batch_size": 16}
    assert scaled_lr(0.1, 256, 64, "sqrt") == pytest.approx(0.2)


@pytest.mark.parametrize("text, message", [
    ("optimizer.rate=0.1", "'rate' is not a key of optimizer"),
    ("norm=batch,group", "'norm' is a section"),
    ("batch_size", "expected KEY=v1,v2"),
    ("seed=1,1", "appears twice"),
])
def test_bad_grid_options_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid([text])


def test_a_key_swept_twice_is_an_error():
    with pytest.raises(ConfigError, match="batch_size is swept twice"):
        build_axes(["batch"], [2], [0], parse_grid(["batch_size=4,8"]))


def test_workers_times_threads_never_exceed_the_cores():
    base = validate(tiny_config(num_threads=None), "t")
    assert plan_workers(base, None, "cpu", 8) == (8, 1)
    assert plan_workers(base, 2, "cpu", 8) == (2, 4)
    assert plan_workers(base, None, "cuda", 8) == (1, 8)
    assert plan_workers(validate(tiny_config(num_threads=2), "t"), None, "cpu", 8) == (4, 2)
    with pytest.raises(ConfigError, match="exceeds the 2 CPU cores"):
        plan_workers(validate(tiny_config(num_threads=2), "t"), 2, "cpu", 2)


def test_resume_rules():
    assert point_state(None, False, False) == (True, "run")
    assert point_state({"status": "completed"}, True, True)[0] is False
    assert point_state({"status": "diverged"}, True, False)[0] is False
    assert point_state({"status": "diverged"}, True, True)[0] is True
    for status in ("failed", "interrupted", "running"):
        assert point_state({"status": status}, True, False) == (True, f"rerun ({status})")
    assert point_state(None, True, False) == (True, "rerun (incomplete)")
    assert exit_code([{"status": "completed"}, {"status": "invalid"}]) == 0
    assert exit_code([{"status": "completed"}, {"status": "diverged"}]) == 3
    assert exit_code([{"status": "failed"}, {"status": "diverged"}]) == 1


def test_dry_run_prints_the_plan_with_invalid_points_and_writes_nothing(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path / "r", "--norms", "batch,layer", "--batch-sizes", "1,4", "--dry-run")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "4 points" in out and out.count("invalid:") == 1 and "batch_size=1 with" in out
    assert not (tmp_path / "r" / "sweeps").exists()


def test_help_says_the_default_norms_are_all_registered_ones(runner):
    result = runner.invoke(app, ["sweep", "--help"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "every registered norm" in text and "--set norm.type" in text


def test_a_norm_set_with_set_is_the_only_norm_planned(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path / "r", "--set", "norm.type=group", "--batch-sizes", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1 points" in out and "norms: group (from --set norm.type)" in out
    assert "batch" not in out.split("norms:")[1].replace("batch_size", "")  # no other norm in the table


@pytest.mark.parametrize("args, message", [
    (["--norms", "batch,grop"], "did you mean 'group'?"),
    (["--grid", "optimizer.name=sgd,adamm"], "'adamm' is not a valid optimizer.name"),
    (["--grid", "optimizer.lr=0.1,fast"], "'fast' is not a valid optimizer.lr"),
])
def test_an_unknown_grid_value_is_an_error_before_anything_runs(runner, write_config, tmp_path, args, message):
    result = sweep(runner, write_config(), tmp_path / "r", *args, "--jobs", "1")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "\n" not in result.stderr.strip()
    assert not (tmp_path / "r").exists()


def test_a_key_both_set_and_swept_is_an_error(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path / "r", "--set", "batch_size=8", "--batch-sizes", "2,8", "--dry-run")
    assert result.exit_code == 2 and "batch_size is set with --set and swept with --batch-sizes" in result.stderr


def test_list_options_refuse_space_separated_values(runner, write_config, tmp_path):
    result = sweep(runner, write_config(), tmp_path / "r", "--batch-sizes", "2", "8", "64", "--dry-run")
    assert result.exit_code == 2, result.output
    assert "use --batch-sizes 2,8,64" in result.stderr and not (tmp_path / "r").exists()
    result = runner.invoke(app, ["sweep", "--norms", "batch", "group", "--dry-run"])
    assert result.exit_code == 2 and "use --norms batch,group" in result.stderr


# --- running sweeps ---------------------------------------------------------------------------


def test_tiny_sweep_end_to_end_then_rerun_skips_everything(runner, write_config, tmp_path):
    results = tmp_path / "results"
    config = write_config(epochs=1)
    result = sweep(runner, config, results, "--norms", "batch,group", "--batch-sizes", "4,16", "--jobs", "1")
    assert result.exit_code == 0, result.output
    path = sweep_dir(results)
    spec = yaml.safe_load((path / "sweep.yaml").read_text())
    assert spec["grid"] == {"norm.type": ["batch", "group"], "batch_size": [4, 16], "seed": [0]}
    assert spec["base"]["name"] == "tiny" and spec["lr_scaling"] == "none"

    index = rows(path / "index.csv")
    assert [r["point"] for r in index] == [
        "norm=batch_bs=4_seed=0", "norm=batch_bs=16_seed=0", "norm=group_bs=4_seed=0", "norm=group_bs=16_seed=0"]
    for row in index:
        assert row["status"] == "completed" and float(row["wall_s"]) > 0
        run_dir = path / row["run_dir"]
        meta = read_meta(run_dir)
        assert float(row["test_acc"]) == meta["final_test_acc"]
        assert float(row["samples_per_s"]) == meta["mean_samples_per_s"]
        assert meta["samples_seen"] == 256  # equal budget: one epoch of 256 samples for every batch size
        assert meta["sweep"]["values"]["batch_size"] == int(row["batch_size"])
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (saved["norm"]["type"], saved["batch_size"], saved["num_threads"]) == (row["norm.type"], int(row["batch_size"]), 1)

    reported = runner.invoke(app, ["report", str(path)])  # the sweep's own report, in <sweep>/report
    assert reported.exit_code == 0, reported.output
    summary = {(r["norm"], r["batch_size"]): r for r in rows(path / "report" / "summary.csv")}
    for row in index:
        assert float(summary[(row["norm.type"], row["batch_size"])]["test_acc_mean"]) == round(float(row["test_acc"]), 4)
    assert len(list((path / "report").glob("*.png"))) == 4

    before = {p: p.stat().st_mtime_ns for p in path.rglob("*.csv") if p.parent.name != "report" and p.name != "index.csv"}
    again = sweep(runner, config, results, "--norms", "batch,group", "--batch-sizes", "4,16", "--jobs", "1")
    assert again.exit_code == 0, again.output
    assert "done (skip)" in again.output and again.output.count("completed norm=") == 0
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*.csv") if p.parent.name != "report" and p.name != "index.csv"} == before


def test_equal_sample_budget_with_max_samples(runner, write_config, tmp_path):
    config = write_config(max_samples=128)
    result = sweep(runner, config, tmp_path, "--norms", "layer", "--batch-sizes", "2,32", "--jobs", "1")
    assert result.exit_code == 0, result.output
    metas = [read_meta(d) for d in sorted((sweep_dir(tmp_path) / "runs").iterdir())]
    assert sorted((m["steps_done"], m["samples_seen"]) for m in metas) == [(4, 128), (64, 128)]


def test_a_failing_point_does_not_stop_the_others(runner, write_config, tmp_path):
    # 512 > the 256 training samples: that point fails inside training, the others complete
    config = write_config(epochs=1)
    result = sweep(runner, config, tmp_path, "--norms", "layer", "--batch-sizes", "512,16,8", "--jobs", "1")
    assert result.exit_code == 1, result.output
    index = {r["batch_size"]: r for r in rows(sweep_dir(tmp_path) / "index.csv")}
    assert index["512"]["status"] == "failed" and "larger than the training set" in index["512"]["reason"]
    assert index["16"]["status"] == index["8"]["status"] == "completed"
    failed_dir = sweep_dir(tmp_path) / index["512"]["run_dir"]
    assert "Traceback" in (failed_dir / "error.log").read_text()
    assert "1 failed" in " ".join(result.output.split())

    again = sweep(runner, config, tmp_path, "--norms", "layer", "--batch-sizes", "512,16,8", "--jobs", "1")
    assert again.exit_code == 1 and "rerun (failed)" in again.output
    assert again.output.count("completed norm=") == 0  # the completed points are skipped


def test_a_diverging_point_is_recorded_and_skipped_unless_asked(runner, write_config, tmp_path):
    config = write_config(epochs=1, **{"norm.type": "none", "optimizer.name": "sgd"})
    args = ("--norms", "none", "--grid", "optimizer.lr=0.01,1e12", "--jobs", "1")
    result = sweep(runner, config, tmp_path, *args)
    assert result.exit_code == 3, result.output
    index = {r["optimizer.lr"]: r for r in rows(sweep_dir(tmp_path) / "index.csv")}
    assert index["1000000000000.0"]["status"] == "diverged" and index["0.01"]["status"] == "completed"
    diverged_dir = sweep_dir(tmp_path) / index["1000000000000.0"]["run_dir"]
    started = read_meta(diverged_dir)["start_time"]
    skipped = sweep(runner, config, tmp_path, *args)
    assert skipped.exit_code == 3 and "diverged norm=" not in skipped.output  # not rerun
    retried = sweep(runner, config, tmp_path, *args, "--retry-diverged")
    assert retried.exit_code == 3 and retried.output.count("diverged norm=") == 1
    assert "completed norm=" not in retried.output
    assert read_meta(diverged_dir)["status"] == "diverged" and read_meta(diverged_dir)["start_time"] >= started


def test_a_different_grid_under_the_same_name_is_refused(runner, write_config, tmp_path):
    config = write_config(epochs=1)
    assert sweep(runner, config, tmp_path, "--norms", "layer", "--batch-sizes", "16", "--name", "s", "--jobs", "1").exit_code == 0
    result = sweep(runner, config, tmp_path, "--norms", "layer", "--batch-sizes", "8", "--name", "s", "--jobs", "1")
    assert result.exit_code == 1 and "different base config, grid" in result.output


def _data_columns(path: Path) -> list[list[str]]:
    table = rows(path)
    return [[v for k, v in r.items() if k not in TIMING] for r in table]


def test_jobs_2_gives_the_same_results_as_jobs_1(runner, write_config, tmp_path):
    config = write_config(epochs=1)
    for jobs in ("1", "2"):
        result = sweep(runner, config, tmp_path, "--norms", "batch,group", "--batch-sizes", "4,16",
                       "--jobs", jobs, "--name", f"jobs{jobs}")
        assert result.exit_code == 0, result.output
    assert_same_runs(tmp_path / "sweeps" / "jobs1" / "runs", tmp_path / "sweeps" / "jobs2" / "runs")


def assert_same_runs(one: Path, two: Path) -> None:
    """Two sweeps' runs/ folders: the same run directories, with the same CSVs but for timing columns."""
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for run_dir in one.iterdir():
        for name in ("steps.csv", "epochs.csv"):
            assert _data_columns(run_dir / name) == _data_columns(two / run_dir.name / name), (run_dir.name, name)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    """Live child process ids of `pid` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent pid
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("jobs", ["2", pytest.param("1", marks=pytest.mark.slow)])
def test_resume_after_kill_9_mid_run(write_config, tmp_path, jobs):
    """SIGKILL the sweep while a point trains; the rerun ends with one completed run per point."""
    config = write_config(epochs=2, log_every=2, **{"dataset.train_samples": 512})
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "normbench", "sweep", str(config), "--norms", "batch,layer", "--batch-sizes", "4,32",
           "--jobs", jobs, "--name", "k", "--results-dir", str(results)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = results / "sweeps" / "k" / "runs"
    victim = runs / "norm=batch_bs=4_seed=0"  # the longest point: 256 steps

    def mid_run() -> bool:
        meta = read_meta(victim)
        return meta is not None and meta["status"] == "running" and len(rows(victim / "steps.csv")) >= 3

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(mid_run, 300, "the first point to be mid-run")
        workers = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_meta(victim)["status"] == "running"  # killed: nothing could record an ending
    # no orphaned worker goes on writing into the run that will be redone
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30, "the workers to exit")
    size = (victim / "steps.csv").stat().st_size
    time.sleep(0.5)
    assert (victim / "steps.csv").stat().st_size == size
    completed_before = {p.name: read_meta(p)["start_time"] for p in runs.iterdir()
                        if (read_meta(p) or {}).get("status") == "completed"}

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rerun (running)" in out.stdout
    index = rows(results / "sweeps" / "k" / "index.csv")
    assert len(index) == 4 and {r["status"] for r in index} == {"completed"}
    assert sorted(p.name for p in runs.iterdir()) == sorted(r["point"] for r in index)
    for run_dir in runs.iterdir():
        meta = read_meta(run_dir)
        steps, epochs = rows(run_dir / "steps.csv"), rows(run_dir / "epochs.csv")
        assert [int(r["epoch"]) for r in epochs] == [1, 2]
        step_numbers = [int(r["step"]) for r in steps]
        assert step_numbers == sorted(set(step_numbers)) and step_numbers[-1] == meta["total_steps"]
        assert all(len(r) == len(steps[0]) and None not in r.values() for r in steps)
        if run_dir.name in completed_before:  # never overwritten
            assert meta["start_time"] == completed_before[run_dir.name]
    assert json.loads((victim / "meta.json").read_text())["status"] == "completed"


def test_the_default_base_config_ships_with_the_checkout():
    from normbench.sweep.plan import DEFAULT_BASE

    assert DEFAULT_BASE.is_file(), DEFAULT_BASE


def test_each_point_records_the_sweep_command(runner, write_config, tmp_path):
    config = write_config(epochs=1)
    args = ["sweep", str(config), "--results-dir", str(tmp_path), "--norms", "layer", "--set", "log_every=2", "--jobs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    (run_dir,) = (sweep_dir(tmp_path) / "runs").iterdir()
    recorded = read_meta(run_dir)["sweep"]
    assert recorded["argv"] == ["normbench", *args] and recorded["overrides"] == ["log_every=2"]


# --- --workers threads -------------------------------------------------------------------------


def test_thread_workers_give_the_same_results_as_process_workers(runner, write_config, tmp_path):
    """Two points at a time in threads of one process, packed seeds among them: the same CSVs as
    two worker processes (setup, which seeds the global RNG, takes turns; training overlaps)."""
    config = write_config(epochs=1)
    args = ("--norms", "batch,group", "--batch-sizes", "4,16", "--seeds", "0,1", "--pack-seeds", "on", "--jobs", "2")
    for kind in ("processes", "threads"):
        result = sweep(runner, config, tmp_path, *args, "--workers", kind, "--name", kind)
        assert result.exit_code == 0, result.output
    assert_same_runs(tmp_path / "sweeps" / "processes" / "runs", tmp_path / "sweeps" / "threads" / "runs")
    assert "ran in a thread of the sweep process" in next((tmp_path / "sweeps" / "threads" / "logs").glob("norm=*")).read_text()


def test_thread_workers_take_turns_at_setup_and_train_together(monkeypatch, tmp_path):
    """Setup (seeding, building: the global RNG) one point at a time, until its `start` event;
    training of several points at once."""
    import threading

    from normbench.sweep.executor import drive
    from normbench.sweep.point import PointResult, PointTask
    from normbench.sweep.threads import ThreadPool
    from test_executor import FakeSweep, RecordingView

    lock, now, most = threading.Lock(), {"setup": 0, "train": 0}, {"setup": 0, "train": 0}

    def phase(name, seconds):
        with lock:
            now[name] += 1
            most[name] = max(most[name], now[name])
        time.sleep(seconds)
        with lock:
            now[name] -= 1

    def fake_run(task, send, cache):
        phase("setup", 0.05)
        send((task.point_id, "start", {"total": 1, "epochs": 1}))
        phase("train", 0.2)
        return PointResult(task.point_id, "completed")

    monkeypatch.setattr("normbench.sweep.threads.run_guarded", fake_run)
    view = RecordingView()
    tasks = [PointTask(str(i), {}, str(tmp_path / str(i))) for i in range(4)]
    drive(ThreadPool(2, "cpu"), FakeSweep(), tasks, view)
    assert [r.status for r in view.done] == ["completed"] * 4
    assert most == {"setup": 1, "train": 2}


def test_ctrl_c_stops_thread_workers_and_records_their_points_interrupted(tmp_path):
    from normbench.sweep.executor import LocalPlan
    from test_executor import check_interrupted, long_sweep

    check_interrupted(long_sweep(tmp_path), LocalPlan(2, 1, "cpu", "threads").execute)


@pytest.mark.parametrize("args, message", [
    (("--workers", "fibers"), "--workers fibers: valid values are processes, threads"),
    (("--workers", "threads", "--executor", "ray"), "--workers is for --executor local"),
])
def test_bad_workers_are_one_line_errors(runner, write_config, tmp_path, args, message):
    result = sweep(runner, write_config(), tmp_path, "--norms", "layer", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "sweeps").exists()


@pytest.mark.gpu
def test_on_cuda_threads_and_packed_seeds_match_processes(runner, write_config, tmp_path):
    """On a GPU: --pack-seeds auto packs, threads share one CUDA context, and both give the
    numbers of unpacked process workers (float32: close, as tests/test_packed.py)."""
    config = write_config(device="cuda", epochs=1, cuda_graph=False, **{"model": "mlp"})
    args = ("--norms", "batch,layer", "--seeds", "0,1", "--jobs", "2")
    cuda = sweep(runner, config, tmp_path, *args, "--workers", "threads", "--name", "t")
    assert cuda.exit_code == 0, cuda.output
    assert "packed (0+1)" in cuda.output
    plain = sweep(runner, config, tmp_path, *args, "--pack-seeds", "off", "--name", "p")
    assert plain.exit_code == 0, plain.output
    for t, p in zip(rows(tmp_path / "sweeps" / "t" / "index.csv"), rows(tmp_path / "sweeps" / "p" / "index.csv")):
        assert t["point"] == p["point"] and t["status"] == p["status"] == "completed"
        assert float(t["test_acc"]) == pytest.approx(float(p["test_acc"]), abs=2 / 64)
