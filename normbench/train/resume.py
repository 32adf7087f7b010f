"""`normbench run --resume RUN_DIR`: continue a failed, interrupted or killed run from its checkpoint.

The run continues with the config saved in its run directory (a differing config is refused).
Its CSVs are cut back to the checkpoint first, so the finished run's steps.csv and epochs.csv
equal an uninterrupted run's (timing columns aside), and meta.json lists each resume. A packed
run resumes all its seeds from the pack's one checkpoint; a data-parallel run resumes over the
same number of processes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from normbench import results
from normbench.config import Config, flatten, load_config, to_dict
from normbench.data import TensorData
from normbench.errors import ConfigError, NormbenchError
from normbench.runtime import resolve_device
from normbench.train import checkpoint
from normbench.train.lanes import Lane, PackedSeeds, SingleModel
from normbench.train.progress import Reporter
from normbench.train.runner import RunOutcome, load_lane_data, train_lanes
from normbench.train.world import LocalWorld


def resumable(run_dir: Path) -> tuple[dict, Path]:
    """(meta.json, checkpoint path) of a run that can be resumed, or a one-line error saying why not."""
    run_dir = Path(run_dir)
    meta = results.read_meta(run_dir)
    if not isinstance(meta, dict):
        raise NormbenchError(f"'{run_dir}' is not a run directory (no readable meta.json); pass a folder under results/runs/")
    status = meta.get("status")
    if status in ("completed", "diverged"):
        raise ConfigError(f"run '{run_dir}' {status}; only failed, interrupted or killed runs are resumed")
    pid, host = meta.get("pid"), (meta.get("environment") or {}).get("host")
    if status == "running" and host == socket.gethostname() and pid and pid != os.getpid() and _alive(pid):
        raise ConfigError(f"run '{run_dir}' is still running (process {pid}); stop it first")
    point = meta.get("checkpoint")
    path = (run_dir / point["file"]).resolve() if point else None
    if path is None or not path.is_file():
        raise NormbenchError(f"run '{run_dir}' has no checkpoint to resume from (it stopped before its first one, or "
                             f"checkpoint_every is 0); start it again with: normbench run {run_dir / results.CONFIG_FILE}")
    return meta, path


def can_resume(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that `resume` would continue."""
    try:
        resumable(run_dir)
    except NormbenchError:
        return False
    return True


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def check_same_config(saved: Config, given: Config | None, run_dir: Path) -> None:
    """A config given with --resume must be the run's own; the keys that differ are named."""
    if given is None:
        return
    mine, theirs = flatten(to_dict(saved)), flatten(to_dict(given))
    differ = sorted(key for key in mine.keys() | theirs.keys() if key != "name" and mine.get(key) != theirs.get(key))
    if differ:
        shown = ", ".join(f"{k} ({mine.get(k)!r} in the run, {theirs.get(k)!r} given)" for k in differ[:5])
        raise ConfigError(f"run '{run_dir}' was trained with another config: {shown}; resume it without a config "
                          "or start a new run")


def lane_dirs(run_dir: Path, meta: dict) -> list[Path]:
    """The run directories trained together with `run_dir`: its pack's, or itself."""
    pack = meta.get("pack")
    if not pack:
        return [Path(run_dir)]
    return [Path(run_dir).parent / name for name in pack["run_dirs"]]


def _reopen(path: Path, position: dict, world):
    """The lane's run directory cut back to the checkpoint, or a read-only stand-in (another rank's,
    or a packed seed that had diverged before the checkpoint)."""
    meta = results.read_meta(path) or {}
    if not world.is_main or meta.get("status") == "diverged":
        stand_in = results.NullRunDir(path)
        stand_in.meta.update(meta)
        return stand_in
    results.truncate_csv(path / "probe.csv", "step", position["steps_done"])
    return results.RunDir.reopen(path, position["steps_done"], position["epoch"] - 1)


def resume(run_dir: Path | str, given: Config | None = None, data_dir: Path | str | None = None,
           reporter: Reporter | None = None, world=None, data: TensorData | None = None) -> list[RunOutcome]:
    """Continue the run in `run_dir` (with all its packed seeds) from its checkpoint; one outcome per
    lane. `data`: the loaded data set (else it is loaded as the run loaded it)."""
    run_dir = Path(run_dir)
    meta, path = resumable(run_dir)
    dirs = lane_dirs(run_dir, meta)
    configs = [load_config(d / results.CONFIG_FILE) for d in dirs]
    check_same_config(configs[dirs.index(run_dir)] if run_dir in dirs else configs[0], given, run_dir)
    saved_world = meta.get("world_size", 1)
    if saved_world != (world.world_size if world else 1):
        raise ConfigError(f"run '{run_dir}' trained over {saved_world} processes; resume it with --nproc {saved_world}")
    world = world or LocalWorld(resolve_device(configs[0].device))
    state = checkpoint.load(path)
    datas = [data] * len(configs) if data is not None else load_lane_data(configs, world.device, data_dir)
    lanes = [Lane(c, d, _reopen(p, state["position"], world), resumed=True) for c, d, p in zip(configs, datas, dirs)]
    if len(lanes) > 1:
        make = lambda: PackedSeeds(lanes, world.device)  # noqa: E731
    else:
        make = lambda: SingleModel(lanes[0], world.device, world)  # noqa: E731
    return train_lanes(lanes, make, reporter, reraise=not world.is_main, resume=state)
