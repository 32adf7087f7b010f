"""The executor interface: one polling loop (`drive`) over a backend that runs points.

A backend starts tasks (`submit`: a point, or a PackTask of one grid point's seeds), says which
have ended (`wait`), turns an ended task into PointResults (`result`: one, or one per packed
point), hands over the progress events that arrived (`events`), stops the points in flight on
Ctrl-C (`cancel`) and releases its workers (`close`). `drive` does the rest for every backend
alike: events to the view, each result to the view and index.csv, Ctrl-C handling.

The local backends live here: `InProcess` (one point after another in this process),
`ProcessPool` (N spawned worker processes), and in threads.py `ThreadPool` (N threads of this
process, sharing one CUDA context); the Ray backend is in ray_executor.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from normbench.errors import EXIT_INTERRUPTED
from normbench.sweep.point import WORKER_CACHE, PackTask, PointResult, PointTask, ended, run_guarded
from normbench.sweep.threads import THREADS_LOG, ThreadPool

POLL_S = 0.2  # how often the loop looks for ended points and progress events


class Backend(Protocol):
    """What `drive` needs from a way of running points."""

    grace_s: float | None  # after `cancel`, how long to wait for points in flight (None: until they end)

    def submit(self, task: PointTask | PackTask) -> Any:
        """Start (or queue) one task; a hashable handle to it."""

    def wait(self, handles: list, timeout: float) -> tuple[list, list]:
        """(ended, not ended) among `handles`, after at most `timeout` seconds."""

    def result(self, handle, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """How an ended task's points ended (a lost worker fails them, recorded in their run directories)."""

    def events(self) -> list:
        """The (point_id, kind, payload) progress events that arrived since the last call."""

    def cancel(self, handles: list) -> None:
        """Ctrl-C: stop the points in flight (they record themselves as interrupted); start no more."""

    def close(self) -> None:
        """Release the workers."""


def forward(backend: Backend, view) -> None:
    """Hand every progress event that arrived to the view."""
    for event in backend.events():
        view.handle(event)


def settle(backend: Backend, handles: list, view) -> None:
    """After a cancel: wait (up to the backend's grace) for the points in flight to record themselves."""
    deadline = None if backend.grace_s is None else time.monotonic() + backend.grace_s
    pending = list(handles)
    while pending and (deadline is None or time.monotonic() < deadline):
        pending = backend.wait(pending, POLL_S)[1]
        forward(backend, view)
    forward(backend, view)


def drive(backend: Backend, sweep, tasks: list[PointTask], view) -> None:
    """Run `tasks` on `backend`, rewriting the sweep's index after each point ends; Ctrl-C (or a
    point interrupted by a signal) stops the sweep, the points in flight recorded as interrupted."""
    handles: dict = {}
    try:
        for task in tasks:
            handles[backend.submit(task)] = task
            view.handle((task.point_id, "queued", {}))
        pending = list(handles)
        while pending:
            done, pending = backend.wait(pending, POLL_S)
            forward(backend, view)
            for handle in done:
                outcome = backend.result(handle, handles[handle])
                points = outcome if isinstance(outcome, list) else [outcome]
                for result in points:
                    view.point_done(result)
                sweep.write_index()
                if any(result.status == "interrupted" for result in points):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        backend.cancel(list(handles))
        settle(backend, list(handles), view)
        sweep.write_index()
        raise
    finally:
        backend.close()


# --- in this process ----------------------------------------------------------------------------


class InProcess:
    """Points one after another in this process; progress goes straight to `send` (the view)."""

    grace_s = 0.0

    def __init__(self, send):
        self.send, self.cache = send, {}
        self.tasks: dict[int, PointTask] = {}
        self.results: dict[int, PointResult | list[PointResult]] = {}
        self.cancelled = False

    def submit(self, task: PointTask) -> int:
        """Queue a point; its number is the handle."""
        self.tasks[len(self.tasks)] = task
        return len(self.tasks) - 1

    def wait(self, handles: list, timeout: float) -> tuple[list, list]:
        """Run the first pending point to its end (none after a cancel)."""
        if self.cancelled or not handles:
            return list(handles), []
        first = handles[0]
        self.results[first] = run_guarded(self.tasks[first], self.send, self.cache)
        return [first], list(handles[1:])

    def result(self, handle: int, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """How the task's points ended."""
        return self.results.pop(handle)

    def events(self) -> list:
        """None: progress went straight to the view."""
        return []

    def cancel(self, handles: list) -> None:
        """Run no more points (the one running was interrupted by the same Ctrl-C)."""
        self.cancelled = True

    def close(self) -> None:
        """Drop the loaded datasets."""
        self.cache.clear()


# --- in spawned worker processes ----------------------------------------------------------------

WORKER_STATE: dict = {"busy": False, "events": None, "stop": None}  # per worker process, set by init_worker


def exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a killed sweep (it would write into a run being redone)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.25)


