"""Running sweep points as Ray tasks, on a local Ray instance or a running cluster.

Each point (or pack of one grid point's seeds) is one `ray.remote` task calling
`point.run_guarded`, which writes the points' run directories itself: the results directory must be reachable from every worker (the same
filesystem on a local instance; a shared filesystem on a cluster). A worker that dies mid-point
(killed, out of memory, node lost) makes Ray rerun the task up to `max_retries` times; after
that the point is recorded as failed in its run directory and index.csv, never lost. Progress
events travel back through a Ray queue; `executor.drive` runs the same polling loop as for the
local backends.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from normbench import results
from normbench.errors import EXIT_USAGE, ConfigError, NormbenchError
from normbench.runtime import cpu_cores
from normbench.sweep.executor import drive
from normbench.sweep.point import WORKER_CACHE, PackTask, PointResult, PointTask, ended, record_early_failure, run_guarded

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

    @property
    def device_type(self) -> str:
        """Where the points train, as far as packing cares: cuda when each takes a GPU, else cpu."""
        return "cuda" if self.gpus else "cpu"

    def workers(self, todo: int) -> str:
        """How many points run at once: as many as the cluster's CPUs and GPUs allow."""
        return "Ray"

    def execute(self, sweep, todo: list, view, data_dir=None) -> None:
        """Run the units `todo` of `sweep` (points, or lists of them packed) under this plan."""
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


def ray_point(task: PointTask | PackTask, events) -> PointResult | list[PointResult]:
    """Body of the Ray task: run one point (or pack), forwarding progress into the Ray queue `events`."""

    def send(event) -> None:
        try:
            events.put_nowait(event)
        except Exception:  # a full or gone queue costs a progress update, never the point
            pass

    # WORKER_CACHE: one data cache per Ray worker process, which Ray reuses across tasks
    return run_guarded(task, send, WORKER_CACHE)


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


class RayBackend:
    """Points as Ray tasks; progress events come back through a Ray queue."""

    grace_s = 10.0  # after ray.cancel, how long to wait for the points to record themselves

    def __init__(self, ray, cpus_per_point: float, gpus_per_point: float, max_retries: int):
        from ray.util.queue import Queue

        self.ray, self.max_retries = ray, max_retries
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.remote = ray.remote(ray_point).options(
            name=TASK_NAME, num_cpus=cpus_per_point, num_gpus=gpus_per_point, max_retries=max_retries,
            retry_exceptions=False,  # a point's own errors are recorded by run_point; retry only lost workers
        )

    def submit(self, task: PointTask | PackTask):
        """Submit a point (or pack) as a Ray task; its object ref is the handle."""
        return self.remote.remote(task, self.queue)

    def wait(self, handles: list, timeout: float) -> tuple[list, list]:
        """The refs that ended within `timeout` (at least one when any did), and the others."""
        return self.ray.wait(handles, num_returns=1, timeout=timeout)

    def result(self, handle, task: PointTask | PackTask) -> PointResult | list[PointResult]:
        """The task's result; a worker that died on every attempt makes its points failed, in their run directories too."""
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as exc:  # the worker (or its node) died on every attempt
            reason = f"Ray worker died ({self.max_retries} retries): {type(exc).__name__}"
            text = "".join(traceback.format_exception_only(type(exc), exc))
            for point in task.parts():
                record_lost_worker(point, reason)
                (Path(point.run_path) / "ray_error.log").write_text(text, encoding="utf-8")
            return ended(task, "failed", reason)

    def events(self) -> list:
        """The events in the Ray queue."""
        from ray.util.queue import Empty

        arrived = []
        while True:
            try:
                arrived.append(self.queue.get_nowait())
            except Empty:
                return arrived

    def cancel(self, handles: list) -> None:
        """ray.cancel every point: a KeyboardInterrupt inside the task, so the run records itself interrupted."""
        for ref in handles:
            self.ray.cancel(ref)

    def close(self) -> None:
        """Stop the queue's actor."""
        self.ray.kill(self.queue.actor)


def execute(sweep, todo: list, view, data_dir=None, *, address: str | None = None, cpus_per_point: float = 1,
            gpus_per_point: float = 0, max_retries: int = 1, local_cpus: int | None = None) -> None:
    """Run the points `todo` of `sweep` as Ray tasks, rewriting the index after each one ends;
    Ctrl-C cancels the points in flight (recorded as interrupted) and stops the sweep."""
    ray = require_ray()
    tasks = [sweep.task(p, data_dir) for p in todo]
    if not tasks:
        return
    owned = connect(ray, address, local_cpus or cpu_cores())
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
        drive(RayBackend(ray, cpus_per_point, gpus_per_point, max_retries), sweep, tasks, view)
    finally:
        if owned:
            ray.shutdown()
