"""One sweep point (or a pack of seeds) as plain data and a plain top-level function any
executor backend can call.

`run_point(task)` trains one point into its run directory and returns how it ended; `run_pack`
trains the points of a PackTask (one grid point's seeds) as one packed model, one result per
point. `run_guarded(task, send, cache)` is what every backend runs: progress goes to `send` as
(point_id, kind, payload) events, and Ctrl-C (or a cancel) comes back as `interrupted` results.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from normbench import results
from normbench.config import Config, to_dict, validate
from normbench.errors import NormbenchError
from normbench.train.progress import Reporter

# Per worker process (a process-pool worker or a Ray worker, both reused across points): the
# datasets its points loaded, so a worker loads each dataset once.
WORKER_CACHE: dict = {}


@dataclass(frozen=True)
class PointTask:
    """Everything needed to run one point; plain data, so it pickles to any worker."""

    point_id: str
    config: dict  # the resolved config (config.to_dict)
    run_path: str
    data_dir: str | None = None
    sweep_info: dict = field(default_factory=dict)  # recorded under "sweep" in meta.json
    log_path: str | None = None  # the point's stderr goes here (appended), not to the terminal

    def parts(self) -> tuple[PointTask, ...]:
        """The points this task trains: itself."""
        return (self,)


@dataclass(frozen=True)
class PackTask:
    """Several points that differ only in their seed, trained as one packed model (pack: K)."""

    point_id: str  # a label for progress events, e.g. norm=batch_bs=8_seed=0+1+2
    points: tuple[PointTask, ...]

    def parts(self) -> tuple[PointTask, ...]:
        """The points this task trains, in pack order."""
        return self.points


@dataclass(frozen=True)
class PointResult:
    """How one point ended (`group`: the label of the pack it trained in, if any)."""

    point_id: str
    status: str
    reason: str = ""
    wall_s: float = 0.0
    group: str = ""


def ended(task: PointTask | PackTask, status: str, reason: str) -> PointResult | list[PointResult]:
    """The same ending for the point, or every point of a pack (a lost worker, a cancel before it started)."""
    if isinstance(task, PointTask):
        return PointResult(task.point_id, status, reason)
    return [PointResult(p.point_id, status, reason, group=task.point_id) for p in task.points]


def load_data(cfg: Config, data_dir: str | None, cache: dict | None):
    """The point's tensors, loaded once per dataset (and synthetic seed) per cache."""
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
    """Train one point into `task.run_path`: continue it from its checkpoint if an earlier attempt
    left one, else start afresh (clearing an incomplete run there). Never raises for a failing
    point (its status and reason come back and are in meta.json), except on Ctrl-C."""
    from normbench.train.resume import can_resume, resume
    from normbench.train.runner import run

    start = time.perf_counter()
    path = Path(task.run_path)
    try:
        cfg = validate(task.config, task.point_id)
        data = load_data(cfg, task.data_dir, data_cache)
        # a run left by a pack resumes only as that pack (resume would continue every seed of it)
        if can_resume(path) and not (results.read_meta(path) or {}).get("pack"):
            (outcome,) = resume(path, cfg, reporter=reporter, data=data)
        else:
            outcome = run(cfg, path.parent, run_path=path, replace_incomplete=True, reporter=reporter, data=data)
        status, reason = outcome.status, outcome.reason
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # e.g. data missing: recorded for this point, the sweep goes on
        status, reason = "failed", record_failure([task], exc)
    wall_s = time.perf_counter() - start
    record_sweep_info(task, wall_s)
    if status == "interrupted":
        raise KeyboardInterrupt
    return PointResult(task.point_id, status, reason, wall_s)


def run_pack(task: PackTask, reporter: Reporter | None = None, data_cache: dict | None = None) -> list[PointResult]:
    """Train the points of `task` as one packed model: continue their pack from its checkpoint if
    an earlier attempt of exactly these points left one, else start afresh (clearing incomplete
    runs there). One result per point, in order; never raises for a failing pack, except on Ctrl-C."""
    from normbench.train.resume import resume
    from normbench.train.runner import run_seeds_packed

    start = time.perf_counter()
    paths = [Path(p.run_path) for p in task.points]
    try:
        configs = [validate(p.config, p.point_id) for p in task.points]
        datas = [load_data(c, p.data_dir, data_cache) for c, p in zip(configs, task.points)]
        if pack_resumable(paths):
            shared = None if configs[0].dataset.name == "synthetic" else datas[0]  # synthetic: per seed
            by_dir = {o.run_dir.name: o for o in resume(paths[0], configs[0], reporter=reporter, data=shared)}
            outcomes = [by_dir[path.name] for path in paths]
        else:
            outcomes = run_seeds_packed(configs, paths, reporter=reporter, data=datas, replace_incomplete=True)
        endings = [(o.status, o.reason) for o in outcomes]
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded for every point of the pack, the sweep goes on
        endings = [("failed", record_failure(task.points, exc))] * len(paths)
    wall_s = time.perf_counter() - start  # every seed's: they trained together
    for point in task.points:
        record_sweep_info(point, wall_s)
    if any(status == "interrupted" for status, _ in endings):
        raise KeyboardInterrupt
    return [PointResult(p.point_id, status, reason, wall_s, task.point_id)
            for p, (status, reason) in zip(task.points, endings)]


