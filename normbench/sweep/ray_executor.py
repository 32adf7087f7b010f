"""Running sweep points as Ray tasks, on a local Ray instance or a running cluster.

Each point is one `ray.remote` task calling `executor.run_point`, which writes the point's run
directory itself: the results directory must be reachable from every worker (the same
filesystem on a local instance; a shared filesystem on a cluster). A worker that dies mid-point
(killed, out of memory, node lost) makes Ray rerun the task up to `max_retries` times; after
that the point is recorded as failed in its run directory and index.csv, never lost. Progress
events travel back through a Ray queue to the same view the local executor drives.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from normbench import results
from normbench.errors import EXIT_USAGE, ConfigError, NormbenchError
from normbench.sweep.executor import EventReporter, PointResult, PointTask, record_early_failure, run_point

INSTALL_HINT = "ray is not installed; pip install 'normbench[ray]'"
TASK_NAME = "normbench_point"  # the busy worker's process title is ray::normbench_point


def require_ray():
    """The `ray` module, or a one-line error (exit code 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise NormbenchError(INSTALL_HINT, EXIT_USAGE) from None
    return ray


@dataclass(frozen=True)
class RayPlan:
    """Where and how a sweep's points run on Ray."""

    address: str | None  # None: a local instance started (and shut down) by the sweep
    threads: int  # torch threads per point = CPUs Ray reserves for it
    gpus: float  # GPUs Ray reserves per point
    max_retries: int  # reruns of a point whose worker died
    label: str = "Ray"

    def execute(self, sweep, todo: list, view, data_dir=None) -> None:
        """Run the points `todo` of `sweep` under this plan."""
        execute(sweep, todo, view, data_dir, address=self.address, cpus_per_point=self.threads,
                gpus_per_point=self.gpus, max_retries=self.max_retries)


def plan_ray(base, jobs: int | None, address: str | None, max_retries: int) -> RayPlan:
    """Check the options for a Ray sweep (ray installed first) and fix each point's resources."""
    from normbench.runtime import resolve_device

    require_ray()
    if jobs is not None:
        raise ConfigError("--jobs is for --executor local; on Ray as many points run at once as the CPUs "
                          "(num_threads per point) and GPUs allow")
    if max_retries < 0:
        raise ConfigError(f"--ray-retries {max_retries}: must be at least 0")
    if address is not None and not address.strip():
        raise ConfigError("--ray-address is empty; give HOST:PORT of the head node, e.g. 10.0.0.1:6379")
    if address:
        _check_reachable(address)  # before the sweep folder is written
    if address is None or base.device == "auto":
        # a local instance runs on this machine, and auto is resolved here: check the device now
        device_type = resolve_device(base.device).type
    else:
        device_type = base.device  # a cluster's nodes may have devices this driver lacks
    gpus = 1.0 if device_type == "cuda" else 0.0
    return RayPlan(address, base.num_threads or 1, gpus, max_retries)


def _point_task(task: PointTask, events) -> PointResult:
    """Body of the Ray task: run one point, forwarding progress into the Ray queue `events`."""
    import ray

    worker = ray._private.worker.global_worker
    # one data cache per Ray worker process, which Ray reuses across tasks
    cache = getattr(worker, "_normbench_data_cache", None)
    if cache is None:
        cache = worker._normbench_data_cache = {}

    def send(event) -> None:
        try:
            events.put_nowait(event)
        except Exception:  # a full or gone queue costs a progress update, never the point
            pass

    try:
        return run_point(task, EventReporter(task.point_id, send), cache)
    except KeyboardInterrupt:  # ray.cancel on Ctrl-C: train.run has recorded the run as interrupted
        return PointResult(task.point_id, "interrupted", "interrupted")


def record_lost_worker(task: PointTask, reason: str) -> None:
    """A point whose worker died after all retries: mark its run directory failed, keeping what it wrote."""
    path = Path(task.run_path)
    meta = results.read_meta(path)
    if meta is None:
        record_early_failure(path, reason, reason + "\n")
        meta = results.read_meta(path) or {}
    elif meta.get("status") == "completed":
        return
    meta.update(status="failed", reason=reason, end_time=results.now_iso())
    meta["sweep"] = {**task.sweep_info, "point": task.point_id, **(meta.get("sweep") or {})}
    results.write_json_atomic(path / results.META_FILE, meta)


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on; ray.init would retry for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", "ray://...": Ray's own forms, checked by Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise NormbenchError(f"cannot reach the Ray head at {address} ({exc.strerror or exc}); start it with "
                             "`ray start --head --port 6379` or fix --ray-address") from None


