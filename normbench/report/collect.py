"""Finding and reading run directories for reports: every run under a path, checked, as tables.

A run is a folder with config.yaml and meta.json (from `normbench run` or `normbench sweep`).
Only completed runs enter the means; diverged, failed and unfinished runs are kept with their
status and reason, and a completed run whose CSVs are missing, truncated or header-only is
skipped by name. CSVs are read by column name, so extra columns are fine.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from normbench import results
from normbench.config import flatten
from normbench.errors import NormbenchError

# Config keys that never split a summary row: identity, bookkeeping, or the grid's own axes.
NOT_GROUPING = {"name", "seed", "norm.type", "batch_size", "num_threads", "dataset.name", "dataset.data_dir",
                "model", "log_every", "eval_batch_size", "device"}
EPOCH_NEEDS = ("epoch", "samples_seen", "train_acc", "test_acc", "epoch_s")
STEP_NEEDS = ("step", "samples_seen", "train_loss")


@dataclass
class Collected:
    """What a report is made of: one row per run, loss curves of completed runs, skipped runs."""

    runs: pd.DataFrame  # one row per run found (completed or not)
    curves: pd.DataFrame  # run_dir, samples_seen, train_loss (completed runs)
    extra_keys: list[str]  # config keys that vary between runs, besides norm / batch size / seed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, why)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run directory at or under each path (a run, a sweep, a results root), each once."""
    found: dict[Path, None] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise NormbenchError(f"'{path}' does not exist; pass a run directory, a sweep directory or a results root")
        markers = [path / results.META_FILE, path / results.CONFIG_FILE]
        if any(m.is_file() for m in markers):
            found[path.resolve()] = None
            continue
        for marker in sorted([*path.rglob(results.META_FILE), *path.rglob(results.CONFIG_FILE)]):
            found[marker.parent.resolve()] = None
    return list(found)


def read_rows(path: Path, needs: tuple[str, ...]) -> tuple[list[dict] | None, str]:
    """A run CSV as rows of floats for the `needs` columns, or (None, why it cannot be used)."""
    if not path.is_file():
        return None, f"{path.name} missing"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return None, f"{path.name} unreadable ({exc})"
    if not header:
        return None, f"{path.name} is empty"
    missing = [c for c in needs if c not in header]
    if missing:
        return None, f"{path.name} lacks column(s) {', '.join(missing)}"
    if not lines:
        return None, f"{path.name} has a header but no rows"
    out = []
    for number, line in enumerate(lines, start=2):
        if len(line) != len(header):
            return None, f"{path.name} truncated (line {number} has {len(line)} of {len(header)} fields)"
        row = dict(zip(header, line))
        try:
            out.append({c: float(row[c]) for c in needs})
        except ValueError:
            return None, f"{path.name} truncated or corrupt (line {number})"
    return out, ""


def _flatten(data: dict) -> dict:
    """The config as {dotted key: value}, lists as text (so they can group rows)."""
    return {k: str(v) if isinstance(v, list) else v for k, v in flatten(data).items()}


def _load_run(path: Path) -> tuple[dict | None, list[dict], str]:
    """(run row, loss curve rows, why skipped) for one run directory."""
    meta = results.read_meta(path)
    if meta is None:
        return None, [], "meta.json missing or unreadable"
    try:
        config = yaml.safe_load((path / results.CONFIG_FILE).read_text(encoding="utf-8"))
        flat = _flatten(config)
        norm, batch_size, seed = flat["norm.type"], int(flat["batch_size"]), int(flat["seed"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None, [], "config.yaml missing or unreadable"
    if flat.get("dataset.name") != "synthetic":  # the synthetic-only keys mean nothing for real data
        flat = {k: v for k, v in flat.items() if not k.startswith("dataset.") or k == "dataset.name"}
    sweep = meta.get("sweep") or {}
    tuning = sweep.get("tuning") or {}
    if tuning and not tuning.get("selected"):
        return None, [], f"not the selected setting of a tuned sweep (kept by {tuning.get('by', 'val_acc')})"
    tuned = {key: flat.pop(key, None) for key in tuning.get("keys", [])}  # each point at its own best value
    if "unscaled_lr" in sweep and "optimizer.lr" not in tuned:  # group a sweep's points by the lr it was given, not the scaled one
        flat["optimizer.lr"] = sweep["unscaled_lr"]
    flat["lr_scaling"] = sweep.get("lr_scaling", "none")
    env = meta.get("environment") or {}
    row = {
        "run_dir": str(path), "status": meta.get("status", "unknown"), "reason": meta.get("reason") or "",
        "dataset": flat.get("dataset.name", "?"), "model": flat.get("model", "?"), "norm": norm,
        "batch_size": batch_size, "seed": seed, "device": env.get("device_name") or env.get("device") or "?",
        "config": flat, "tuned": ", ".join(f"{k}={v}" for k, v in tuned.items()),
    }
    if row["status"] != "completed":
        return row, [], ""
    epochs, why = read_rows(path / results.EPOCHS_FILE, EPOCH_NEEDS)
    if epochs is None:
        return None, [], why
    steps, why = read_rows(path / results.STEPS_FILE, STEP_NEEDS)
    if steps is None:
        return None, [], why
    last = epochs[-1]
    if meta.get("samples_seen") is not None and last["samples_seen"] != meta["samples_seen"]:
        return None, [], f"{results.EPOCHS_FILE} truncated (ends at {last['samples_seen']:.0f} of {meta['samples_seen']} samples)"
    train_s = sum(r["epoch_s"] for r in epochs)
    row.update(
        test_acc=last["test_acc"], train_acc=last["train_acc"], samples_seen=last["samples_seen"],
        samples_per_s=last["samples_seen"] / train_s if train_s > 0 else math.nan,
    )
    curve = [{"run_dir": str(path), "samples_seen": s["samples_seen"], "train_loss": s["train_loss"]} for s in steps]
    return row, curve, ""


def collect(paths: list[Path]) -> Collected:
    """Read every run under `paths`; no usable run at all is a NormbenchError."""
    dirs = find_run_dirs(paths)
    rows, curves, skipped = [], [], []
    for path in dirs:
        row, curve, why = _load_run(path)
        if row is None:
            skipped.append((str(path), why))
            continue
        rows.append(row)
        curves.extend(curve)
    if not rows:
        where = ", ".join(map(str, paths))
        detail = f" ({len(skipped)} unusable: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise NormbenchError(f"no runs found under {where}{detail}; pass a run directory, a sweep directory or a results root")
    configs = [r.pop("config") for r in rows]
    keys = sorted({k for c in configs for k in c} - NOT_GROUPING)
    extra = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    for row, config in zip(rows, configs):
        row.update({k: "null" if config.get(k) is None else str(config.get(k)) for k in extra})  # text: groups keep null
    runs = pd.DataFrame(rows)
    for column in ("test_acc", "train_acc", "samples_seen", "samples_per_s"):
        if column not in runs:
            runs[column] = math.nan
    runs = runs.sort_values(["dataset", "model", "norm", "batch_size", "seed", "run_dir"]).reset_index(drop=True)
    curve_frame = pd.DataFrame(curves, columns=["run_dir", "samples_seen", "train_loss"])
    return Collected(runs, curve_frame, extra, skipped)
