"""Running a config end to end: checks, data, run directories, the loop, and how each run ended.

`run` trains one seed (a plain run, or one rank of a data-parallel run); `run_packed` trains the
config's `pack` seeds as one packed model, `run_seeds_packed` any K seeds of one config into the
run directories given (what a sweep packs). Both build lanes and hand them to the one loop
(`normbench.train.loop`). Config, device and data problems raise NormbenchError before anything
is written; once a run directory exists, every ending is recorded in its meta.json.
"""

from __future__ import annotations

import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normbench import results
from normbench.version import __version__
from normbench.config import Config, dump, to_dict, validate
from normbench.data import TensorData, load_dataset
from normbench.errors import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, ConfigError, NormbenchError
from normbench.runtime import cpu_cores, resolve_device
from normbench.train.build import check_buildable, check_capturable
from normbench.train.checkpoint import MODEL_FILE, save_atomic
from normbench.train.lanes import Lane, PackedSeeds, SingleModel
from normbench.train.loop import Loop
from normbench.train.progress import Reporter
from normbench.train.world import LocalWorld

INTERRUPTED = "interrupted by the user (Ctrl-C or SIGTERM)"


@dataclass
class RunOutcome:
    """How a run ended: status, exit code, its directory and final metrics."""

    status: str
    exit_code: int
    run_dir: Path
    reason: str = ""
    final: dict = field(default_factory=dict)
    label: str = ""  # the run's name, with its seed for a packed seed


def check_threads(cfg: Config, processes: int = 1) -> None:
    """`num_threads` per process within the CPU cores this process may use, as sweeps check."""
    cores = cpu_cores()
    if cfg.num_threads and cfg.num_threads * processes > cores:
        per = f" x {processes} processes" if processes > 1 else ""
        raise ConfigError(f"num_threads={cfg.num_threads}{per} exceeds the {cores} CPU cores of this machine; "
                          f"use num_threads <= {max(1, cores // processes)}, or null for torch's default")


def check_fits(cfg: Config, data: TensorData) -> None:
    """At least one batch in the training set, found before a run directory is made."""
    n_train = len(data.train_y)
    if cfg.batch_size > n_train:
        more = " or raise dataset.train_samples" if cfg.dataset.name == "synthetic" else ""
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training set ({n_train} samples); "
                          f"use batch_size <= {n_train}{more}")


def _prepare(cfg: Config, results_dir: Path | str, world) -> Path:
    """Checks that need no data, then the writable results folder and the thread count."""
    check_buildable(cfg)
    check_capturable(cfg, world.device, world.data_parallel)
    check_threads(cfg, world.world_size)
    results_dir = results.ensure_writable(Path(results_dir))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return results_dir


def _open_run_dir(cfg: Config, data: TensorData, path: Path, world, replace_incomplete: bool = False):
    """The lane's run directory: rank 0 creates it; other ranks of a data-parallel run write nothing."""
    if not world.is_main:
        return results.NullRunDir(path)
    meta = {"name": cfg.name, "pid": os.getpid(), "environment": results.environment(world.device), "data": data.info,
            **world.meta(cfg.batch_size)}
    return results.RunDir(path, dump(cfg), meta, replace_incomplete=replace_incomplete)


def run(
    cfg: Config,
    results_dir: Path | str = "results",
    data_dir: Path | str | None = None,
    run_path: Path | None = None,
    replace_incomplete: bool = False,
    reporter: Reporter | None = None,
    data: TensorData | None = None,
    world=None,
) -> RunOutcome:
    """Run one config end to end. With `world` (a `distributed.DistContext`) this is one rank of a
    data-parallel run; only rank 0 writes the run directory."""
    if cfg.pack > 1:  # K run directories, not one: the caller must take K outcomes
        raise NormbenchError(f"pack={cfg.pack} trains {cfg.pack} seeds; run it with normbench.train.runner.run_packed")
    world = world or LocalWorld(resolve_device(cfg.device))
    results_dir = _prepare(cfg, results_dir, world)
    if data is None:
        data = load_dataset(cfg.dataset, seed=cfg.seed, device=world.device, data_dir=data_dir)
    check_fits(cfg, data)
    try:
        if run_path is None and not world.is_main:  # a torchrun rank other than 0 writes nothing, makes nothing
            run_path = Path(results_dir) / "runs" / f"{cfg.name}-rank{world.rank}"
        path = run_path or results.new_run_path(results_dir, cfg.name)
        lane = Lane(cfg, data, _open_run_dir(cfg, data, path, world, replace_incomplete))
    except OSError as exc:  # nothing is left behind (results.RunDir)
        where = run_path or Path(results_dir) / "runs"
        raise NormbenchError(f"cannot create a run directory in '{where}': {exc.strerror or exc}; "
                             "free some space or pass --results-dir DIR") from None
    return train_lanes([lane], lambda: SingleModel(lane, world.device, world), reporter, reraise=not world.is_main)[0]