def connect(ray, address: str | None, num_cpus: int) -> bool:
    """Connect to the cluster at `address`, or start a local instance (`num_cpus` CPUs); reuse a
    connection this process already has. Returns whether this call connected (and must shut down)."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise NormbenchError(f"cannot reach the Ray cluster at {address}: {exc}".splitlines()[0]
                             + "; start it with `ray start --head` or fix --ray-address") from None
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def execute(sweep, todo: list, view, data_dir=None, *, address: str | None = None, cpus_per_point: float = 1,
            gpus_per_point: float = 0, max_retries: int = 1, local_cpus: int | None = None) -> None:
    """Run the points `todo` of `sweep` as Ray tasks, rewriting the index after each one ends;
    Ctrl-C cancels the points in flight (recorded as interrupted) and stops the sweep."""
    ray = require_ray()
    from ray.util.queue import Empty, Queue

    tasks = [sweep.task(p, data_dir) for p in todo]
    if not tasks:
        return
    owned = connect(ray, address, local_cpus or _cores())
    events = None
    try:
        cluster = ray.cluster_resources()
        view.console.print(
            f"Ray: {address or 'local instance'} with {cluster.get('CPU', 0):g} CPU(s), {cluster.get('GPU', 0):g} GPU(s); "
            f"each point takes {cpus_per_point:g} CPU(s), {gpus_per_point:g} GPU(s); {max_retries} retries if its worker dies",
            highlight=False, soft_wrap=True)
        if cpus_per_point > cluster.get("CPU", 0) or gpus_per_point > cluster.get("GPU", 0):
            raise NormbenchError(  # Ray would wait forever for a node that fits
                f"a point needs {cpus_per_point:g} CPU(s) and {gpus_per_point:g} GPU(s) but the Ray cluster has "
                f"{cluster.get('CPU', 0):g} and {cluster.get('GPU', 0):g}; lower num_threads, set device, or add nodes")
        events = Queue(actor_options={"num_cpus": 0})
        _run_tasks(ray, Empty, events, sweep, tasks, view, cpus_per_point, gpus_per_point, max_retries)
    finally:
        if events is not None:
            ray.kill(events.actor)
        if owned:
            ray.shutdown()


def _run_tasks(ray, Empty, events, sweep, tasks, view, cpus_per_point, gpus_per_point, max_retries) -> None:
    remote = ray.remote(_point_task).options(
        name=TASK_NAME, num_cpus=cpus_per_point, num_gpus=gpus_per_point, max_retries=max_retries,
        retry_exceptions=False,  # a point's own errors are recorded by run_point; retry only lost workers
    )

    def drain() -> None:
        while True:
            try:
                view.handle(events.get_nowait())
            except Empty:
                return

    refs = {}
    try:
        for task in tasks:
            refs[remote.remote(task, events)] = task
            view.handle((task.point_id, "queued", {}))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.2)
            drain()
            for ref in done:
                task = refs[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker (or its node) died on every attempt
                    reason = f"Ray worker died ({max_retries} retries): {type(exc).__name__}"
                    record_lost_worker(task, reason)
                    traceback_text = "".join(traceback.format_exception_only(type(exc), exc))
                    (Path(task.run_path) / "ray_error.log").write_text(traceback_text, encoding="utf-8")
                    result = PointResult(task.point_id, "failed", reason)
                view.point_done(result)
                sweep.write_index()
                if result.status == "interrupted":
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)  # KeyboardInterrupt inside the task: the run records itself as interrupted
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ray.wait(list(refs), num_returns=len(refs), timeout=0.2)[1]:
            drain()
        drain()
        sweep.write_index()
        raise
