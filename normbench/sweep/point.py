"""One sweep point as plain data and a plain top-level function any executor backend can call.

`run_point(task)` trains one point into its run directory and returns how it ended;
`run_guarded(task, send, cache)` is what every backend runs: progress goes to `send` as
(point_id, kind, payload) events, and Ctrl-C (or a cancel) comes back as an `interrupted` result.
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


@dataclass(frozen=True)
class PointResult:
    """How one point ended."""

    point_id: str
    status: str
    reason: str = ""
    wall_s: float = 0.0


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
        if can_resume(path):
            (outcome,) = resume(path, cfg, reporter=reporter, data=data)
        else:
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


def run_guarded(task: PointTask, send, cache: dict | None) -> PointResult:
    """run_point with progress events to `send` and stderr into the point's log; Ctrl-C, SIGTERM or
    a cancel mid-point (the run has recorded itself as interrupted) comes back as an `interrupted` result."""
    try:
        with stderr_to(Path(task.log_path)) if task.log_path else contextlib.nullcontext():
            return run_point(task, EventReporter(task.point_id, send), cache)
    except KeyboardInterrupt:
        return PointResult(task.point_id, "interrupted", "interrupted")


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
