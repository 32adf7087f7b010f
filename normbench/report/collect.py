"""The report's view of the results API (normbench/api.py): one row per run with the columns a
summary groups by, and the loss curves of completed runs.

Only completed runs enter the means; diverged, failed and unfinished runs are kept with their
status and reason. Runs the API could not use (a completed run with a missing, truncated or
header-only CSV), and the unselected settings of a tuned sweep, are skipped by name. A sweep
directory's own sweep.yaml and index.csv say which of its points have not run at all yet
(`Collected.not_started`).
"""

from __future__ import annotations

import ast
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from normbench.api import load_results
from normbench.errors import NormbenchError
from normbench.results import INDEX_FILE, SWEEP_FILE

# Config keys that never split a summary row: identity, bookkeeping, or the grid's own axes.
NOT_GROUPING = {"name", "seed", "norm.type", "batch_size", "num_threads", "dataset.name", "dataset.data_dir",
                "model", "log_every", "eval_batch_size", "device", "tensorboard", "checkpoint_every"}


@dataclass
class Collected:
    """What a report is made of: one row per run, loss curves of completed runs, skipped runs."""

    runs: pd.DataFrame  # one row per run found (completed or not)
    curves: pd.DataFrame  # run_dir, samples_seen, train_loss (completed runs)
    extra_keys: list[str]  # config keys that vary between runs, besides norm / batch size / seed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run dir, why)
    # sweep points with no run here at all (not started, or a tuned point with no chosen setting yet):
    # {"norm": ..., "batch_size": ..., other grid keys: text}
    not_started: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class SweepSpec:
    """What the report needs from a sweep directory: its grid keys and its tuning keys."""

    path: Path
    grid_keys: tuple[str, ...]
    tune_keys: tuple[str, ...]


def sweep_spec(run_dir: str, cache: dict) -> SweepSpec | None:
    """The sweep directory holding `run_dir` (<sweep>/runs/<point>), from its sweep.yaml; None outside a sweep."""
    path = Path(run_dir).parent.parent
    if path not in cache:
        try:
            spec = yaml.safe_load((path / SWEEP_FILE).read_text(encoding="utf-8"))
            cache[path] = SweepSpec(path, tuple(spec.get("grid") or {}), tuple(spec.get("tune") or ()))
        except (OSError, yaml.YAMLError, AttributeError):
            cache[path] = None
    return cache[path]


def _report_row(run: dict, config_columns: list[str], epochs: pd.DataFrame | None,
                tune_keys: tuple[str, ...] = ()) -> tuple[dict | None, dict, str]:
    """(report row, its grouping config, why left out) for one row of the API's `runs`; `tune_keys`:
    the tuning keys of the tuned sweep the run belongs to (empty otherwise)."""
    flat = {k: None if _missing(run.get(k)) else run[k] for k in config_columns if k in run}
    if flat.get("dataset.name") != "synthetic":  # the synthetic-only keys mean nothing for real data
        flat = {k: v for k, v in flat.items() if not k.startswith("dataset.") or k == "dataset.name"}
    tuning = {k: v for k, v in run.items() if k.startswith("sweep.tuning.") and not _missing(v)}
    if tuning and not tuning.get("sweep.tuning.selected"):
        return None, {}, f"not the selected setting of a tuned sweep (kept by {run.get('sweep.tuning.by') or 'val_acc'})"
    if tune_keys and not tuning and run["status"] == "completed":  # finished after the sweep last chose
        return None, {}, "a tuned sweep's run whose setting is not chosen yet (the sweep did not finish)"
    tuned_keys = tune_keys if _missing(run.get("sweep.tuning.keys")) else ast.literal_eval(run["sweep.tuning.keys"])
    tuned = {key: flat.pop(key, None) for key in tuned_keys}  # each point at its own best value
    if not _missing(run.get("sweep.unscaled_lr")) and "optimizer.lr" not in tuned:  # group by the lr it was given
        flat["optimizer.lr"] = run["sweep.unscaled_lr"]
    flat["lr_scaling"] = "none" if _missing(run.get("sweep.lr_scaling")) else run["sweep.lr_scaling"]
    row = {
        "run_dir": run["run_dir"], "status": run["status"], "reason": run["reason"],
        "dataset": flat.get("dataset.name", "?"), "model": flat.get("model", "?"), "norm": flat["norm.type"],
        "batch_size": int(flat["batch_size"]), "seed": int(flat["seed"]),
        "device": run.get("env.device_name") or run.get("env.device") or "?",
        "version": "?" if _missing(run.get("env.normbench")) else run["env.normbench"],
        # a tuned sweep's run that did not complete counts with its point but shows no setting
        "tuned": ", ".join(f"{k}={v}" for k, v in tuned.items()) if tuning else "",
    }
    if row["status"] == "completed":
        last, train_s = epochs.iloc[-1], epochs["epoch_s"].sum()
        train_eval = run.get("final_train_eval_acc")  # eval mode, fixed training subset (normbench/train/evaluate.py)
        row.update(test_acc=last["test_acc"], train_acc=last["train_acc"], samples_seen=last["samples_seen"],
                   train_eval_acc=math.nan if _missing(train_eval) else float(train_eval),
                   samples_per_s=last["samples_seen"] / train_s if train_s > 0 else math.nan)
    return row, flat, ""


