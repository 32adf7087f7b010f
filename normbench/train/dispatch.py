"""Which way a `normbench run` goes: one process, packed seeds, local data-parallel processes, a
torchrun rank, or a resume of any of these. The CLI calls `check`, `start` or `resume_run`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from normbench import results
from normbench.config import Config
from normbench.errors import ConfigError, NormbenchError
from normbench.runtime import resolve_device
from normbench.train import distributed, launch
from normbench.train.build import check_buildable
from normbench.train.progress import RichReporter
from normbench.train.resume import resume
from normbench.train.runner import RunOutcome, run, run_packed

# Short names of the keys most often overridden, for run directory names (quickstart-norm=group-bs=8-<time>).
RUN_NAME_KEYS = {"norm.type": "norm", "norm": "norm", "batch_size": "bs", "optimizer.lr": "lr", "optimizer.name": "opt",
                 "dataset.name": "data", "dataset": "data", "max_samples": "samples", "epochs": "ep"}
MAX_TAG = 60  # characters of overrides in a run directory name; longer ones end in a hash of the whole


def override_tag(overrides: list[str]) -> str:
    """The `--set` overrides as a safe part of a directory name: `norm.type=group`, `batch_size=8` ->
    `norm=group-bs=8` (common keys shortened, other keys by their last part, other characters as `_`)."""
    parts = []
    for text in overrides:
        key, _, value = text.partition("=")
        alias = RUN_NAME_KEYS.get(key.strip(), key.strip().split(".")[-1])
        parts.append(f"{alias}={re.sub(r'[^A-Za-z0-9.+-]+', '_', value.strip()).strip('_')}")
    tag = re.sub(r"[^A-Za-z0-9.+=_-]", "_", "-".join(parts))
    if len(tag) > MAX_TAG:
        tag = f"{tag[:MAX_TAG - 9].rstrip('-_')}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}"
    return tag


def record_command(run_dir: Path, argv: list[str], overrides: list[str]) -> None:
    """Add the command line (`argv`) and its `--set` overrides to meta.json; a resumed run gets
    them in its latest `resumes` entry, keeping the command that started it. On a full disk they
    are left out: the run's own ending is what must be reported."""
    meta = results.read_meta(run_dir)
    if meta is None:
        return
    command = {"argv": list(argv), "overrides": list(overrides)}
    if meta.get("resumes") and "argv" in meta:
        meta["resumes"][-1].update(command)
    else:
        meta.update(command)
    try:
        results.write_json_atomic(Path(run_dir) / results.META_FILE, meta)
    except OSError as exc:
        if exc.errno not in results.DISK_FULL:
            raise


def check(cfg: Config, nproc: int | None) -> None:
    """What `--dry-run` checks: the process layout, the device and the model."""
    if nproc and distributed.from_env():
        raise ConfigError("--nproc starts local processes; under torchrun set the count with --nproc-per-node instead")
    distributed.check_world(cfg, nproc or 1)
    resolve_device(cfg.device)
    check_buildable(cfg)


def start(cfg: Config, nproc: int | None, results_dir: Path, data_dir: Path | None, console,
          run_name: str | None = None) -> list[RunOutcome] | None:
    """Train `cfg` the way its options say; None for a torchrun rank other than 0 that completed.
    The run directory is `<run_name or cfg.name>-<time>` (packed seeds: `<run_name or cfg.name>-seed<k>-<time>`)."""
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
        return [launch.launch_run(cfg, nproc, results_dir, data_dir, run_name=run_name)]
    if cfg.pack > 1:
        return run_packed(cfg, results_dir, data_dir=data_dir, reporter=reporter, run_name=run_name)
    if run_name is None:
        return [run(cfg, results_dir, data_dir=data_dir, reporter=reporter)]
    check(cfg, None)  # the usual problems before the directory exists
    path = launch.make_run_path(results_dir, run_name)
    try:
        return [run(cfg, results_dir, data_dir=data_dir, run_path=path, reporter=reporter)]
    finally:
        launch.remove_if_empty(path)  # a problem found before training (e.g. data missing) leaves nothing


def resume_run(run_dir: Path, given: Config | None, nproc: int | None, data_dir: Path | None,
               console) -> list[RunOutcome]:
    """Continue the run in `run_dir` from its checkpoint (over `nproc` processes if it was data-parallel)."""
    if nproc and nproc > 1:
        return [launch.launch_resume(run_dir, nproc, data_dir)]
    return resume(run_dir, given, data_dir=data_dir, reporter=RichReporter(console=console))
