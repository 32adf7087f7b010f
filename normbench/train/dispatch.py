"""Which way a `normbench run` goes: one process, packed seeds, local data-parallel processes, a
torchrun rank, or a resume of any of these. The CLI calls `check`, `start` or `resume_run`."""

from __future__ import annotations

from pathlib import Path

from normbench.config import Config
from normbench.errors import ConfigError, NormbenchError
from normbench.runtime import resolve_device
from normbench.train import distributed, launch
from normbench.train.build import check_buildable
from normbench.train.progress import RichReporter
from normbench.train.resume import resume
from normbench.train.runner import RunOutcome, run, run_packed


def check(cfg: Config, nproc: int | None) -> None:
    """What `--dry-run` checks: the process layout, the device and the model."""
    if nproc and distributed.from_env():
        raise ConfigError("--nproc starts local processes; under torchrun set the count with --nproc-per-node instead")
    distributed.check_world(cfg, nproc or 1)
    resolve_device(cfg.device)
    check_buildable(cfg)


def start(cfg: Config, nproc: int | None, results_dir: Path, data_dir: Path | None, console) -> list[RunOutcome] | None:
    """Train `cfg` the way its options say; None for a torchrun rank other than 0 that completed."""
    if nproc and distributed.from_env():
        raise ConfigError("--nproc starts local processes; under torchrun set the count with --nproc-per-node instead")
    reporter = RichReporter(console=console)
    if distributed.from_env():  # started by torchrun: this process is one rank; rank 0 reports
        rank, outcome = launch.run_torchrun(cfg, results_dir, data_dir, reporter)
        if rank != 0:
            if outcome.status != "completed":
                raise NormbenchError(f"rank {rank}: run {outcome.status}: {outcome.reason}", outcome.exit_code)
            return None
        return [outcome]
    if nproc and nproc > 1:
        if cfg.pack > 1:
            raise ConfigError(f"--nproc {nproc} with pack={cfg.pack}: packed seeds run in one process; drop one of them")
        return [launch.launch_run(cfg, nproc, results_dir, data_dir)]
    if cfg.pack > 1:
        return run_packed(cfg, results_dir, data_dir=data_dir, reporter=reporter)
    return [run(cfg, results_dir, data_dir=data_dir, reporter=reporter)]


def resume_run(run_dir: Path, given: Config | None, nproc: int | None, data_dir: Path | None,
               console) -> list[RunOutcome]:
    """Continue the run in `run_dir` from its checkpoint (over `nproc` processes if it was data-parallel)."""
    if nproc and nproc > 1:
        return [launch.launch_resume(run_dir, nproc, data_dir)]
    return resume(run_dir, given, data_dir=data_dir, reporter=RichReporter(console=console))
