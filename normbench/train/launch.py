"""Starting a data-parallel run: `normbench run --nproc N` (local processes) or one rank under
torchrun. Each rank runs `runner.run` with its `DistContext` as the world; the launcher turns the
ranks' reports into one outcome and records every failing rank's error in meta.json."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Callable

import torch

from normbench import results
from normbench.config import load_config
from normbench.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError, NormbenchError
from normbench.runtime import resolve_device
from normbench.train.build import check_buildable
from normbench.train.distributed import (
    DistContext, RankResult, check_world, describe_failures, from_env, init_from_env, shutdown, spawn,
)
from normbench.train.progress import Reporter, RichReporter
from normbench.train.resume import resumable, resume
from normbench.train.runner import INTERRUPTED, RunOutcome, check_threads, run


def run_rank(ctx: DistContext, cfg, results_dir: str, data_dir: str | None, run_path: str, show_progress: bool) -> dict:
    """One rank of `launch_run`: `run` with this rank's context; returns its outcome as a dict."""
    reporter = RichReporter() if show_progress and ctx.is_main else Reporter()
    outcome = run(cfg, results_dir, data_dir=data_dir, run_path=Path(run_path), reporter=reporter, world=ctx)
    return {"status": outcome.status, "exit_code": outcome.exit_code, "reason": outcome.reason, "final": outcome.final}


def resume_rank(ctx: DistContext, run_dir: str, data_dir: str | None, show_progress: bool) -> dict:
    """One rank of `launch_resume`: `resume.resume` with this rank's context; its outcome as a dict."""
    reporter = RichReporter() if show_progress and ctx.is_main else Reporter()
    (outcome,) = resume(run_dir, data_dir=data_dir, reporter=reporter, world=ctx)
    return {"status": outcome.status, "exit_code": outcome.exit_code, "reason": outcome.reason, "final": outcome.final}


def launch_resume(run_dir: Path, nproc: int, data_dir: Path | str | None = None, show_progress: bool = True) -> RunOutcome:
    """`normbench run --resume RUN_DIR --nproc N`: continue a data-parallel run over N local processes."""
    meta, _ = resumable(run_dir)
    cfg = load_config(Path(run_dir) / results.CONFIG_FILE)
    if meta.get("world_size", 1) != nproc:
        raise ConfigError(f"run '{run_dir}' trained over {meta.get('world_size', 1)} processes; "
                          f"resume it with --nproc {meta.get('world_size', 1)}")
    device = resolve_device(cfg.device)
    data_dir = str(data_dir) if data_dir is not None else None
    reports = spawn_ranks(resume_rank, nproc, (str(run_dir), data_dir, show_progress), device.type, Path(run_dir))
    return _outcome(reports, Path(run_dir))


def _stop_ranks(signum, frame) -> None:
    """SIGTERM to the launcher: the ranks get it as Ctrl-C (they record the stop and checkpoint)."""
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGINT)
        except OSError:  # already gone
            pass
    raise KeyboardInterrupt


def spawn_ranks(worker: Callable, nproc: int, args: tuple, device_type: str, run_path: Path) -> list[RankResult]:
    """`spawn` the ranks, passing a SIGTERM to this launcher on to them; when stopped, a run whose
    meta.json no rank could close is recorded as interrupted here, never left `running`."""
    try:
        previous = signal.signal(signal.SIGTERM, _stop_ranks)
    except ValueError:  # not the main thread: signals are not ours to route
        previous = None
    try:
        return spawn(worker, nproc, args, device_type)
    except KeyboardInterrupt:
        meta = results.read_meta(run_path)
        if meta is not None and meta.get("status") == "running":
            results.amend_meta(run_path, status="interrupted", reason=INTERRUPTED, end_time=results.now_iso())
        remove_if_empty(run_path)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def remove_if_empty(run_path: Path) -> None:
    """The run directory the launcher made, when no rank wrote anything into it."""
    try:
        run_path.rmdir()
    except OSError:  # not empty (a rank wrote the run), or already gone
        pass


def make_run_path(results_dir: Path, name: str) -> Path:
    """A fresh, empty run directory `results_dir/runs/<name>-<time>`, or a one-line NormbenchError."""
    results_dir = results.ensure_writable(Path(results_dir))
    try:
        return results.new_run_path(results_dir, name)
    except OSError as exc:
        raise NormbenchError(f"cannot create a run directory in '{results_dir / 'runs'}': {exc.strerror or exc}; "
                             "free some space or pass --results-dir DIR") from None


