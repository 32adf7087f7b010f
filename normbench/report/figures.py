"""The report's four batch-size figures, in the report's one style (style.py).

Each function takes one (dataset, model) slice of the run and summary tables and writes one PNG.
A "series" is one norm plus any other varying config keys; its colour is fixed by the norm.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.transforms import blended_transform_factory

from normbench.report.style import (
    LINE_STYLES, PANEL_SIZE, batch_size_axis, colour, finish_axes, new_figure, norm_order, save,
)


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
            style = LINE_STYLES[variants.setdefault(key[1:], len(variants)) % len(LINE_STYLES)]
            rows = groups[key]
            out.append((series_label(rows.iloc[0], extra), colour(norm), style, rows))
    return out


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training loss vs samples seen: a panel per batch size, a line per series (seed mean, min-max band)."""
    done = runs[runs["status"] == "completed"]
    batch_sizes = sorted(done["batch_size"].unique())
    fig, axes = new_figure(max(1, len(batch_sizes)), columns=3, size=PANEL_SIZE)
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
        finish_axes(ax, f"batch size {batch_size} (running mean of {window} log rows)", "training samples seen",
                    "training loss (cross-entropy, nats)")
    fig.suptitle(f"Training loss vs samples seen: {title} (line: seed mean, band: min-max over seeds)")
    return save(fig, path)


def seed_counts(rows: pd.DataFrame) -> str:
    """The series' seeds per point: `3`, or `1-3` when points differ."""
    if rows.empty:
        return "0"
    low, high = int(rows["n_seeds"].min()), int(rows["n_seeds"].max())
    return f"{low}" if low == high else f"{low}-{high}"


def _not_averaged_marks(ax, summary: pd.DataFrame, col: str) -> bool:
    """Red crosses at the top of the axes where runs diverged or failed (never averaged in)."""
    bad = summary[(summary["n_diverged"] + summary["n_failed"] + summary["n_unfinished"]) > 0]
    if bad.empty:
        return False
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for _, row in bad.iterrows():
        ax.plot([row["batch_size"]], [0.96], marker="x", color=col, markersize=9, transform=top, clip_on=False)
    return True


def _batch_size_figure(summary: pd.DataFrame, draw, ylabel: str, path: Path) -> Path:
    """One panel over batch size: `draw(ax)` plots the series and returns the panel's title."""
    fig, (ax,) = new_figure()
    title = draw(ax)
    batch_size_axis(ax, summary["batch_size"].unique())
    finish_axes(ax, title, ylabel=ylabel)
    return save(fig, path)


def test_error(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Test error (%) vs batch size per series, bars: the mean's 95 % Student t interval over seeds
    (summary's test_error_pct_ci95; none with one seed). The GN paper's Figure 1."""

    def draw(ax) -> str:
        marked = False
        for label, col, style, rows in _series(summary, extra):
            ok = rows[rows["n_seeds"] > 0]
            ax.errorbar(ok["batch_size"], ok["test_error_pct_mean"], yerr=ok["test_error_pct_ci95"].fillna(0),
                        color=col, linestyle=style, marker="o", capsize=3, label=f"{label} (n={seed_counts(ok)})")
            marked |= _not_averaged_marks(ax, rows, col)
        note = "; x at top: a run diverged or failed (not averaged)" if marked else ""
        return (f"Test error vs batch size: {title}\n(mean over n seeds, bars: 95 % confidence interval of the mean, "
                f"Student t; none where n = 1{note})")

    return _batch_size_figure(summary, draw, "test error (%) after the training budget", path)


def throughput(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training throughput (samples/s) vs batch size per series, and per device when several appear."""
    devices = sorted(summary["device"].unique())

    def draw(ax) -> str:
        for i, device in enumerate(devices):
            for label, col, style, rows in _series(summary[summary["device"] == device], extra):
                ok = rows[rows["n_seeds"] > 0]
                if len(devices) > 1:
                    label, style = f"{label} on {device}", LINE_STYLES[i % len(LINE_STYLES)]
                ax.plot(ok["batch_size"], ok["samples_per_s_mean"], color=col, linestyle=style, marker="o", label=label)
        ax.set_yscale("log")
        where = devices[0] if len(devices) == 1 else f"{len(devices)} devices"
        return f"Training throughput vs batch size: {title}\n(on {where}; mean over seeds)"

    return _batch_size_figure(summary, draw, "training throughput (samples/s, log scale)", path)


def accuracy_gap(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Train minus test accuracy (percentage points) vs batch size per series."""

    def draw(ax) -> str:
        for label, col, style, rows in _series(summary, extra):
            ok = rows[rows["n_seeds"] > 0]
            ax.plot(ok["batch_size"], ok["gap_pct_mean"], color=col, linestyle=style, marker="o", label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        return (f"Train-vs-test accuracy gap vs batch size: {title}\n(both in eval mode: train acc on a fixed "
                "training subset of up to 5,000 samples, test acc on the test split)")

    return _batch_size_figure(summary, draw, "train acc - test acc (percentage points)", path)