def seed_configs(cfg: Config) -> list[Config]:
    """The K configs a pack stands for: seeds seed..seed+K-1, each with pack: 1."""
    base = to_dict(cfg)
    return [validate({**base, "seed": cfg.seed + k, "pack": 1}, f"packed seed {cfg.seed + k}") for k in range(cfg.pack)]


def load_lane_data(configs: list[Config], device, data_dir) -> list[TensorData]:
    """One data set per lane: shared, or one each for synthetic data (its samples depend on the seed)."""
    first = configs[0]
    if first.dataset.name == "synthetic":
        return [load_dataset(c.dataset, seed=c.seed, device=device, data_dir=data_dir) for c in configs]
    return [load_dataset(first.dataset, seed=first.seed, device=device, data_dir=data_dir)] * len(configs)


def _packed_data(cfg: Config, configs: list[Config], data, device, data_dir) -> list[TensorData]:
    """One data set per seed: given, shared, or (synthetic data depends on the seed) one each."""
    if isinstance(data, list):
        if len(data) != len(configs):
            raise NormbenchError(f"run_packed: {len(data)} data sets for pack={cfg.pack}")
        return data
    if data is not None:
        return [data] * len(configs)
    return load_lane_data(configs, device, data_dir)


def run_packed(
    cfg: Config,
    results_dir: Path | str = "results",
    data_dir: Path | str | None = None,
    reporter: Reporter | None = None,
    data: TensorData | list[TensorData] | None = None,
    run_name: str | None = None,
) -> list[RunOutcome]:
    """Run the config's `pack` seeds as one packed model; one RunOutcome (and run directory,
    `<run_name or name>-seed<k>-<time>`) per seed."""
    if cfg.pack < 2:
        raise NormbenchError(f"run_packed needs pack >= 2, got pack={cfg.pack}; use run for one seed")
    configs = seed_configs(cfg)
    name = lambda k: f"{run_name or configs[k].name}-seed{configs[k].seed}"  # noqa: E731
    return _train_packed(cfg, configs, results_dir, lambda k: results.new_run_path(results_dir, name(k)),
                         data_dir, reporter, data)


def pack_config(configs: list[Config]) -> Config:
    """The packed config standing for `configs` (one config with K >= 2 different seeds, each
    pack: 1): the first with pack: K. A ConfigError says why they cannot pack."""
    if len(configs) < 2:
        raise ConfigError(f"packing needs at least 2 seeds, got {len(configs)}")
    first = to_dict(configs[0])
    seeds = [c.seed for c in configs]
    if len(set(seeds)) < len(seeds) or any(c.pack != 1 for c in configs):
        raise ConfigError(f"packing needs different seeds, each with pack: 1; got seeds {seeds}")
    for c in configs[1:]:
        if {**to_dict(c), "seed": first["seed"]} != first:
            raise ConfigError(f"seeds {first['seed']} and {c.seed} differ in more than their seed; they cannot pack")
    return validate({**first, "pack": len(configs)}, f"packed seeds {', '.join(map(str, seeds))}")


def run_seeds_packed(
    configs: list[Config],
    run_paths: list[Path],
    data_dir: Path | str | None = None,
    reporter: Reporter | None = None,
    data: TensorData | list[TensorData] | None = None,
    replace_incomplete: bool = False,
) -> list[RunOutcome]:
    """Train `configs` (one config with K different seeds, in any order, each pack: 1) as one packed
    model, seed k into `run_paths[k]` (an incomplete run there is cleared with `replace_incomplete`;
    a completed one never); one RunOutcome per seed, in the order given."""
    if len(run_paths) != len(configs):
        raise NormbenchError(f"run_seeds_packed: {len(run_paths)} run paths for {len(configs)} seeds")
    return _train_packed(pack_config(configs), configs, Path(run_paths[0]).parent, lambda k: Path(run_paths[k]),
                         data_dir, reporter, data, replace_incomplete)


