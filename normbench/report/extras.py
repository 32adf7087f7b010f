"""Report sections beyond the batch-size study: activation probes (probe.csv) and benchmarks
(`normbench bench` CSVs). Each returns the files it drew and the Markdown lines that show them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from normbench.bench.vs_plain import BENCH_COLUMNS
from normbench.report.probe_plots import plot_accuracy_vs_steps, plot_probe
from normbench.report.style import batch_size_axis, colour, finish_axes, new_figure, save
from normbench.train.probe import PROBE_FILE


def probed_runs(run_dirs) -> list[Path]:
    """Run directories whose probe.csv has at least one row."""
    found = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / PROBE_FILE
        try:
            if path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) > 1:
                found.append(run_dir)
        except OSError:
            continue
    return found


def probe_section(run_dirs, out: Path) -> tuple[list[Path], list[str]]:
    """Percentile bands and test accuracy vs steps of every probed run (the BN paper's Figure 1)."""
    probed = probed_runs(run_dirs)
    if not probed:
        return [], []
    files = [
        plot_accuracy_vs_steps(probed, out / "probe_test_accuracy_vs_steps.png"),
        plot_probe(probed, out / "probe_percentiles.png"),
    ]
    md = ["## Activation probe", "",
          f"{len(probed)} run(s) recorded `probe.csv`: the 15th/50th/85th percentiles of a layer's input "
          "during training (the BN paper's Figure 1(b, c)) and, where asked, test accuracy at the probe steps.", "",
          f"![Test accuracy vs steps]({files[0].name})", "", f"![Input percentiles]({files[1].name})", ""]
    return files, md


def find_bench_csvs(paths) -> list[Path]:
    """`normbench bench` CSVs at or under the given paths (results/bench/*.csv)."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        candidates = [path] if path.is_file() else sorted(path.rglob("bench/*.csv")) if path.is_dir() else []
        for csv_path in candidates:
            try:
                with open(csv_path, encoding="utf-8") as f:
                    header = f.readline().rstrip("\r\n")
            except OSError:
                continue
            if tuple(header.split(",")) == BENCH_COLUMNS:
                found[csv_path.resolve()] = None
    return list(found)


def bench_figure(bench: pd.DataFrame, path: Path) -> Path:
    """Samples/s of both paths vs batch size, ratios written at normbench's points; a panel per
    (dataset, model, precision, device)."""
    panels = list(bench.groupby(["dataset", "model", "precision", "device"], sort=True))
    fig, axes = new_figure(len(panels), size=(5.5, 4))
    for ax, ((dataset, model, precision, device), part) in zip(axes, panels):
        for norm, rows in part.groupby("norm"):
            rows = rows.sort_values("batch_size")
            ax.plot(rows["batch_size"], rows["normbench_samples_per_s"], marker="o", color=colour(norm),
                    label=f"normbench, {norm}")
            ax.plot(rows["batch_size"], rows["plain_samples_per_s"], marker="s", linestyle="--", color=colour(norm),
                    label=f"plain loop, {norm}")
            for x, y, ratio in zip(rows["batch_size"], rows["normbench_samples_per_s"], rows["ratio"]):
                ax.annotate(f"{ratio:.2f}x", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        batch_size_axis(ax, part["batch_size"].unique(), "batch size")
        finish_axes(ax, f"normbench vs plain PyTorch loop\n{dataset} / {model}, {precision}, {device}",
                    ylabel="training throughput (samples/s)")
    return save(fig, path)


def bench_section(csv_paths: list[Path], out: Path) -> tuple[list[Path], list[str]]:
    """Samples/s of normbench vs the plain loop by batch size, one panel per (dataset, model, precision, device)."""
    frames = [pd.read_csv(p) for p in csv_paths]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return [], []
    bench = pd.concat(frames, ignore_index=True)
    # The newest measurement of each point wins (bench CSVs accumulate over time).
    keys = ["device", "precision", "dataset", "model", "norm", "batch_size"]
    bench = bench.sort_values("timestamp").drop_duplicates(keys, keep="last")
    png = bench_figure(bench, out / "bench_throughput.png")
    table = bench[["dataset", "device", "precision", "norm", "batch_size", "normbench_samples_per_s", "plain_samples_per_s", "ratio"]]
    md = ["## Benchmark: normbench vs the plain PyTorch loop", "",
          f"From {len(csv_paths)} `normbench bench` CSV(s); medians of alternating repeats (newest run of each point).", "",
          f"![Throughput]({png.name})", "",
          "| dataset | device | precision | norm | batch size | normbench samples/s | plain samples/s | ratio |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r.dataset} | {r.device} | {r.precision} | {r.norm} | {r.batch_size} | {r.normbench_samples_per_s:,.0f} | "
           f"{r.plain_samples_per_s:,.0f} | {r.ratio:.2f}x |" for r in table.itertuples()]
    return [png], [*md, ""]
