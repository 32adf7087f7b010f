"""Sweep points in threads of the sweep's own process (`--jobs N --workers threads`): N points
share one process, its loaded datasets and, on a GPU, one CUDA context, each on its own stream.
`ThreadPool` is a backend of `executor.drive`, like `executor.ProcessPool`."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from normbench.sweep.point import PackTask, PointResult, PointTask, ended, point_to_log, run_guarded, stderr_to

WORKER_KINDS = ("processes", "threads")
THREADS_LOG = "threads.log"  # in the sweep's logs/: the stderr of points run in threads


class SetupTurn:
    """A point's turn at the pool's setup lock: taken when the point begins, given back when its
    run starts training (its `start` event) or ends, whichever comes first."""

    def __init__(self, lock: threading.Lock):
        self.lock, self.held = lock, False

    def __enter__(self) -> "SetupTurn":
        self.lock.acquire()
        self.held = True
        return self

    def release(self) -> None:
        """Give the lock back (once)."""
        if self.held:
            self.held = False
            self.lock.release()

    def __exit__(self, *exc) -> None:
        self.release()


def point_stream(device_type: str):
    """On CUDA, a stream of the point's own (so points in threads overlap on the device); else nothing."""
    if device_type != "cuda":
        return contextlib.nullcontext()
    import torch

    return torch.cuda.stream(torch.cuda.Stream())


def sync_stream(device_type: str) -> None:
    """On CUDA, wait for the point's stream: what it made (data, a model) is ready for other streams."""
    if device_type == "cuda":
        import torch

        torch.cuda.current_stream().synchronize()


class ThreadPool:
    """Points in `jobs` threads of this process, sharing its CUDA context and loaded datasets.

    Seeding and building a model use the process's global random state, so a point's setup (data,
    seed, model, a checkpoint's restore) holds one lock until its run starts training; training,
    which draws only from per-run generators, then overlaps, each point on its own CUDA stream.
    Results equal process workers'. Ctrl-C: each point raises KeyboardInterrupt at its next
    progress event and records itself interrupted. The points' stderr goes to one shared log
    (file descriptor 2 belongs to the process, not a thread)."""

    grace_s = None  # every point stops at its next progress event: wait for each

    def __init__(self, jobs: int, device_type: str, log: Path | None = None):
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="normbench-point")
        self.device_type, self.log = device_type, log
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stop, self.setup, self.cache = threading.Event(), threading.Lock(), {}
        self.stderr = contextlib.ExitStack()
        if log is not None:
            self.stderr.enter_context(stderr_to(log))

    def submit(self, task: PointTask | PackTask):
        """Queue a point for a thread; its future is the handle."""
        return self.pool.submit(self.run, self.without_logs(task))

    def without_logs(self, task: PointTask | PackTask) -> PointTask | PackTask:
        """The task with no per-point stderr log; each point's log says where its stderr went."""
        for point in task.parts():
            if point.log_path and self.log is not None:
                point_to_log(Path(point.log_path), self.log, "a thread of the sweep process")
        if isinstance(task, PackTask):
            return PackTask(task.point_id, tuple(dataclasses.replace(p, log_path=None) for p in task.points))
        return dataclasses.replace(task, log_path=None)

    def run(self, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """In a pool thread: the point's setup under the lock, then its training alongside the others."""
        if self.stop.is_set():
            return ended(task, "interrupted", "the sweep was stopping; not started")
        with SetupTurn(self.setup) as turn, point_stream(self.device_type):
            try:
                return run_guarded(task, self.sender(turn), self.cache)
            finally:
                sync_stream(self.device_type)

    def sender(self, turn: SetupTurn):
        """The point's `send`: queues its events; the `start` event ends its setup turn; once the
        sweep is stopping, the next event interrupts the point (once: its ending must be recorded)."""
        interrupted = []

        def send(event) -> None:
            if event[1] == "start":
                sync_stream(self.device_type)
                turn.release()
            if self.stop.is_set() and not interrupted:
                interrupted.append(event)
                raise KeyboardInterrupt
            self.queue.put(event)

        return send

    def wait(self, handles: list, timeout: float) -> tuple[list, list]:
        """The futures that ended within `timeout`, and the others."""
        done, pending = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done), list(pending)

    def result(self, handle, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """The thread's result (run_guarded records every failure of the point itself)."""
        return handle.result()

    def events(self) -> list:
        """The progress events that arrived since the last call."""
        arrived = []
        while True:
            try:
                arrived.append(self.queue.get_nowait())
            except queue.Empty:
                return arrived

    def cancel(self, handles: list) -> None:
        """Start no more points; the running ones stop at their next progress event."""
        self.stop.set()
        for future in handles:
            future.cancel()

    def close(self) -> None:
        """Wait for the threads to end; give stderr back."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.stderr.close()
