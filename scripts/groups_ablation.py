"""Group norm's number of groups G: test error of the cnn on Fashion-MNIST for G = 1, 2, 4, 8, 16, 32
(the same G in every norm layer) and for normbench's default rule (the largest divisor G <= 32 of
each layer's channels C with at least 4 channels per group on feature maps and 16 features per
group on feature vectors: 8, 16 and 8 groups in the cnn's 32- and 64-channel conv layers and its
128-feature fc layer), at batch sizes 2 and 64, seeds 0, 1, 2, 12,000 training samples per run.

    .venv/bin/python scripts/groups_ablation.py [--results-dir results] [--data-dir DIR] [--no-run]

Runs two normbench sweeps on the shipped sweep base (configs/sweep_base.yaml; resumable: a
second call trains only what is missing), then prints a Markdown table (mean test error and the
half-width of its 95 % Student t interval over seeds) and writes it as CSV beside the sweep, and
draws docs/repro/gn_groups_ablation.png (error bars: the same intervals).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from normbench import load_results
from normbench.report import stats

GROUPS = (1, 2, 4, 8, 16, 32)
BATCH_SIZES = (2, 64)
SEEDS = (0, 1, 2)
BUDGET = 12000  # training samples per run, at every batch size
ABLATION, DEFAULT = "gn_groups_ablation", "gn_groups_ablation_default"
DEFAULT_LABEL = "default"  # the setting column's value for the default rule
REPO = Path(__file__).resolve().parents[1]


def sweep_command(name: str, results_dir: Path, data_dir: Path | None, grid: list[str]) -> list[str]:
    """The `normbench sweep` command line of one of the two sweeps."""
    command = [sys.executable, "-m", "normbench", "sweep", "--norms", "group",
               "--batch-sizes", ",".join(map(str, BATCH_SIZES)), "--seeds", ",".join(map(str, SEEDS)),
               *grid, "--set", f"max_samples={BUDGET}", "--name", name, "--results-dir", str(results_dir)]
    return command + (["--data-dir", str(data_dir)] if data_dir else [])


def run_sweeps(results_dir: Path, data_dir: Path | None) -> None:
    """Train (or resume) the G grid and the default-rule point; exits on a sweep that fails to start."""
    grid = ["--grid", "norm.groups=" + ",".join(map(str, GROUPS))]
    for name, extra in ((ABLATION, grid), (DEFAULT, [])):
        if subprocess.run(sweep_command(name, results_dir, data_dir, extra)).returncode != 0:
            sys.exit(f"the sweep {name} did not finish; run this script again to resume it")


def completed_errors(sweep_dir: Path) -> pd.DataFrame:
    """One row per completed run of a sweep: setting (G, or the default rule), batch_size, seed, test error %."""
    runs = load_results(sweep_dir).runs
    done = runs[runs["status"] == "completed"]
    setting = done["norm.groups"].map(lambda g: DEFAULT_LABEL if g is None or pd.isna(g) else str(int(g)))
    return pd.DataFrame({"setting": setting, "batch_size": done["batch_size"].astype(int), "seed": done["seed"],
                         "test_error_pct": 100 * (1 - done["final_test_acc"].astype(float))})


def summarize(errors: pd.DataFrame) -> pd.DataFrame:
    """Mean test error and its 95 % Student t half-width per setting and batch size, G ascending, default last."""
    rows = []
    for (setting, batch_size), group in errors.groupby(["setting", "batch_size"]):
        mean, half = stats.mean_interval(group["test_error_pct"])
        rows.append({"setting": setting, "batch_size": batch_size, "n_seeds": len(group),
                     "test_error_pct_mean": round(mean, 2), "test_error_pct_ci95": round(half, 2)})
    order = {str(g): i for i, g in enumerate(GROUPS)} | {DEFAULT_LABEL: len(GROUPS)}
    table = pd.DataFrame(rows)
    return table.sort_values(["setting", "batch_size"], key=lambda c: c.map(order) if c.name == "setting" else c)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: one row per setting, `mean ± CI` per batch size."""
    cell = {(r.setting, r.batch_size): f"{r.test_error_pct_mean:.2f}"
            + ("" if pd.isna(r.test_error_pct_ci95) else f" ± {r.test_error_pct_ci95:.2f}")
            + ("" if r.n_seeds == len(SEEDS) else f" (n={r.n_seeds})") for r in table.itertuples()}
    lines = ["| G (groups per norm layer) | " + " | ".join(f"batch {b}: test error % (95 % CI)" for b in BATCH_SIZES) + " |",
             "|---|" + "---|" * len(BATCH_SIZES)]
    for setting in dict.fromkeys(table["setting"]):
        name = "default rule (8, 16, 8: C/G >= 4 on maps, >= 16 on fc3)" if setting == DEFAULT_LABEL else setting
        lines.append(f"| {name} | " + " | ".join(cell.get((setting, b), "-") for b in BATCH_SIZES) + " |")
    return "\n".join(lines)