def _train_packed(cfg: Config, configs: list[Config], results_dir, path_for, data_dir, reporter, data,
                  replace_incomplete: bool = False) -> list[RunOutcome]:
    """Train the seed `configs` of the packed `cfg` as one model, seed k into `path_for(k)`."""
    world = LocalWorld(resolve_device(cfg.device))
    results_dir = _prepare(cfg, results_dir, world)
    datas = _packed_data(cfg, configs, data, world.device, data_dir)
    for c, d in zip(configs, datas):
        check_fits(c, d)
    lanes: list[Lane] = []
    try:
        for k, (c, d) in enumerate(zip(configs, datas)):
            lanes.append(Lane(c, d, _open_run_dir(c, d, path_for(k), world, replace_incomplete)))
    except (OSError, NormbenchError) as exc:  # no seed has trained: none of them is left behind
        for lane in lanes:
            lane.run_dir.steps.close()
            lane.run_dir.epochs.close()
            shutil.rmtree(lane.run_dir.path, ignore_errors=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise NormbenchError(f"cannot create the packed run directories in '{results_dir}': {why}; "
                             "free some space or pass --results-dir DIR") from None
    except KeyboardInterrupt:  # Ctrl-C or a sweep's SIGTERM between two seeds' directories
        for lane in lanes:  # the ones made end as interrupted, like the seeds not yet made
            _record(lane, "interrupted", EXIT_INTERRUPTED, INTERRUPTED, "")
        raise
    return train_lanes(lanes, lambda: PackedSeeds(lanes, world.device), reporter)


def save_models(trainer) -> None:
    """model.pt in each lane's run directory that is still training: its state_dict, the resolved
    config, the sample shape, the class count and normbench's version."""
    if not trainer.world.is_main:
        return
    for lane, state in zip(trainer.lanes, trainer.lane_states()):
        if lane.status == "running":
            save_atomic(lane.run_dir.path / MODEL_FILE, {
                "state_dict": state, "config": to_dict(lane.cfg), "input_shape": list(lane.data.shape),
                "num_classes": lane.data.num_classes, "normbench": __version__,
            })


def train_lanes(lanes: list[Lane], make_trainer, reporter: Reporter | None, reraise: bool = False,
           resume: dict | None = None) -> list[RunOutcome]:
    """Build the trainer and run the loop (from a checkpoint's state with `resume`); every lane's
    ending is recorded, one outcome per lane. With `reraise` (a data-parallel rank other than 0)
    an exception goes to the caller instead."""
    reporter = reporter or Reporter()
    ending = ("completed", EXIT_OK, "", "")
    try:
        trainer = make_trainer()
        Loop(trainer, reporter, lanes[0].cfg.checkpoint_every, resume).run()
        save_models(trainer)
    except KeyboardInterrupt:
        if reraise:
            raise
        ending = ("interrupted", EXIT_INTERRUPTED, INTERRUPTED, "")
    except Exception as exc:  # recorded in every running lane's directory, not lost
        if reraise:
            raise
        ending = ("failed", EXIT_ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0], traceback.format_exc())
    finally:
        reporter.finish()
    outcomes = [_record(lane, *ending) for lane in lanes]
    for lane, outcome in zip(lanes, outcomes):
        outcome.label = f"{lane.cfg.name} seed {lane.cfg.seed}" if len(lanes) > 1 else lane.cfg.name
    return outcomes


def _record(lane: Lane, status: str, code: int, reason: str, trace: str) -> RunOutcome:
    """Close the lane's run directory with its ending and say how it ended; an ending that cannot
    be written (a full disk, even for meta.json in place) is one NormbenchError line."""
    run_dir = lane.run_dir
    if lane.status == "diverged":
        return RunOutcome("diverged", EXIT_DIVERGED, run_dir.path, lane.reason, _final(run_dir))
    try:
        if status == "failed":
            log = run_dir.write_error(trace)
            run_dir.finish("failed", reason=reason, **({"error_log": log.name} if log else {}))
            reason = f"{reason} ({f'traceback in {log}' if log else 'no room on the disk for its traceback'})"
        else:
            run_dir.finish(status, **({"reason": reason} if reason else {}))
    except OSError as exc:
        raise NormbenchError(f"run {status} ({reason}) but '{run_dir.path / results.META_FILE}' could not record it "
                             f"({exc.strerror or exc}) and may still say running; free some space, then continue it "
                             f"with normbench run --resume {run_dir.path}") from None
    return RunOutcome(status, code, run_dir.path, reason, lane.final if status == "completed" else _final(run_dir))


def _final(run_dir) -> dict:
    return {k: v for k, v in run_dir.meta.items() if k.startswith("final_")}
