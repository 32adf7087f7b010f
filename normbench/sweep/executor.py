"""Running sweep points: one point as a plain picklable function, and the process-pool executor.

`run_point(task)` is all an executor needs: it trains one point into its run directory and
returns how it ended. `execute` runs a list of points in this process or in N spawned workers.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from normbench import results
from normbench.config import Config, to_dict, validate
from normbench.errors import EXIT_INTERRUPTED, NormbenchError
from normbench.train.progress import Reporter


# --- running one point: a plain top-level function any executor (process pool, Ray) can call --


@dataclass(frozen=True)
class PointTask:
    """Everything needed to run one point; plain data, so it pickles to any worker."""

    point_id: str
    config: dict  # the resolved config (config.to_dict)
    run_path: str
    data_dir: str | None = None
    sweep_info: dict = field(default_factory=dict)  # recorded under "sweep" in meta.json


@dataclass(frozen=True)
class PointResult:
    """How one point ended."""

    point_id: str
    status: str
    reason: str = ""
    wall_s: float = 0.0


def _load_data(cfg: Config, data_dir: str | None, cache: dict | None):
    """The point's tensors, loaded once per dataset (and synthetic seed) per process."""
    from normbench.data import load_dataset
    from normbench.runtime import resolve_device

    device = resolve_device(cfg.device)
    seed = cfg.seed if cfg.dataset.name == "synthetic" else None  # real datasets do not depend on it
    key = (repr(to_dict(cfg)["dataset"]), seed, str(device), data_dir)
    if cache is not None and key in cache:
        return cache[key]
    data = load_dataset(cfg.dataset, seed=cfg.seed, device=device, data_dir=data_dir)
    if cache is not None:
        while len(cache) >= 2:  # a few hundred MB each: keep the latest two
            cache.pop(next(iter(cache)))
        cache[key] = data
    return data


def record_early_failure(path: Path, reason: str, text: str) -> None:
    """A point that failed before training began still gets a run directory saying why."""
    results.prepare_run_path(path, replace_incomplete=True)
    path.mkdir(parents=True)
    (path / results.ERROR_FILE).write_text(text, encoding="utf-8")
    now = results.now_iso()
    results.write_json_atomic(path / results.META_FILE, {
        "status": "failed", "reason": reason, "error_log": results.ERROR_FILE, "start_time": now, "end_time": now,
    })


def run_point(task: PointTask, reporter: Reporter | None = None, data_cache: dict | None = None) -> PointResult:
    """Train one point into `task.run_path` (clearing an incomplete run there); never raises for a
    failing point (its status and reason come back and are in meta.json), except on Ctrl-C."""
    from normbench.train.runner import run

    start = time.perf_counter()
    path = Path(task.run_path)
    try:
        cfg = validate(task.config, task.point_id)
        data = _load_data(cfg, task.data_dir, data_cache)
        outcome = run(cfg, path.parent, run_path=path, replace_incomplete=True, reporter=reporter, data=data)
        status, reason = outcome.status, outcome.reason
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # e.g. data missing: recorded for this point, the sweep goes on
        reason = exc.message if isinstance(exc, NormbenchError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
        # train.run raises only before it has made the run directory: record this attempt there
        if (results.read_meta(path) or {}).get("status") != "completed":
            record_early_failure(path, reason, traceback.format_exc())
        status = "failed"
    wall_s = time.perf_counter() - start
    meta = results.read_meta(path)
    if meta is not None:
        meta["sweep"] = {**task.sweep_info, "point": task.point_id, "wall_s": wall_s}
        results.write_json_atomic(path / results.META_FILE, meta)
    if status == "interrupted":
        raise KeyboardInterrupt
    return PointResult(task.point_id, status, reason, wall_s)


class EventReporter(Reporter):
    """Forwards a run's progress as (point_id, kind, payload) events; step counts are batched."""

    def __init__(self, point_id: str, send, every_s: float = 0.25):
        self.point_id, self.send, self.every_s = point_id, send, every_s
        self._steps, self._last = 0, 0.0

    def start(self, name, total_steps, epochs):
        self.send((self.point_id, "start", {"total": total_steps, "epochs": epochs, "pid": os.getpid()}))

    def advance(self, steps=1):
        self._steps += steps
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self.send((self.point_id, "advance", self._steps))
            self._steps, self._last = 0, now

    def log(self, epoch, loss, samples_per_s):
        self.send((self.point_id, "log", {"epoch": epoch, "loss": loss, "speed": samples_per_s}))

    def finish(self):
        if self._steps:
            self.send((self.point_id, "advance", self._steps))
            self._steps = 0


# --- worker processes ----------------------------------------------------------------------

_WORKER: dict = {}  # per worker process: its event queue and data cache (set by _init_worker)


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a killed sweep (it would write into a run being redone)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.25)


def _sigterm(signum, frame):
    if _WORKER.get("busy"):
        raise KeyboardInterrupt  # train.run records the run as interrupted
    os._exit(EXIT_INTERRUPTED)


def _init_worker(events, parent_pid: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle; it sends SIGTERM
    signal.signal(signal.SIGTERM, _sigterm)
    _WORKER.update(events=events, cache={}, busy=False)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _worker_run(task: PointTask) -> PointResult:
    _WORKER["busy"] = True
    try:
        return run_point(task, EventReporter(task.point_id, _WORKER["events"].put), _WORKER["cache"])
    except KeyboardInterrupt:
        return PointResult(task.point_id, "interrupted", "interrupted")
    finally:
        _WORKER["busy"] = False


def execute(sweep, todo: list, jobs: int, view, data_dir=None) -> None:
    """Run the points `todo` of `sweep` (sweep.Point, sweep.Sweep) in `jobs` processes (in this one
    for jobs=1), rewriting the index after each; Ctrl-C stops the sweep, runs in flight recorded as interrupted."""
    tasks = [sweep.task(p, data_dir) for p in todo]
    if not tasks:
        return
    if jobs == 1:
        cache: dict = {}
        for task in tasks:
            view.handle((task.point_id, "queued", {}))
            try:
                result = run_point(task, EventReporter(task.point_id, view.handle), cache)
            except KeyboardInterrupt:
                view.point_done(PointResult(task.point_id, "interrupted", "interrupted"))
                sweep.write_index()
                raise
            view.point_done(result)
            sweep.write_index()
        return
    _execute_pool(sweep, tasks, min(jobs, len(tasks)), view)


def _execute_pool(sweep, tasks: list[PointTask], jobs: int, view) -> None:
    import multiprocessing
    import queue as queue_module
    import signal

    # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    busy_pids: dict[str, int] = {}

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue_module.Empty:
                return
            if event[1] == "start":
                busy_pids[event[0]] = event[2]["pid"]
            view.handle(event)

    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(events, os.getpid()))
    try:
        futures = {pool.submit(_worker_run, task): task for task in tasks}
        for task in tasks:
            view.handle((task.point_id, "queued", {}))
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                task = futures[future]
                busy_pids.pop(task.point_id, None)
                try:
                    result = future.result()
                except Exception as exc:  # the worker process died (e.g. killed for memory)
                    result = PointResult(task.point_id, "failed", f"worker process died: {type(exc).__name__}: {exc}")
                view.point_done(result)
                sweep.write_index()
                if result.status == "interrupted":
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        for pid in busy_pids.values():  # the runs in flight record themselves as interrupted
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        drain()
        sweep.write_index()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        events.close()
