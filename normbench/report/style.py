"""The one look of every report figure: matplotlib's object API (no pyplot state, no display),
a fixed colour per norm, the same sizes, fonts, grid and PNG resolution.

figures.py (the batch-size study), extras.py (benchmarks) and probe_plots.py (activation probes)
draw only through `new_figure`, the axis helpers and `save`.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from normbench.norms import NORMS

# One colour per registered norm (16 since the norm zoo), so no two norms of a figure share one.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#e7ba52", "#637939", "#ad494a", "#000000", "#6b6ecf", "#31a354", "#843c39")
# One marker per registered norm, cycled with the palette's order, so a norm is told apart in greyscale too.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p", "d", "8", "H", "1", "2", "3")
LINE_STYLES = ("-", "--", ":", "-.")
DPI = 110
PANEL_SIZE = (5.2, 3.9)  # inches per panel of a grid of panels
WIDE_SIZE = (7.5, 5)  # inches of a one-panel figure
GRID_ALPHA = 0.3
LEGEND_FONT = 8
TITLE_FONT = 10


def norm_order(names) -> list[str]:
    """Norm names in registry order, unknown ones after, alphabetically."""
    known = [n for n in NORMS if n in set(names)]
    return known + sorted(set(names) - set(known))


def colour(norm: str) -> str:
    """A fixed colour per norm, the same in every figure."""
    order = list(NORMS) + [norm]
    return PALETTE[order.index(norm) % len(PALETTE)]


def marker(norm: str) -> str:
    """A fixed marker per norm, the same in every figure (registry order, like `colour`)."""
    order = list(NORMS) + [norm]
    return MARKERS[order.index(norm) % len(MARKERS)]


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers (60, 100, 400) on a log axis instead of 6x10^1 and 10^2, minor ticks labelled too
    when the axis spans less than a decade and a half."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    which = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 10 else f"{value:g}")
    which.set_major_formatter(plain)
    if high / max(low, 1e-12) < 30:  # few decades: label 2, 3 and 5 times each power of ten as well
        which.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
        which.set_minor_formatter(plain)


def figure_legend(fig: Figure, axes: list) -> None:
    """One legend for the whole figure, below the panels (outside the data, clear of the title); labels once each."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 4),
                   fontsize=LEGEND_FONT)


def new_figure(panels: int = 1, columns: int | None = None, size: tuple[float, float] | None = None,
               **subplot_options) -> tuple[Figure, list]:
    """A figure of `panels` axes in rows of `columns` (default: all in one row), each `size` inches
    (PANEL_SIZE; WIDE_SIZE for one panel); the figure and its axes, extra ones hidden."""
    columns = max(1, min(columns or panels, panels))
    rows = -(-panels // columns) or 1
    width, height = size or (WIDE_SIZE if panels == 1 else PANEL_SIZE)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False, **subplot_options).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def batch_size_axis(ax, batch_sizes, label: str = "batch size (samples per step, log2 scale)") -> None:
    """A log2 x axis with one tick per batch size."""
    ticks = sorted(batch_sizes)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(b) for b in ticks])
    ax.minorticks_off()
    ax.set_xlabel(label)


def finish_axes(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                legend: bool = True) -> None:
    """Labels, a title in TITLE_FONT, the grid and a legend in LEGEND_FONT right of the axes, outside
    the data (where lines are labelled)."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, fontsize=TITLE_FONT)
    ax.grid(True, alpha=GRID_ALPHA)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG at DPI (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path
