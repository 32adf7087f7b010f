"""The report's four batch-size figures, in the report's one style (style.py).

Each function takes one (dataset, model) slice of the run and summary tables and writes one PNG.
A "series" is one norm plus any other varying config keys; its colour is fixed by the norm.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.transforms import blended_transform_factory

from normbench.report.style import (
    LINE_STYLES, PANEL_SIZE, batch_size_axis, colour, figure_legend, finish_axes, marker, new_figure, norm_order,
    plain_log_ticks, save,
)


def series_label(row, extra: list[str]) -> str:
    """`group` or `group, optimizer.lr=0.01` for a run or summary row."""
    parts = [f"{k}={row[k]}" for k in extra]
    return ", ".join([row["norm"], *parts])


def _series(frame: pd.DataFrame, extra: list[str]) -> list[tuple[str, dict, pd.DataFrame]]:
    """(label, line options, rows) per series, norms in registry order; colour and marker are the norm's."""
    out = []
    keys = ["norm", *extra]
    variants: dict[tuple, int] = {}
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in frame.groupby(keys, sort=False, dropna=False)}
    for norm in norm_order(frame["norm"].unique()):
        for key in sorted(k for k in groups if k[0] == norm):
            style = LINE_STYLES[variants.setdefault(key[1:], len(variants)) % len(LINE_STYLES)]
            rows = groups[key]
            out.append((series_label(rows.iloc[0], extra), {"color": colour(norm), "marker": marker(norm), "linestyle": style},
                        rows))
    return out


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training loss vs samples seen: a panel per batch size on one shared y axis, a line per series
    (seed mean, min-max band), one legend below the panels."""
    done = runs[runs["status"] == "completed"]
    batch_sizes = sorted(done["batch_size"].unique())
    fig, axes = new_figure(max(1, len(batch_sizes)), columns=3, size=PANEL_SIZE if len(batch_sizes) > 1 else None,
                           sharey=True)
    windows = set()
    for ax, batch_size in zip(axes, batch_sizes):
        for label, line, rows in _series(done[done["batch_size"] == batch_size], extra):
            per_run = curves[curves["run_dir"].isin(rows["run_dir"])]
            table = per_run.pivot_table(index="samples_seen", columns="run_dir", values="train_loss")
            table = table.interpolate(method="index", limit_area="inside")
            windows.add(max(1, len(table) // 40))  # about 40 independent points per curve
            smooth = table.rolling(max(windows), min_periods=1).mean()
            x = smooth.index.to_numpy()
            ax.plot(x, smooth.mean(axis=1), label=label, markevery=max(1, len(x) // 8), markersize=5, **line)
            if table.shape[1] > 1:
                ax.fill_between(x, smooth.min(axis=1), smooth.max(axis=1), color=line["color"], alpha=0.18, linewidth=0)
        finish_axes(ax, f"batch size {batch_size}", "training samples seen",
                    "training loss (cross-entropy, nats)" if ax is axes[0] else None, legend=False)
    figure_legend(fig, axes)
    smoothing = f"; running mean of {max(windows)} logged rows" if windows and max(windows) > 1 else ""
    lines = "line: seed mean, band: min-max over seeds" if done["seed"].nunique() > 1 else "one seed"
    fig.suptitle(f"Training loss vs samples seen: {title}\n({lines}{smoothing})", fontsize=11)
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
    if ax.get_yscale() == "log":
        plain_log_ticks(ax)
    finish_axes(ax, title, ylabel=ylabel)
    return save(fig, path)


def test_error(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Test error (%) vs batch size per series, bars: the mean's 95 % Student t interval over seeds
    (summary's test_error_pct_ci95; none with one seed). The GN paper's Figure 1."""

    def draw(ax) -> str:
        marked = False
        counts = {seed_counts(rows[rows["n_seeds"] > 0]) for _, _, rows in _series(summary, extra)}
        for label, line, rows in _series(summary, extra):
            ok = rows[rows["n_seeds"] > 0]
            label = label if len(counts) == 1 else f"{label} (n={seed_counts(ok)})"  # n said once when all agree
            ax.errorbar(ok["batch_size"], ok["test_error_pct_mean"], yerr=ok["test_error_pct_ci95"].fillna(0),
                        capsize=3, label=label, **line)
            marked |= _not_averaged_marks(ax, rows, line["color"])
        note = "; x at top: a run diverged or failed (not averaged)" if marked else ""
        bars = "none: one seed" if counts == {"1"} else "95 % confidence interval of the mean, Student t"
        return f"Test error vs batch size: {title}\n(mean over seeds, bars: {bars}{note})"

    return _batch_size_figure(summary, draw, "test error (%) after the training budget", path)


def test_error_by_norm(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Test error (%) per series at the one batch size of the runs, bars: the mean's 95 % Student t
    interval over seeds (what test_error draws when there are several batch sizes)."""
    fig, (ax,) = new_figure()
    series = _series(summary[summary["n_seeds"] > 0], extra)
    for x, (label, line, rows) in enumerate(series):
        ax.errorbar([x], rows["test_error_pct_mean"], yerr=rows["test_error_pct_ci95"].fillna(0), capsize=4,
                    markersize=8, label=label, **{**line, "linestyle": "none"})
    ax.set_xticks(range(len(series)), [label for label, _, _ in series], rotation=30 if len(series) > 6 else 0)
    ax.set_xlim(-0.6, len(series) - 0.4)
    batch_size = summary["batch_size"].iloc[0]
    one_seed = set(summary["n_seeds"]) == {1}
    bars = "none: one seed" if one_seed else "95 % confidence interval of the mean, Student t"
    finish_axes(ax, f"Test error by norm: {title}, batch size {batch_size}\n(mean over seeds, bars: {bars})",
                ylabel="test error (%) after the training budget", legend=False)
    return save(fig, path)


def throughput(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Training throughput (samples/s) vs batch size per series, and per device when several appear."""
    devices = sorted(summary["device"].unique())

    def draw(ax) -> str:
        for i, device in enumerate(devices):
            for label, line, rows in _series(summary[summary["device"] == device], extra):
                ok = rows[rows["n_seeds"] > 0]
                if len(devices) > 1:
                    label, line = f"{label} on {device}", {**line, "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
                ax.plot(ok["batch_size"], ok["samples_per_s_mean"], label=label, **line)
        ax.set_yscale("log")
        where = devices[0] if len(devices) == 1 else f"{len(devices)} devices"
        return f"Training throughput vs batch size: {title}\n(on {where}; mean over seeds)"

    return _batch_size_figure(summary, draw, "training throughput (samples/s, log scale)", path)


def accuracy_gap(summary: pd.DataFrame, extra: list[str], title: str, path: Path) -> Path:
    """Train minus test accuracy (percentage points) vs batch size per series."""

    def draw(ax) -> str:
        for label, line, rows in _series(summary, extra):
            ok = rows[rows["n_seeds"] > 0]
            ax.plot(ok["batch_size"], ok["gap_pct_mean"], label=label, **line)
        ax.axhline(0, color="black", linewidth=0.8)
        return (f"Train-vs-test accuracy gap vs batch size: {title}\n(both in eval mode: train acc on a fixed "
                "training subset of up to 5,000 samples, test acc on the test split)")

    return _batch_size_figure(summary, draw, "train acc - test acc (percentage points)", path)
