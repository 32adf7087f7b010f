"""`normbench sweep --executor ray`: same results as the local executor, lost workers retried or
recorded as failed, and a one-line error without ray installed."""

import builtins
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from normbench.results import read_meta

from test_sweep import _data_columns, rows, sweep

GRID = ("--norms", "batch,group", "--batch-sizes", "4,16")


# --- without ray ------------------------------------------------------------------------------


def test_without_ray_the_executor_is_a_one_line_install_hint(runner, write_config, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = sweep(runner, write_config(), tmp_path / "results", *GRID, "--executor", "ray")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: ray is not installed; pip install 'normbench[ray]'"
    assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.parametrize("args, message", [
    (("--executor", "dask"), "--executor dask: valid values are local, ray"),
    (("--ray-address", "10.0.0.1:6379"), "--ray-address needs --executor ray"),
    (("--executor", "ray", "--jobs", "2"), "--jobs is for --executor local"),
    (("--executor", "ray", "--ray-retries", "-1"), "--ray-retries -1: must be at least 0"),
])
def test_bad_executor_options_are_one_line_errors(runner, write_config, tmp_path, args, message):
    if "ray" in args:
        pytest.importorskip("ray", reason="ray is not installed (pip install 'normbench[ray]')")
    result = sweep(runner, write_config(), tmp_path, *GRID, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "sweeps").exists()


def test_an_unreachable_ray_address_is_a_quick_one_line_error(runner, write_config, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'normbench[ray]')")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = sweep(runner, write_config(), tmp_path, *GRID, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert result.exit_code == 1, result.output
    assert f"cannot reach the Ray head at 127.0.0.1:{port}" in result.output and "ray start --head" in result.output
    assert not (tmp_path / "sweeps").exists()


# --- on a local Ray instance ------------------------------------------------------------------


def _processes() -> dict[int, str]:
    """Every live process id and its command line (Linux /proc)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found[int(cmdline.parent.name)] = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def _pids_named(prefix: str) -> list[int]:
    """Process ids whose command line (a Ray worker's is its process title) starts with `prefix`."""
    return [pid for pid, text in _processes().items() if text.startswith(prefix)]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; shut down with no raylet left behind."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'normbench[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the sweeps below reuse it
    raylets = [pid for pid, text in _processes().items() if "raylet" in text and os.getpid() in _ancestors(pid)]
    yield ray
    ray.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in raylets):
        time.sleep(0.1)
    assert raylets and not any(Path(f"/proc/{pid}").exists() for pid in raylets), "raylet left running"


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.append(pid)
    return out


def test_ray_sweep_equals_the_local_executor(runner, write_config, tmp_path, local_ray):
    config = write_config(epochs=1)
    for executor, extra in (("local", ("--jobs", "2")), ("ray", ())):
        result = sweep(runner, config, tmp_path, *GRID, "--executor", executor, "--name", executor, *extra)
        assert result.exit_code == 0, result.output
        assert result.output.count("completed norm=") == 4
    assert "Ray: local instance with 2 CPU(s)" in result.output
    local, ray = tmp_path / "sweeps" / "local", tmp_path / "sweeps" / "ray"
    strip = lambda table: [{k: v for k, v in r.items() if k not in ("samples_per_s", "wall_s")} for r in table]  # noqa: E731
    assert strip(rows(local / "index.csv")) == strip(rows(ray / "index.csv"))
    for run_dir in (local / "runs").iterdir():
        for name in ("steps.csv", "epochs.csv"):
            assert _data_columns(run_dir / name) == _data_columns(ray / "runs" / run_dir.name / name), (run_dir.name, name)
    assert read_meta(ray / "runs" / "norm=batch_bs=4_seed=0")["sweep"]["point"] == "norm=batch_bs=4_seed=0"

    again = sweep(runner, config, tmp_path, *GRID, "--executor", "ray", "--name", "ray")  # resume: nothing left
    assert again.exit_code == 0 and again.output.count("done (skip)") == 4 and "completed norm=" not in again.output


def _kill_worker_mid_run(run_dir: Path, stop: threading.Event) -> int | None:
    """SIGKILL the Ray worker running the point in `run_dir` once it is mid-run; its pid."""
    while not stop.is_set():
        meta = read_meta(run_dir)
        busy = _pids_named("ray::normbench_point")  # the process title of a worker running a point
        if busy and meta is not None and meta.get("status") == "running" and (run_dir / "steps.csv").exists() \
                and len(rows(run_dir / "steps.csv")) >= 2:
            os.kill(busy[0], signal.SIGKILL)
            return busy[0]
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("retries, status", [("1", "completed"), ("0", "failed")])
def test_a_worker_killed_mid_point_is_retried_or_recorded_failed(runner, write_config, tmp_path, local_ray, retries, status):
    config = write_config(epochs=2, log_every=2, **{"dataset.train_samples": 512})
    args = ("--norms", "batch", "--batch-sizes", "4", "--executor", "ray", "--ray-retries", retries, "--name", "k")
    run_dir = tmp_path / "sweeps" / "k" / "runs" / "norm=batch_bs=4_seed=0"
    stop = threading.Event()
    killed: list = []
    killer = threading.Thread(target=lambda: killed.append(_kill_worker_mid_run(run_dir, stop)))
    killer.start()
    try:
        result = sweep(runner, config, tmp_path, *args)
    finally:
        stop.set()
        killer.join()
    assert killed[0] is not None, result.output
    (row,) = rows(tmp_path / "sweeps" / "k" / "index.csv")
    meta = read_meta(run_dir)
    assert row["status"] == meta["status"] == status, result.output
    if status == "completed":
        assert result.exit_code == 0
        assert [int(r["epoch"]) for r in rows(run_dir / "epochs.csv")] == [1, 2]  # the retry ran the whole point again
        assert [int(r["step"]) for r in rows(run_dir / "steps.csv")][:2] == [2, 4]  # from step 1, no leftovers
    else:
        assert result.exit_code == 1
        assert row["reason"] == meta["reason"] and row["reason"].startswith("Ray worker died (0 retries)")
        assert (run_dir / "ray_error.log").read_text().strip()
        assert [int(r["step"]) for r in rows(run_dir / "steps.csv")][:2] == [2, 4]  # what it wrote is kept
        rerun = sweep(runner, config, tmp_path, *args)  # not lost: the next run of the sweep redoes it
        assert rerun.exit_code == 0 and "rerun (failed)" in rerun.output, rerun.output
        assert read_meta(run_dir)["status"] == "completed"


def test_ctrl_c_cancels_the_ray_points_in_flight(tmp_path, local_ray):
    """The same polling loop as the local backends: Ctrl-C records the points in flight as interrupted."""
    from normbench.sweep.ray_executor import RayPlan
    from test_executor import check_interrupted, long_sweep

    check_interrupted(long_sweep(tmp_path), RayPlan(None, 1, 0.0, 0).execute)