def _missing(value) -> bool:
    """True for an empty cell: None, NaN or pandas' NA."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def collect(paths: list[Path]) -> Collected:
    """Every run under `paths`, read with normbench.api.load_results; no usable run at all is a NormbenchError."""
    found = load_results(*paths)
    epochs_by_run = dict(tuple(found.epochs.groupby("run_dir"))) if len(found.epochs) else {}
    rows, configs, skipped = [], [], list(found.skipped)
    sweeps: dict[Path, SweepSpec | None] = {}
    for run in found.runs.to_dict("records"):
        spec = sweep_spec(run["run_dir"], sweeps) if not _missing(run.get("sweep.name")) else None
        row, flat, why = _report_row(run, found.config_columns, epochs_by_run.get(run["run_dir"]),
                                     spec.tune_keys if spec else ())
        if row is None:
            skipped.append((run["run_dir"], why))
            continue
        rows.append(row)
        configs.append(flat)
    if not rows:
        where = ", ".join(map(str, paths))
        raise NormbenchError(f"no runs found under {where} ({len(skipped)} unusable: {skipped[0][0]}: {skipped[0][1]}); "
                             "pass a run directory, a sweep directory or a results root")
    keys = sorted({k for c in configs for k in c} - NOT_GROUPING)
    extra = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    for row, config in zip(rows, configs):
        row.update({k: "null" if config.get(k) is None else str(config.get(k)) for k in extra})  # text: groups keep null
    runs = pd.DataFrame(rows)
    for column in ("test_acc", "train_acc", "train_eval_acc", "samples_seen", "samples_per_s"):
        if column not in runs:
            runs[column] = math.nan
    runs = runs.sort_values(["dataset", "model", "norm", "batch_size", "seed", "run_dir"]).reset_index(drop=True)
    done = set(runs.loc[runs["status"] == "completed", "run_dir"])
    steps = found.steps
    curves = steps.loc[steps["run_dir"].isin(done), ["run_dir", "samples_seen", "train_loss"]].reset_index(drop=True) \
        if len(steps) else pd.DataFrame(columns=["run_dir", "samples_seen", "train_loss"])
    not_started = [point for spec in sweeps.values() if spec for point in points_without_runs(spec, set(runs["run_dir"]))]
    return Collected(runs, curves, extra, skipped, not_started)


def points_without_runs(spec: SweepSpec, reported: set[str]) -> list[dict]:
    """The points of a sweep (grid values except seed and tuning keys) none of whose runs is among
    the `reported` run directories: not started, or tuned with no chosen setting yet. Points every
    run of which is invalid are not missing: they can never run."""
    try:
        with open(spec.path / INDEX_FILE, newline="", encoding="utf-8") as f:
            index = list(csv.DictReader(f))
    except OSError:
        return []
    keys = [k for k in spec.grid_keys if k != "seed" and k not in spec.tune_keys]
    points: dict[tuple, list[dict]] = {}
    for row in index:
        points.setdefault(tuple(row.get(k, "") for k in keys), []).append(row)
    missing = []
    for values, members in points.items():
        if all(m.get("status") == "invalid" for m in members):
            continue
        if not any(m.get("run_dir") and str((spec.path / m["run_dir"]).resolve()) in reported for m in members):
            missing.append({"norm" if k == "norm.type" else k: v for k, v in zip(keys, values)})
    return missing
