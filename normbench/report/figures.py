"""The report's four figures, drawn with matplotlib's object API (no pyplot state, no display).

Each function takes one (dataset, model) slice of the run and summary tables and writes one PNG.
A "series" is one norm plus any other varying config keys; its colour is fixed by the norm.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from normbench.norms import NORMS

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
STYLES = ("-", "--", ":", "-.")


def norm_order(names) -> list[str]:
    """Norm names in registry order, unknown ones after, alphabetically."""
    known = [n for n in NORMS if n in set(names)]
    return known + sorted(set(names) - set(known))


def colour(norm: str) -> str:
    """A fixed colour per norm, the same in every figure."""
    order = list(NORMS) + [norm]
    return PALETTE[order.index(norm) % len(PALETTE)]


def series_label(row, extra: list[str]) -> str:
    """`group` or `group, optimizer.lr=0.01` for a run or summary row."""
    parts = [f"{k}={row[k]}" for k in extra]
    return ", ".join([row["norm"], *parts])


def _series(frame: pd.DataFrame, extra: list[str]) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(label, colour, line style, rows) per series, norms in registry order."""
    out = []
    keys = ["norm", *extra]
    variants: dict[tuple, int] = {}
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in frame.groupby(keys, sort=False, dropna=False)}
    for norm in norm_order(frame["norm"].unique()):
        for key in sorted(k for k in groups if k[0] == norm):
            style = STYLES[variants.setdefault(key[1:], len(variants)) % len(STYLES)]
            rows = groups[key]
            out.append((series_label(rows.iloc[0], extra), colour(norm), style, rows))
    return out


def _batch_axis(ax, batch_sizes) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(batch_sizes))
    ax.set_xticklabels([str(b) for b in sorted(batch_sizes)])
    ax.minorticks_off()
    ax.set_xlabel("batch size (samples per step, log2 scale)")
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training loss vs samples seen: a panel per batch size, a line per series (seed mean, min-max band)."""
    done = runs[runs["status"] == "completed"]
    batch_sizes = sorted(done["batch_size"].unique())
    ncols = min(3, max(1, len(batch_sizes)))
    nrows = math.ceil(len(batch_sizes) / ncols) or 1
    fig = Figure(figsize=(5.2 * ncols, 3.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, batch_size in zip(axes, batch_sizes):
        window = 1
        for label, col, style, rows in _series(done[done["batch_size"] == batch_size], extra):
            per_run = curves[curves["run_dir"].isin(rows["run_dir"])]
            table = per_run.pivot_table(index="samples_seen", columns="run_dir", values="train_loss")
            table = table.interpolate(method="index", limit_area="inside")
            window = max(1, len(table) // 40)  # about 40 independent points per curve
            smooth = table.rolling(window, min_periods=1).mean()
            x = smooth.index.to_numpy()
            ax.plot(x, smooth.mean(axis=1), color=col, linestyle=style, label=f"{label} (n={table.shape[1]})")
            if table.shape[1] > 1:
                ax.fill_between(x, smooth.min(axis=1), smooth.max(axis=1), color=col, alpha=0.18, linewidth=0)
        ax.set_title(f"batch size {batch_size} (running mean of {window} log rows)", fontsize=10)
        ax.set_xlabel("training samples seen")
        ax.set_ylabel("training loss (cross-entropy, nats)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(batch_sizes):]:
        ax.set_visible(False)
    fig.suptitle(f"Training loss vs samples seen: {title} (line: seed mean, band: min-max over seeds)")
    return _save(fig, path)


def _not_averaged_marks(ax, summary: pd.DataFrame, col: str) -> bool:
    """Red crosses at the top of the axes where runs diverged or failed (never averaged in)."""
    bad = summary[(summary["n_diverged"] + summary["n_failed"] + summary["n_unfinished"]) > 0]
    if bad.empty:
        return False
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for _, row in bad.iterrows():
        ax.plot([row["batch_size"]], [0.96], marker="x", color=col, markersize=9, transform=top, clip_on=False)
    return True


def test_error(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Test error (%) vs batch size per series, with seed std error bars (the GN paper's Figure 1)."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    marked = False
    for label, col, style, rows in _series(summary, extra):
        ok = rows[rows["n_seeds"] > 0]
        ax.errorbar(ok["batch_size"], ok["test_error_pct_mean"], yerr=ok["test_error_pct_std"].fillna(0), color=col,
                    linestyle=style, marker="o", capsize=3, label=label)
        marked |= _not_averaged_marks(ax, rows, col)
    _batch_axis(ax, summary["batch_size"].unique())
    ax.set_ylabel("test error (%) after the training budget")
    note = "; x at top: a run diverged or failed (not averaged)" if marked else ""
    ax.set_title(f"Test error vs batch size: {title}\n(mean over seeds, bars: std over seeds{note})", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training throughput (samples/s) vs batch size per series, and per device when several appear."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    devices = sorted(summary["device"].unique())
    for i, device in enumerate(devices):
        for label, col, style, rows in _series(summary[summary["device"] == device], extra):
            ok = rows[rows["n_seeds"] > 0]
            name = f"{label} on {device}" if len(devices) > 1 else label
            ax.plot(ok["batch_size"], ok["samples_per_s_mean"], color=col, linestyle=STYLES[i % len(STYLES)] if len(devices) > 1 else style,
                    marker="o", label=name)
    _batch_axis(ax, summary["batch_size"].unique())
    ax.set_yscale("log")
    ax.set_ylabel("training throughput (samples/s, log scale)")
    where = devices[0] if len(devices) == 1 else f"{len(devices)} devices"
    ax.set_title(f"Training throughput vs batch size: {title}\n(on {where}; mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_gap(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Train minus test accuracy (percentage points) vs batch size per series."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    for label, col, style, rows in _series(summary, extra):
        ok = rows[rows["n_seeds"] > 0]
        ax.plot(ok["batch_size"], ok["gap_pct_mean"], color=col, linestyle=style, marker="o", label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    _batch_axis(ax, summary["batch_size"].unique())
    ax.set_ylabel("train acc - test acc (percentage points)")
    ax.set_title(f"Train-vs-test accuracy gap vs batch size: {title}\n(train acc over the last epoch's batches "
                 "in train mode; test acc in eval mode)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
