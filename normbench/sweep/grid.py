"""Sweep grids: the product of value lists over config keys, expanded into validated points.

A point is one config of the grid. Its id is built from its grid values only
(`norm=batch_bs=2_seed=0`), so running the same sweep again finds the same run directories.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from normbench.config import Config, apply_overrides, to_dict, validate
from normbench.errors import ConfigError, NormbenchError
from normbench.values import parse_assignment, parse_list

LR_SCALINGS = ("none", "linear", "sqrt")
# Short names for the keys every study sweeps; any other key keeps its dotted path in the id.
SHORT_KEYS = {"norm.type": "norm", "batch_size": "bs", "seed": "seed"}
# The option that sets each built-in axis, as the user typed it (any other key: --grid KEY=...).
AXIS_OPTIONS = {"norm.type": "--norms", "batch_size": "--batch-sizes", "seed": "--seeds"}


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


def axis_option(axis: Axis) -> str:
    """The option that gave an axis its values: `--norms`, `--batch-sizes`, `--seeds`, `--grid KEY=` or `--tune KEY=`."""
    if axis.key in AXIS_OPTIONS and not axis.tune:
        return AXIS_OPTIONS[axis.key]
    return f"{'--tune' if axis.tune else '--grid'} {axis.key}="


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys a list of `--set KEY=VALUE` sets; `norm=group` (the shorthand) sets norm.type."""
    keys = {parse_assignment(text, "--set", "KEY=VALUE", "--set norm.type=group")[0] for text in overrides}
    return {"norm.type" if k == "norm" else "dataset.name" if k == "dataset" else k for k in keys}


def check_overrides(set_keys: set[str], swept_keys: list[str]) -> None:
    """Refuse a key both set with --set and swept by an option given on the command line: one would
    silently lose to the other."""
    both = sorted(set(set_keys) & set(swept_keys))
    if both:
        options = {AXIS_OPTIONS.get(k, f"--grid {k}=...") for k in both}
        raise ConfigError(f"{', '.join(both)} is set with --set and swept with {', '.join(sorted(options))}; "
                          "give it once (one value: --set, several: the sweep option)")


def _field_problem(base: dict, key: str, value: Any) -> str:
    """Why `value` is not a valid value of `key` on its own (whatever the other keys hold), or ''."""
    path = tuple(key.split("."))
    try:
        Config.model_validate(apply_overrides(base, [f"{key}={json.dumps(value)}"]))
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            if loc[: len(path)] == path:  # about this key alone, not a combination (loc () or another key)
                return error["msg"].removeprefix("Value error, ")
    except NormbenchError:  # e.g. a value under a key that is not a section: expand() reports it
        return ""
    return ""


def check_values(base: Config, axes: list[Axis]) -> None:
    """Refuse, before anything runs, a grid value no point could use (an unknown norm, a negative
    batch size, a wrong type); values invalid only together (batch norm at batch size 1) are left
    to expand(), which marks those points invalid."""
    data = to_dict(base)
    for axis in axes:
        for value in axis.values:
            problem = _field_problem(data, axis.key, value)
            if not problem:
                continue
            option = axis_option(axis)
            shown = f"{option}{'' if option.endswith('=') else ' '}{','.join(map(str, axis.values))}"
            if isinstance(value, str):  # the names offered: after "valid ...:" or quoted ('sgd', 'adam')
                names = re.findall(r"'([^']+)'", problem) or re.split(r"[:,]\s*", problem.partition("valid")[2])
                close = difflib.get_close_matches(value, names, n=1)
                problem += f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{shown}: '{value}' is not a valid {axis.key}: {problem}")


def command_axes(base: Config, overrides: list[str], norms, batch_sizes, seeds, extra: list[Axis]) -> tuple[list[Axis], str]:
    """The axes of `normbench sweep` and where its norms come from. An option not given (None)
    defaults to the base config's value; the norms to the one set with `--set norm.type=...`, else
    every registered norm (a norm in the config file does not narrow them: sweeping norms is the point)."""
    from normbench.norms import NORMS

    set_keys = override_keys(overrides)
    given = {"norm.type": norms, "batch_size": batch_sizes, "seed": seeds}
    check_overrides(set_keys, [k for k, v in given.items() if v is not None] + [a.key for a in extra])
    if norms is not None:
        norms_from = "--norms"
    elif "norm.type" in set_keys:
        norms, norms_from = [base.norm.type], "--set norm.type"
    else:
        norms, norms_from = list(NORMS), "every registered norm; --norms to choose"
    axes = build_axes(norms, batch_sizes if batch_sizes is not None else [base.batch_size],
                      seeds if seeds is not None else [base.seed], extra)
    return axes, norms_from


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
    check_values(base, axes)
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