def pack_resumable(paths: list[Path]) -> bool:
    """Whether `paths` are exactly the seeds of one earlier pack still to finish (its diverged
    seeds aside), each with a checkpoint to continue from."""
    from normbench.train.resume import can_resume

    pack = (results.read_meta(paths[0]) or {}).get("pack")
    if not pack:
        return False
    parent = paths[0].parent
    live = [n for n in pack["run_dirs"] if (results.read_meta(parent / n) or {}).get("status") != "diverged"]
    return sorted(live) == sorted(p.name for p in paths) and all(can_resume(p) for p in paths)


def record_failure(tasks, exc: Exception) -> str:
    """Why the points of `tasks` failed, in one line; each one not completed gets a run directory
    saying so (train.run and run_seeds_packed raise only before they have made their run directories)."""
    reason = exc.message if isinstance(exc, NormbenchError) else f"{type(exc).__name__}: {exc}".splitlines()[0]
    for task in tasks:
        path = Path(task.run_path)
        if (results.read_meta(path) or {}).get("status") != "completed":
            record_early_failure(path, reason, traceback.format_exc())
    return reason


def record_sweep_info(task: PointTask, wall_s: float) -> None:
    """The sweep's facts about the point (grid values, command, wall time) under `sweep` in its meta.json."""
    path = Path(task.run_path)
    meta = results.read_meta(path)
    if meta is not None:
        meta["sweep"] = {**task.sweep_info, "point": task.point_id, "wall_s": wall_s}
        results.write_json_atomic(path / results.META_FILE, meta)


def run_guarded(task: PointTask | PackTask, send, cache: dict | None) -> PointResult | list[PointResult]:
    """run_point (run_pack for a PackTask: one result per point) with progress events to `send` and
    stderr into the (first) point's log; Ctrl-C, SIGTERM or a cancel mid-point (the run has recorded
    itself as interrupted) comes back as `interrupted`."""
    log_path = task.parts()[0].log_path
    for other in task.parts()[1:]:
        if other.log_path and log_path:
            point_to_log(Path(other.log_path), Path(log_path), f"the pack {task.point_id}")
    try:
        with stderr_to(Path(log_path)) if log_path else contextlib.nullcontext():
            if isinstance(task, PackTask):
                return run_pack(task, EventReporter(task.point_id, send), cache)
            return run_point(task, EventReporter(task.point_id, send), cache)
    except KeyboardInterrupt:
        return ended(task, "interrupted", "interrupted")


def point_to_log(path: Path, shared: Path, where: str) -> None:
    """Say in a point's own log where its stderr went: `shared`, the log of `where` it ran (a pack, a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"--- {results.now_iso()} pid {os.getpid()}: ran in {where}; its stderr is in {shared}\n")


@contextlib.contextmanager
def stderr_to(path: Path):
    """Send this process's stderr (Python's and the C++ side's, file descriptor 2) to `path`,
    appended under a header line, until the block ends: warnings stay out of the live progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"--- {results.now_iso()} pid {os.getpid()}\n")
        log.flush()
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved, 2)
            os.close(saved)


class EventReporter(Reporter):
    """Forwards a run's progress as (point_id, kind, payload) events; step counts are batched."""

    def __init__(self, point_id: str, send, every_s: float = 0.25):
        self.point_id, self.send, self.every_s = point_id, send, every_s
        self.pending_steps, self.last_sent = 0, 0.0

    def start(self, name, total_steps, epochs):
        """Say the point started: its steps and epochs."""
        self.send((self.point_id, "start", {"total": total_steps, "epochs": epochs}))

    def advance(self, steps=1):
        """Count steps; send the count at most every `every_s` seconds."""
        self.pending_steps += steps
        now = time.monotonic()
        if now - self.last_sent >= self.every_s:
            self.send((self.point_id, "advance", self.pending_steps))
            self.pending_steps, self.last_sent = 0, now

    def log(self, epoch, loss, samples_per_s):
        """Send an epoch's loss and speed."""
        self.send((self.point_id, "log", {"epoch": epoch, "loss": loss, "speed": samples_per_s}))

    def finish(self):
        """Send the steps not sent yet."""
        if self.pending_steps:
            self.send((self.point_id, "advance", self.pending_steps))
            self.pending_steps = 0
