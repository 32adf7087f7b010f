"""The executor interface: one polling loop (`executor.drive`) over every backend, and Ctrl-C
ending a sweep with the points in flight recorded as interrupted, whatever the backend."""

import io

import pytest
from rich.console import Console

from normbench.config import validate
from normbench.sweep.executor import InProcess, LocalPlan, ProcessPool, drive
from normbench.sweep.grid import build_axes, expand
from normbench.sweep.plan import Sweep
from normbench.sweep.point import PointResult, PointTask

from conftest import rows, tiny_config


class FakeBackend:
    """Points that end in the order given; records what the loop asked of it."""

    grace_s = 0.0

    def __init__(self, endings: list[str]):
        self.endings, self.calls, self.pending_events = endings, [], []

    def submit(self, task):
        self.calls.append(("submit", task.point_id))
        return task.point_id

    def wait(self, handles, timeout):
        self.calls.append(("wait", len(handles)))
        if not handles:
            return [], []
        self.pending_events.append((handles[0], "advance", 1))
        return [handles[0]], list(handles[1:])

    def result(self, handle, task):
        return PointResult(task.point_id, self.endings.pop(0))

    def events(self):
        arrived, self.pending_events = self.pending_events, []
        return arrived

    def cancel(self, handles):
        self.calls.append(("cancel", tuple(handles)))

    def close(self):
        self.calls.append(("close",))


class FakeSweep:
    def __init__(self):
        self.index_writes = 0

    def write_index(self):
        self.index_writes += 1


class RecordingView:
    """A sweep view that keeps what it was shown; with `stop_on`, the first event of that kind is Ctrl-C."""

    def __init__(self, stop_on: str | None = None):
        self.events, self.done, self.stop_on = [], [], stop_on
        self.console = Console(file=io.StringIO())

    def handle(self, event):
        self.events.append(event)
        if event[1] == self.stop_on:
            self.stop_on = None  # one Ctrl-C
            raise KeyboardInterrupt

    def point_done(self, result):
        self.done.append(result)


def tasks(*ids):
    return [PointTask(i, {}, f"/nowhere/{i}") for i in ids]


def test_the_loop_forwards_events_and_results_and_rewrites_the_index_after_each_point():
    backend, sweep, view = FakeBackend(["completed", "failed"]), FakeSweep(), RecordingView()
    drive(backend, sweep, tasks("a", "b"), view)
    assert [(r.point_id, r.status) for r in view.done] == [("a", "completed"), ("b", "failed")]
    assert view.events == [("a", "queued", {}), ("b", "queued", {}), ("a", "advance", 1), ("b", "advance", 1)]
    assert sweep.index_writes == 2
    assert backend.calls[-1] == ("close",) and not any(c[0] == "cancel" for c in backend.calls)


def test_an_interrupted_point_cancels_the_rest_and_stops_the_sweep():
    backend, sweep, view = FakeBackend(["interrupted", "completed"]), FakeSweep(), RecordingView()
    with pytest.raises(KeyboardInterrupt):
        drive(backend, sweep, tasks("a", "b", "c"), view)
    assert [r.status for r in view.done] == ["interrupted"]  # b and c never reported as ended
    assert ("cancel", ("a", "b", "c")) in backend.calls and backend.calls[-1] == ("close",)
    assert sweep.index_writes == 2  # after a ended, and once more after the cancel


def test_in_process_runs_nothing_after_a_cancel(monkeypatch):
    ran = []

    def fake_run(task, send, cache):
        ran.append(task.point_id)
        return PointResult(task.point_id, "interrupted" if task.point_id == "b" else "completed")

    monkeypatch.setattr("normbench.sweep.executor.run_guarded", fake_run)
    view = RecordingView()
    with pytest.raises(KeyboardInterrupt):
        drive(InProcess(view.handle), FakeSweep(), tasks("a", "b", "c", "d"), view)
    assert ran == ["a", "b"] and [r.status for r in view.done] == ["completed", "interrupted"]


def long_sweep(tmp_path, norms=("batch", "layer")) -> Sweep:
    """Two points that each train for a few seconds: long enough to be interrupted mid-run."""
    base = validate(tiny_config(epochs=4, log_every=2, **{"dataset.train_samples": 512}), "t")
    axes = build_axes(list(norms), [2], [0], [])
    sweep = Sweep(tmp_path / "sweeps" / "s", base, axes, "none", expand(base, axes, "none", 1))
    sweep.write_spec()
    sweep.write_index()
    return sweep


def check_interrupted(sweep: Sweep, execute) -> None:
    """Ctrl-C at the first progress event: the sweep stops, the points in flight say interrupted."""
    view = RecordingView(stop_on="advance")
    with pytest.raises(KeyboardInterrupt):
        execute(sweep, sweep.points, view)
    index = rows(sweep.path / "index.csv")
    statuses = [r["status"] for r in index]
    assert "interrupted" in statuses and set(statuses) <= {"interrupted", "pending"}, statuses
    for row in index:
        if row["status"] == "interrupted":
            assert (sweep.path / row["run_dir"] / "meta.json").is_file()


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_records_the_points_in_flight_as_interrupted(tmp_path, jobs):
    check_interrupted(long_sweep(tmp_path), LocalPlan(jobs, 1).execute)


def test_a_dead_pool_worker_is_a_failed_point(tmp_path):
    """A worker process that dies mid-point (here: SIGKILL itself) makes that point failed, the sweep goes on."""
    pool = ProcessPool(1)
    try:
        future = pool.submit(PointTask("p", {"not": "a config"}, str(tmp_path / "p")))
        assert pool.wait([future], 120)[0] == [future]
        assert pool.result(future, PointTask("p", {}, "")).status == "failed"  # an invalid config: failed, not lost
        dead = pool.pool.submit(_kill_self)
        assert pool.result(dead, PointTask("q", {}, "")).reason.startswith("worker process died")
    finally:
        pool.close()


def _kill_self():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
