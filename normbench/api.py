"""The results API: every run under some paths as three pandas DataFrames (`normbench report` reads this).

    >>> from normbench.api import load_results
    >>> res = load_results("results/sweeps/sweep_base-1a2b3c")
    >>> res.runs[["norm.type", "batch_size", "seed", "status", "final_test_acc"]]
    >>> res.epochs.merge(res.runs[["run_dir", "norm.type"]], on="run_dir")

`runs` has one row per run: `run_dir` (the key the other two frames join on), `status`, `reason`,
the resolved config flattened to dotted columns (`norm.type`, `optimizer.lr`, lists as text), the
final metrics of meta.json (`final_test_acc`, `best_test_acc`, `samples_seen`, `train_s`, ...),
`env.device` (the device used), `env.device_name`, `env.normbench` (the version that ran it), and a
sweep run's `sweep.*` facts. `epochs` and `steps` are epochs.csv and steps.csv with `run_dir` as the
first column; an empty cell is NaN.
A completed run whose CSVs are missing, truncated or header-only is left out and listed in
`skipped` with the reason; other runs keep whatever rows they wrote.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from normbench import results
from normbench.config import flatten
from normbench.errors import NormbenchError

EPOCH_NEEDS = ("epoch", "samples_seen", "train_acc", "test_acc", "epoch_s")  # what a completed run must have
STEP_NEEDS = ("step", "samples_seen", "train_loss")
FINAL_KEYS = ("final_test_acc", "final_test_loss", "final_train_acc", "final_train_eval_acc", "final_train_loss", "final_val_acc",
              "final_val_loss", "best_test_acc", "epochs_done", "steps_done", "samples_seen", "train_s",
              "mean_samples_per_s")


@dataclass
class Results:
    """Runs, their epoch rows and their step rows; `skipped` lists (run_dir, why) left out."""

    runs: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame
    config_columns: list[str] = field(default_factory=list)  # the columns of `runs` that are config keys
    skipped: list[tuple[str, str]] = field(default_factory=list)


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


def read_csv(path: Path, needs: tuple[str, ...]) -> tuple[pd.DataFrame | None, str]:
    """A run CSV as a frame of numbers (an empty cell is NaN), or (None, why it cannot be used): the
    file is missing, unreadable, lacks a `needs` column, has no rows or a short or non-numeric line."""
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
    for number, line in enumerate(lines, start=2):
        if len(line) != len(header):
            return None, f"{path.name} truncated (line {number} has {len(line)} of {len(header)} fields)"
    frame = pd.DataFrame(lines, columns=header)
    try:
        frame[list(needs)].astype(float)  # a short or non-numeric value in a needed column
    except ValueError:
        return None, f"{path.name} truncated or corrupt"
    return frame.apply(pd.to_numeric, errors="coerce"), ""


def run_row(path: Path) -> tuple[dict | None, list[str], str]:
    """(runs row, its config keys, why unusable) for one run directory, from meta.json and config.yaml."""
    meta = results.read_meta(path)
    if meta is None:
        return None, [], "meta.json missing or unreadable"
    try:
        config = yaml.safe_load((path / results.CONFIG_FILE).read_text(encoding="utf-8"))
        flat = {k: str(v) if isinstance(v, list) else v for k, v in flatten(config).items()}  # text: lists can group
        int(flat["batch_size"]), int(flat["seed"]), flat["norm.type"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None, [], "config.yaml missing or unreadable"
    env = meta.get("environment") or {}
    sweep = {f"sweep.{k}": str(v) if isinstance(v, list) else v for k, v in flatten(meta.get("sweep") or {}).items()}
    row = {"run_dir": str(path), "status": meta.get("status", "unknown"), "reason": meta.get("reason") or "", **flat,
           **{k: meta.get(k) for k in FINAL_KEYS}, "env.device": env.get("device"),
           "env.device_name": env.get("device_name"), "env.normbench": env.get("normbench"), **sweep}
    return row, list(flat), ""


def run_tables(path: Path, row: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """(epochs, steps, why unusable) of one run; a completed run's CSVs must be whole and agree with meta.json."""
    epochs, why = read_csv(path / results.EPOCHS_FILE, EPOCH_NEEDS)
    steps, why_steps = read_csv(path / results.STEPS_FILE, STEP_NEEDS)
    if row["status"] != "completed":
        return epochs, steps, ""
    if epochs is None or steps is None:
        return None, None, why or why_steps
    last = epochs["samples_seen"].iloc[-1]
    if row.get("samples_seen") is not None and last != row["samples_seen"]:
        return None, None, f"{results.EPOCHS_FILE} truncated (ends at {last:.0f} of {row['samples_seen']} samples)"
    return epochs, steps, ""


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """The runs as a frame; an integer column with gaps (a key some runs lack) stays integer (Int64)."""
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        values = [row.get(column) for row in rows]
        given = [v for v in values if v is not None]
        if given and len(given) < len(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in given):
            frame[column] = pd.array(values, dtype="Int64")
    return frame


def load_results(*paths: Path | str) -> Results:
    """Every run at or under `paths` (default: results/); no usable run at all is a NormbenchError."""
    paths = [Path(p) for p in paths] or [Path("results")]
    rows, config_columns, epochs, steps, skipped = [], {}, [], [], []
    for path in find_run_dirs(paths):
        row, keys, why = run_row(path)
        run_epochs, run_steps, why = run_tables(path, row) if row else (None, None, why)
        if why:
            skipped.append((str(path), why))
            continue
        rows.append(row)
        config_columns.update(dict.fromkeys(keys))
        for frame, out in ((run_epochs, epochs), (run_steps, steps)):
            if frame is not None:
                out.append(frame.assign(run_dir=str(path))[["run_dir", *frame.columns]])
    if not rows:
        where = ", ".join(map(str, paths))
        detail = f" ({len(skipped)} unusable: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise NormbenchError(f"no runs found under {where}{detail}; pass a run directory, a sweep directory or a results root")
    empty = pd.DataFrame(columns=["run_dir"])
    return Results(runs_frame(rows), pd.concat(epochs, ignore_index=True) if epochs else empty,
                   pd.concat(steps, ignore_index=True) if steps else empty, list(config_columns), skipped)