def on_sigterm(signum, frame) -> None:
    """SIGTERM from the sweep: interrupt the point running (it records itself), or just exit."""
    if WORKER_STATE["busy"]:
        raise KeyboardInterrupt
    os._exit(EXIT_INTERRUPTED)


def init_worker(events, stop, parent_pid: int) -> None:
    """Set up a worker process: Ctrl-C is the sweep's to handle; it sends SIGTERM instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    WORKER_STATE.update(events=events, stop=stop, busy=False)
    threading.Thread(target=exit_with_parent, args=(parent_pid,), daemon=True).start()


def worker_run(task: PointTask | PackTask) -> PointResult | list[PointResult]:
    """In a worker process: unless the sweep is stopping, say which process runs the point, then
    run it, progress into the sweep's event queue."""
    WORKER_STATE["busy"] = True
    try:
        if WORKER_STATE["stop"].is_set():
            return ended(task, "interrupted", "the sweep was stopping; not started")
        WORKER_STATE["events"].put((task.point_id, "worker", os.getpid()))
        return run_guarded(task, WORKER_STATE["events"].put, WORKER_CACHE)
    finally:
        WORKER_STATE["busy"] = False


class ProcessPool:
    """Points in `jobs` spawned worker processes on this machine."""

    grace_s = None  # SIGTERM makes a point record itself promptly: wait for every one

    def __init__(self, jobs: int):
        import multiprocessing

        # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
        context = multiprocessing.get_context("spawn")
        self.queue, self.stop = context.Queue(), context.Event()
        self.pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=init_worker,
                                        initargs=(self.queue, self.stop, os.getpid()))
        self.workers: dict[str, int] = {}  # point id -> the worker process that took it
        self.signalled: set[str] = set()
        self.arrived: list = []

    def submit(self, task: PointTask):
        """Queue a point for the pool; its future is the handle."""
        return self.pool.submit(worker_run, task)

    def wait(self, handles: list, timeout: float) -> tuple[list, list]:
        """The futures that ended within `timeout`, and the others."""
        done, pending = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done), list(pending)

    def result(self, handle, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """The worker's result; a worker process that died makes the task's points failed."""
        self.workers.pop(task.point_id, None)
        try:
            return handle.result()
        except Exception as exc:  # the worker process died (e.g. killed for memory)
            return ended(task, "failed", f"worker process died: {type(exc).__name__}: {exc}")

    def collect(self) -> None:
        """Move the queued events here, noting which worker took which point; once stopping,
        SIGTERM each worker seen with a point."""
        import queue

        while True:
            try:
                event = self.queue.get_nowait()
            except queue.Empty:
                break
            if event[1] == "worker":
                self.workers[event[0]] = event[2]
            else:
                self.arrived.append(event)
        if self.stop.is_set():
            for point_id, pid in self.workers.items():
                if point_id not in self.signalled:
                    self.signalled.add(point_id)
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass

    def events(self) -> list:
        """The progress events that arrived since the last call."""
        self.collect()
        arrived, self.arrived = self.arrived, []
        return arrived

    def cancel(self, handles: list) -> None:
        """Start no more points; SIGTERM the workers running one (each records itself interrupted)."""
        self.stop.set()
        for future in handles:
            future.cancel()
        self.collect()

    def close(self) -> None:
        """Wait for the workers to exit, then close the event queue."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.queue.close()


@dataclass(frozen=True)
class LocalPlan:
    """Points on this machine: in this process (jobs=1), or in `jobs` worker processes or threads."""

    jobs: int
    threads: int  # torch threads per point
    device_type: str = "cpu"  # where the points train: cpu, cuda or mps
    worker_kind: str = "processes"  # processes or threads, for jobs > 1

    def workers(self, todo: int) -> int:
        """How many tasks (points or packs) run at once for `todo` of them."""
        return min(self.jobs, max(todo, 1))

    def execute(self, sweep, todo: list, view, data_dir=None) -> None:
        """Run the units `todo` of `sweep` (each a grid.Point, or a list of them packed; plan.Sweep)."""
        tasks = [sweep.task(p, data_dir) for p in todo]
        if not tasks:
            return
        jobs = self.workers(len(tasks))
        if jobs == 1:
            backend = InProcess(view.handle)
        elif self.worker_kind == "threads":
            backend = ThreadPool(jobs, self.device_type, Path(sweep.path) / "logs" / THREADS_LOG)
        else:
            backend = ProcessPool(jobs)
        drive(backend, sweep, tasks, view)