def comparison(errors: pd.DataFrame, setting: str, other: str) -> list[str]:
    """Per batch size: mean test error of `setting` minus `other`, its 95 % interval and Welch's p-value."""
    lines = []
    for batch_size in BATCH_SIZES:
        at = errors[errors["batch_size"] == batch_size]
        a, b = (at.loc[at["setting"] == s, "test_error_pct"] for s in (setting, other))
        if min(len(a), len(b)) < 2:
            continue
        diff = stats.welch(a, b)
        p_text = "p < 0.001" if diff.p_value < 0.001 else f"p = {diff.p_value:.3f}"
        lines.append(f"batch {batch_size}: G={setting} minus G={other}: {diff.difference:+.2f} points, 95 % CI "
                     f"[{diff.low:.2f}, {diff.high:.2f}], Welch {p_text} (df {diff.df:.1f})")
    return lines


def figure(table: pd.DataFrame, path: Path) -> Path:
    """Test error vs G, one line per batch size, the default rule as a separate point; error bars = 95 % CI."""
    fig = Figure(figsize=(3.5, 2.7), layout="constrained")  # one journal column
    ax = fig.subplots()
    positions = {str(g): i for i, g in enumerate(GROUPS)} | {DEFAULT_LABEL: len(GROUPS) + 0.6}
    styles = {2: ("#d62728", "o"), 64: ("#1f77b4", "s")}
    for offset, batch_size in zip((-0.08, 0.08), BATCH_SIZES):
        rows = table[table["batch_size"] == batch_size]
        colour, mark = styles[batch_size]
        grid = rows[rows["setting"] != DEFAULT_LABEL]
        ax.errorbar([positions[s] + offset for s in grid["setting"]], grid["test_error_pct_mean"],
                    yerr=grid["test_error_pct_ci95"].fillna(0), color=colour, marker=mark, markersize=4, linewidth=1.2,
                    capsize=2.5, label=f"batch size {batch_size}")
        default = rows[rows["setting"] == DEFAULT_LABEL]
        ax.errorbar([positions[DEFAULT_LABEL] + offset] * len(default), default["test_error_pct_mean"],
                    yerr=default["test_error_pct_ci95"].fillna(0), color=colour, marker=mark, markersize=5,
                    markerfacecolor="white", linestyle="none", capsize=2.5)
    ax.axvline(len(GROUPS) - 0.2, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xticks([positions[str(g)] for g in GROUPS] + [positions[DEFAULT_LABEL]])
    ax.set_xticklabels([str(g) for g in GROUPS] + ["default\n(8, 16, 8)"], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("groups G in every norm layer", fontsize=9)
    ax.set_ylabel("test error (%)", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=2, fontsize=7,
               title=f"error bars: 95 % CI of the mean over {len(SEEDS)} seeds", title_fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200)
    return path


def main() -> None:
    """Run (or resume) the sweeps, then print the table and write the CSV and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "repro" / "gn_groups_ablation.png")
    parser.add_argument("--no-run", action="store_true", help="tabulate the runs already there; train nothing")
    args = parser.parse_args()
    if not args.no_run:
        run_sweeps(args.results_dir, args.data_dir)
    sweeps = [args.results_dir / "sweeps" / name for name in (ABLATION, DEFAULT)]
    if not sweeps[0].is_dir():
        sys.exit(f"no sweep at {sweeps[0]}; run without --no-run first (or pass the --results-dir it used)")
    errors = pd.concat([completed_errors(s) for s in sweeps if s.is_dir()], ignore_index=True)
    table = summarize(errors)
    table.to_csv(sweeps[0] / "groups_ablation.csv", index=False)
    print(markdown(table))
    # G=32 in every layer: the GN paper's G (32 divides 32, 64 and 128); G=16: the best uniform G measured
    for setting, other in ((DEFAULT_LABEL, "32"), (DEFAULT_LABEL, "16"), ("16", "32")):
        for line in comparison(errors, setting, other):
            print(line)
    print(f"wrote {sweeps[0] / 'groups_ablation.csv'} and {figure(table, args.figure)}")
    if table["test_error_pct_ci95"].isna().any():
        print("some settings have fewer than two completed seeds: no interval for them", file=sys.stderr)


if __name__ == "__main__":
    main()