def launch_run(cfg, nproc: int, results_dir: Path | str = "results", data_dir: Path | str | None = None,
               show_progress: bool = True, worker: Callable = run_rank, run_name: str | None = None) -> RunOutcome:
    """`normbench run --nproc N`: train `cfg` data-parallel over N local processes -> RunOutcome.

    Config, device and directory problems are found here, before any process starts. `worker`
    is the per-rank function (tests substitute one that fails on purpose); the run directory is
    `<run_name or cfg.name>-<time>`.
    """
    check_world(cfg, nproc)
    device = resolve_device(cfg.device)
    if device.type not in ("cpu", "cuda"):
        raise NormbenchError(f"data-parallel runs use gloo on cpu or nccl on cuda, not {device.type}; set device: cpu")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise NormbenchError(f"--nproc {nproc} needs one GPU per process but torch sees {torch.cuda.device_count()}; "
                             f"use --nproc {torch.cuda.device_count()} or fewer")
    check_buildable(cfg)
    check_threads(cfg, nproc)
    results_dir = results.ensure_writable(Path(results_dir))
    run_path = make_run_path(results_dir, run_name or cfg.name)
    data_dir = str(data_dir) if data_dir is not None else None
    args = (cfg, str(results_dir), data_dir, str(run_path), show_progress)
    return _outcome(spawn_ranks(worker, nproc, args, device.type, run_path), run_path)


def _outcome(reports: list[RankResult], run_path: Path) -> RunOutcome:
    """One RunOutcome for the whole run; every failing rank's error goes into meta.json and the reason."""
    for report in reports:  # a rank whose run() recorded a failure counts as a failing rank
        if report.ok and report.value["status"] == "failed":
            report.ok, report.error, report.exit_code = False, report.value["reason"], report.value["exit_code"]
    main = reports[0].value if reports[0].ok else None
    if all(r.ok for r in reports):
        return RunOutcome(main["status"], main["exit_code"], run_path, main["reason"], main["final"])
    reason = describe_failures(reports)
    meta = results.read_meta(run_path)
    if meta is None:  # nothing was written: a problem found before training (e.g. missing data)
        remove_if_empty(run_path)
        codes = {r.exit_code for r in reports if not r.ok}
        raise NormbenchError(reason, exit_code=codes.pop() if len(codes) == 1 else EXIT_ERROR)
    # Rank 0 may have been terminated, or failed only because a peer vanished: record them all.
    status = "interrupted" if meta["status"] == "interrupted" else "failed"
    meta = results.amend_meta(run_path, status=status, reason=reason, end_time=meta.get("end_time") or results.now_iso(),
                              rank_errors=[{"rank": r.rank, "error": r.error} for r in reports if not r.ok])
    details = "".join(f"\n--- rank {r.rank} ---\n{r.details}" for r in reports if r.details)
    if details:  # beside rank 0's own traceback, if it wrote one
        with open(run_path / results.ERROR_FILE, "a", encoding="utf-8") as log:
            log.write(details)
    code = EXIT_INTERRUPTED if status == "interrupted" else EXIT_ERROR
    final = {k: v for k, v in meta.items() if k.startswith("final_")}
    return RunOutcome(status, code, run_path, reason, final)


def run_torchrun(cfg, results_dir: Path | str, data_dir: Path | str | None, reporter):
    """This process's rank of a run started by torchrun -> (rank, RunOutcome); only rank 0 reports."""
    rank, world_size, _ = from_env()
    check_world(cfg, world_size)
    ctx = init_from_env(resolve_device(cfg.device).type)
    try:
        if ctx.is_main:
            return rank, run(cfg, results_dir, data_dir=data_dir, reporter=reporter, world=ctx)
        try:
            return rank, run(cfg, results_dir, data_dir=data_dir, reporter=Reporter(), world=ctx)
        except NormbenchError as exc:
            raise NormbenchError(f"rank {rank}: {exc.message}", exc.exit_code) from None
        except Exception as exc:  # one line, like rank 0's reason; torchrun then ends the other ranks
            raise NormbenchError(f"rank {rank}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    finally:
        shutdown()
