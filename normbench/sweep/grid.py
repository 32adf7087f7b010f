"""Sweep grids: the product of value lists over config keys, expanded into validated points.

A point is one config of the grid. Its id is built from its grid values only
(`norm=batch_bs=2_seed=0`), so running the same sweep again finds the same run directories.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from normbench.config import Config, apply_overrides, to_dict, validate
from normbench.errors import ConfigError, NormbenchError
from normbench.values import parse_assignment, parse_list

LR_SCALINGS = ("none", "linear", "sqrt")
# Short names for the keys every study sweeps; any other key keeps its dotted path in the id.
SHORT_KEYS = {"norm.type": "norm", "batch_size": "bs", "seed": "seed"}


@dataclass(frozen=True)
class Axis:
    """One swept config key and its values, in the order given."""

    key: str  # dotted config path, e.g. "optimizer.lr"
    values: tuple
    tune: bool = False  # a tuning axis: each grid point keeps the value with the best val_acc


@dataclass
class Point:
    """One config of the grid: valid (`config`) or invalid (`invalid` says why)."""

    point_id: str
    values: dict  # grid key -> value
    config: Config | None = None
    invalid: str = ""
    info: dict = field(default_factory=dict)  # lr_scaling facts recorded with the run


def check_key(key: str) -> None:
    """Raise ConfigError unless `key` is a dotted path to a config option."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"--grid {key}: '{part}' is not a key of {where} (valid: {', '.join(fields)})")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                raise ConfigError(f"--grid {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            model = annotation
        elif is_section:
            raise ConfigError(f"--grid {key}: '{key}' is a section; sweep one of its keys ({', '.join(annotation.model_fields)})")


def parse_grid(texts: list[str], option: str = "--grid") -> list[Axis]:
    """`--grid KEY=v1,v2` (or `--tune KEY=v1,v2`: tuning axes) options -> axes; each key must be a
    config option, values as values.parse_list reads them."""
    axes = []
    for text in texts:
        key, raw = parse_assignment(text, option, "KEY=v1,v2", f"{option} optimizer.lr=0.1,0.01")
        check_key(key)
        axes.append(Axis(key, parse_list(raw, f"{option} {key}=", f"{option} {key}=v1,v2"), tune=option == "--tune"))
    return axes


def build_axes(norms, batch_sizes, seeds, grid: list[Axis]) -> list[Axis]:
    """The sweep's axes in id order: norm, batch size, seed, then every --grid key."""
    axes = [Axis("norm.type", tuple(norms)), Axis("batch_size", tuple(batch_sizes)), Axis("seed", tuple(seeds))]
    axes += grid
    keys = [a.key for a in axes]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"{', '.join(dupes)} is swept twice; give it once (--norms/--batch-sizes/--seeds or --grid)")
    return axes


def _id_part(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def point_id(values: dict) -> str:
    """Deterministic directory name from grid values, e.g. `norm=batch_bs=2_seed=0`."""
    return "_".join(f"{SHORT_KEYS.get(k, k)}={_id_part(v)}" for k, v in values.items())


def check_ids(axes: list[Axis]) -> None:
    """Refuse two values of one axis that would give their points one id, so one run directory
    (`a_b` and `a-b` both read `a-b`: ids keep letters, digits, '.', '+' and '-' only)."""
    for axis in axes:
        seen: dict[str, Any] = {}
        for value in axis.values:
            part = _id_part(value)
            if part in seen:
                raise ConfigError(
                    f"{axis.key}: the values {seen[part]!r} and {value!r} would share the point id (and run directory) "
                    f"'{SHORT_KEYS.get(axis.key, axis.key)}={part}'; sweep them in separate sweeps (--name)")
            seen[part] = value


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, scaling: str) -> float:
    """The learning rate for `batch_size`: unchanged, linear or square-root in batch_size / base_batch_size."""
    ratio = batch_size / base_batch_size
    if scaling == "linear":
        return base_lr * ratio
    if scaling == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr


def _point(base: dict, values: dict, lr_scaling: str, threads: int | None) -> Point:
    """Validate one grid point; any problem (bad value, BN at batch 1, groups) marks it invalid."""
    from normbench.train.build import check_buildable

    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    pid = point_id(values)
    try:
        data = apply_overrides(base, overrides)
        unscaled = validate(data, pid)  # the lr before scaling: maybe swept itself
        lr = scaled_lr(unscaled.optimizer.lr, unscaled.batch_size, base["batch_size"], lr_scaling)
        data["optimizer"]["lr"] = lr
        if threads is not None:
            data["num_threads"] = threads
        cfg = validate(data, pid)
        check_buildable(cfg)  # e.g. groups that do not divide a layer's channels
    except NormbenchError as exc:
        reason = exc.message.removeprefix(f"invalid config {pid}: ")
        return Point(pid, values, invalid=reason)
    info = {"lr_scaling": lr_scaling, "unscaled_lr": unscaled.optimizer.lr, "base_batch_size": base["batch_size"]}
    return Point(pid, values, config=cfg, info=info)


def expand(base: Config, axes: list[Axis], lr_scaling: str = "none", threads: int | None = None) -> list[Point]:
    """Every combination of the axes' values applied to `base`, in order; invalid ones carry a reason."""
    if lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"--lr-scaling {lr_scaling}: valid values are {', '.join(LR_SCALINGS)}")
    check_ids(axes)
    base_data = to_dict(base)
    points = []
    for combo in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo)}
        points.append(_point(base_data, values, lr_scaling, threads))
    return points


def spec_digest(base: Config, axes: list[Axis], lr_scaling: str) -> str:
    """A short hash of what defines a sweep (base config, grid, lr scaling): names the default sweep."""
    spec = {"base": to_dict(base), "grid": {a.key: list(a.values) for a in axes}, "lr_scaling": lr_scaling,
            **({"tune": [a.key for a in axes if a.tune]} if any(a.tune for a in axes) else {})}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
