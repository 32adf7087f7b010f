"""`normbench sweep --pack-seeds`: the seeds of one grid point trained as one packed model.

Points that differ only in their seed and are still to run form one pack (`pack: K`, any seeds,
consecutive or not), where packing is exact for their config (`runner.pack_config` says); any
other point runs alone, and the plan says why. Each seed keeps its own run directory and index
row, so resume, `--retry-diverged` and `report` see a packed sweep as an unpacked one.
"""

from __future__ import annotations

from normbench.config import pack_obstacle
from normbench.errors import ConfigError, NormbenchError
from normbench.sweep.grid import Point, point_id

PACK_MODES = ("auto", "on", "off")


def pack_enabled(mode: str, device_type: str) -> bool:
    """Whether to pack: `on`, or `auto` on a CUDA device (packing fills a GPU; a CPU gains little)."""
    if mode not in PACK_MODES:
        raise ConfigError(f"--pack-seeds {mode}: valid values are {', '.join(PACK_MODES)}")
    return mode == "on" or (mode == "auto" and device_type == "cuda")


def mode_line(mode: str, enabled: bool, device_type: str, units: list[list[Point]]) -> str:
    """The plan's line about packing: how many packs of how many seeds, or why none."""
    if not enabled:
        why = "auto on a GPU only" if mode == "auto" else "--pack-seeds off"
        return f"seeds: one run each ({why}; this sweep runs on {device_type})"
    packs = [u for u in units if len(u) > 1]
    seeds = sum(len(u) for u in packs)
    return f"seeds: {seeds} packed into {len(packs)} run(s), {len(units) - len(packs)} run(s) alone (--pack-seeds {mode})"


def seed_groups(todo: list[Point]) -> list[list[Point]]:
    """The points `todo` grouped by every grid value but the seed, in order of first appearance."""
    groups: dict[tuple, list[Point]] = {}
    for point in todo:
        key = tuple((k, repr(v)) for k, v in point.values.items() if k != "seed")
        groups.setdefault(key, []).append(point)
    return list(groups.values())


def pack_problem(points: list[Point]) -> str:
    """Why these points (one grid point's seeds) cannot train as one pack, in a few words, or ''."""
    from normbench.train.runner import pack_config

    if "seed" not in points[0].values:
        return "no seed axis"
    if len(points) < 2:
        return "one seed to run"
    what, _ = pack_obstacle(points[0].config)
    if what:
        return what
    try:
        pack_config([p.config for p in points])
    except NormbenchError as exc:
        return exc.message
    return ""


def plan_units(todo: list[Point], enabled: bool, continues=lambda point: False) -> tuple[list[list[Point]], dict[str, str]]:
    """What runs: a list of units (a pack: several points; else one point), and for each point id
    in `todo` its packing note for the plan table (empty when packing is off). A point for which
    `continues(point)` is true (an unpacked run with a checkpoint) runs alone, to continue it."""
    if not enabled:
        return [[p] for p in todo], {}
    units, notes = [], {}
    for seeds in seed_groups(todo):
        resumed = {p.point_id for p in seeds if continues(p)}
        units += [[p] for p in seeds if p.point_id in resumed]
        notes.update((point_id, "alone: continues its checkpoint") for point_id in resumed)
        group = [p for p in seeds if p.point_id not in resumed]
        problem = pack_problem(group) if group else ""
        if problem:
            units += [[p] for p in group]
            notes.update((p.point_id, f"alone: {problem}") for p in group)
        elif group:
            units.append(group)
            label = pack_label(group)
            notes.update((p.point_id, f"packed ({label.rpartition('seed=')[2]})") for p in group)
    return units, notes


def pack_label(points: list[Point]) -> str:
    """The pack's name in progress and results, e.g. `norm=batch_bs=8_seed=0+1+2`."""
    values = dict(points[0].values)
    values["seed"] = "+".join(str(p.values["seed"]) for p in points)
    return point_id(values)
