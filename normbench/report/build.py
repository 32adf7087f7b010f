"""`normbench report`: every run under some paths -> summary.csv, four figures, report.md, a table.

summary.csv has one row per dataset x model x norm x batch size x other varying config keys x
device. Means are over completed runs only; diverged, failed and unfinished runs are counted in
their own columns and listed in report.md. Points with no result yet (only unfinished runs, or a
sweep's points not started) are left out of the tables, figures and findings, and counted. With two or more seeds a mean has a 95 % Student t
interval (`*_ci95`: its half-width), and the findings test batch norm against the best
batch-independent norm (Welch, and paired by seed where the seeds match; report/stats.py). Values are rounded once, in the summary table, so the
CSV, report.md and the terminal show the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from normbench.report import extras
from normbench.report import figures
from normbench.report import stats
from normbench.report.style import norm_order
from normbench.report.collect import Collected, collect
from normbench.errors import NormbenchError
from normbench.norms import NORMS

SUMMARY_FILE, REPORT_FILE = "summary.csv", "report.md"
# Decimal places per summary column: what every output shows.
DECIMALS = {"test_acc_mean": 4, "test_acc_std": 4, "test_acc_ci95": 4, "test_error_pct_mean": 2,
            "test_error_pct_std": 2, "test_error_pct_ci95": 2, "train_acc_mean": 4, "gap_pct_mean": 2, "samples_per_s_mean": 1}
UNFINISHED = ("running", "interrupted", "unknown")


def group_keys(extra: list[str]) -> list[str]:
    """The columns that identify a summary row."""
    return ["dataset", "model", "norm", "batch_size", *extra, "device"]


def gap_train_acc(done: pd.DataFrame) -> pd.Series:
    """The train accuracy of the accuracy gap: eval mode on the fixed training subset (train_eval_acc),
    or, for runs from before it was measured, the mean over the last epoch's batches in train mode."""
    return done["train_eval_acc"].astype(float).fillna(done["train_acc"].astype(float))


def summarize(runs: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One row per group: counts by status; test/train accuracy and speed over completed runs."""
    rows = []
    for key, group in runs.groupby(group_keys(extra), sort=False, dropna=False):
        done = group[group["status"] == "completed"]
        acc = done["test_acc"].astype(float)
        std = acc.std(ddof=1) if len(done) > 1 else math.nan  # sample std over seeds
        half = stats.mean_interval(acc)[1] if len(done) else math.nan  # 95 % t interval half-width
        rows.append({
            **dict(zip(group_keys(extra), key)),
            "n_seeds": len(done),
            "n_diverged": int((group["status"] == "diverged").sum()),
            "n_failed": int((group["status"] == "failed").sum()),
            "n_unfinished": int(group["status"].isin(UNFINISHED).sum()),
            "test_acc_mean": acc.mean() if len(done) else math.nan,
            "test_acc_std": std,
            "test_acc_ci95": half,
            "test_error_pct_mean": 100 * (1 - acc.mean()) if len(done) else math.nan,
            "test_error_pct_std": 100 * std,
            "test_error_pct_ci95": 100 * half,
            "train_acc_mean": done["train_acc"].astype(float).mean() if len(done) else math.nan,
            "gap_pct_mean": 100 * (gap_train_acc(done) - acc).mean() if len(done) else math.nan,
            "samples_per_s_mean": done["samples_per_s"].astype(float).mean() if len(done) else math.nan,
            "tuned": ", ".join(sorted(set(group.get("tuned", pd.Series(dtype=str)).dropna()) - {""})),
        })
    summary = pd.DataFrame(rows).round(DECIMALS)
    order = {n: i for i, n in enumerate(norm_order(summary["norm"].unique()))}
    summary = summary.sort_values(["dataset", "model", *extra, "device", "norm", "batch_size"],
                                  key=lambda c: c.map(order) if c.name == "norm" else c)
    return summary.reset_index(drop=True)


def fmt(value, column: str = "") -> str:
    """A summary value as every output shows it: the rounded number, or '-' when there is none."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{DECIMALS[column]}f}" if column in DECIMALS else f"{value:g}"
    return str(value)


def seed_errors(runs: pd.DataFrame, norm: str, batch_size) -> list[tuple[int, float]]:
    """(seed, test error %) of each completed run of one norm at one batch size."""
    rows = runs[(runs["status"] == "completed") & (runs["norm"] == norm) & (runs["batch_size"] == batch_size)]
    return [(int(r.seed), 100 * (1 - float(r.test_acc))) for r in rows.itertuples()]


def _p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def difference_text(batch: list[tuple[int, float]], other: list[tuple[int, float]], other_name: str) -> str:
    """The uncertainty of batch norm's test error minus another norm's, from (seed, error %) pairs:
    Welch's t-test and interval, a paired t-test where both ran the same seeds once each, or why there is none."""
    if min(len(batch), len(other)) < 2:
        return (f"With {len(batch)} seed(s) for batch and {len(other)} for {other_name}, no uncertainty can be "
                "given (run two or more seeds, e.g. --seeds 0,1,2).")
    welch = stats.welch([e for _, e in batch], [e for _, e in other])
    if math.isnan(welch.p_value):
        return "Every seed gave the same test error, so there is no spread to test the difference against."
    text = (f"95 % CI of the difference [{welch.low:.2f}, {welch.high:.2f}] points, Welch t-test {_p_text(welch.p_value)} "
            f"(df {welch.df:.1f}, n = {welch.n_a} and {welch.n_b})")
    if len(dict(batch)) == len(batch) == len(other) and dict(batch).keys() == dict(other).keys():
        pair = stats.paired([e for _, e in sorted(batch)], [e for _, e in sorted(other)])
        if math.isnan(pair.p_value):
            text += f"; paired by seed: every seed's difference is {pair.difference:.2f} points, no spread to test"
        else:
            text += (f"; paired by seed: [{pair.low:.2f}, {pair.high:.2f}] points, paired t-test "
                     f"{_p_text(pair.p_value)} (n = {pair.n_a})")
    return text + "."


def _error_text(row) -> str:
    mean, half = fmt(row.test_error_pct_mean, "test_error_pct_mean"), row.test_error_pct_ci95
    return f"{row.norm} {mean} %" if math.isnan(half) else f"{row.norm} {mean} ± {fmt(half, 'test_error_pct_ci95')} %"


def findings(summary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """The batch-size story in numbers: test error per norm at the smallest and largest batch size
    (± a 95 % interval with two or more seeds), and batch norm against the best batch-independent
    norm (none excluded) with the difference's uncertainty from the per-seed `runs`."""
    lines = []
    done = summary[summary["n_seeds"] > 0]
    if done.empty:  # nothing completed in this setting: no numbers to state
        return lines
    for batch_size in sorted({done["batch_size"].min(), done["batch_size"].max()}):
        at = done[done["batch_size"] == batch_size]
        line = f"At batch size {batch_size}: test error {', '.join(_error_text(r) for r in at.itertuples())}."
        others = at[[n in NORMS and not NORMS[n].batch_dependent and n != "none" for n in at["norm"]]]
        batch = at[at["norm"] == "batch"]
        if len(batch) == 1 and len(others):
            best = others.loc[others["test_error_pct_mean"].idxmin()]
            diff = batch["test_error_pct_mean"].iloc[0] - best["test_error_pct_mean"]
            side = "above" if diff > 0 else "below"
            line += (f" Batch norm is {abs(diff):.2f} points {side} the best batch-independent norm "
                     f"({best['norm']}, {fmt(best['test_error_pct_mean'], 'test_error_pct_mean')} %). ")
            line += difference_text(seed_errors(runs, "batch", batch_size), seed_errors(runs, best["norm"], batch_size),
                                    best["norm"])
        lines.append(line)
    return lines


def _md_table(frame: pd.DataFrame) -> list[str]:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v, c) for c, v in zip(frame.columns, row)) + " |" for row in frame.itertuples(index=False)]
    return [head, rule, *body]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in text)


def setup_text(runs: pd.DataFrame) -> str:
    """Budget, seeds, device and normbench version, said once for the whole report."""
    done = runs[runs["status"] == "completed"]
    seeds = ", ".join(str(s) for s in sorted(done["seed"].unique())) or "-"
    devices = ", ".join(sorted(runs["device"].unique()))
    versions = ", ".join(sorted(runs["version"].astype(str).unique()))
    return (f"**Setup:** {budget_text(runs)} (seeds {seeds}); device{'s' if runs['device'].nunique() > 1 else ''}: "
            f"{devices}; normbench {versions}.")


def intro(collected: Collected, sources: list[Path], tuned: bool) -> list[str]:
    """report.md's opening: where the runs came from, how they are averaged, whether tuned."""
    runs = collected.runs
    counts = runs["status"].value_counts().to_dict()
    md = ["# normbench report", "",
          f"Sources: {', '.join(f'`{s}`' for s in sources)}. Runs found: {len(runs) + len(collected.skipped)}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()) + f", {len(collected.skipped)} skipped (see below).",
          "", setup_text(runs), "", "Means are over completed runs only (n_seeds); diverged, failed and unfinished runs are counted "
          "separately and listed below. The same table is in `summary.csv`. With two or more seeds, ± and the "
          "`*_ci95` columns are the half-width of the 95 % Student t confidence interval of the mean over seeds; "
          "differences are tested with Welch's t-test, and with a paired t-test where both norms ran the same seeds.", ""]
    if tuned:
        md += ["This is a tuned sweep: each norm and batch size is compared at its own best setting (column `tuned`), "
               "chosen by the final validation accuracy averaged over seeds; the test split played no part in the "
               "choice. The runs of the other settings are listed under skipped runs.", ""]
    return md


def budget_text(runs: pd.DataFrame) -> str:
    """The completed runs' seeds and training budget, said once: `2 seeds, 1,024 training samples per run`."""
    done = runs[runs["status"] == "completed"]
    seeds = done["seed"].nunique()
    samples = sorted(int(s) for s in done["samples_seen"].dropna().unique())
    budget = "" if not samples else f"{samples[0]:,}" if len(samples) == 1 else f"{samples[0]:,}-{samples[-1]:,}"
    return f"{seeds} seed{'s' if seeds != 1 else ''}" + (f", {budget} training samples per run" if budget else "")


def draw_part(part: pd.DataFrame, part_runs: pd.DataFrame, curves: pd.DataFrame, keys: tuple[list, list], title: str,
              out: Path, slug: str) -> list[tuple[Path, str]]:
    """One (dataset, model) part's figures as (PNG, caption): test error (by norm at one batch size,
    or over batch size), the loss curves, and with two or more batch sizes throughput and gap over it. `keys`: the config keys that split lines, without and with device."""
    varying, per_device = keys
    drawn = [(figures.loss_curves(part_runs, curves, varying, title, out / f"loss_curves_{slug}.png"),
              "Training loss vs samples seen")]
    if part["batch_size"].nunique() < 2:  # a figure over one batch size would be a row of dots
        return [(figures.test_error_by_norm(part, per_device, title, out / f"test_error_by_norm_{slug}.png"),
                 "Test error by norm (bars: 95 % CI of the mean)"), *drawn]
    return [(figures.test_error(part, per_device, title, out / f"test_error_vs_batch_size_{slug}.png"),
             "Test error vs batch size (bars: 95 % CI of the mean)"), *drawn,
            (figures.throughput(part, varying, title, out / f"throughput_vs_batch_size_{slug}.png"),
             "Training throughput vs batch size"),
            (figures.accuracy_gap(part, per_device, title, out / f"accuracy_gap_vs_batch_size_{slug}.png"),
             "Train-vs-test accuracy gap vs batch size (train accuracy in eval mode on a fixed training subset)")]


def point_label(point: dict, extra: list[str]) -> str:
    """`group at batch size 16 (norm.groups=8)`: a point as the report names it."""
    others = ", ".join(f"{k}={point[k]}" for k in extra if k in point)
    return f"{point['norm']} at batch size {point['batch_size']}" + (f" ({others})" if others else "")


def not_run_yet(summary: pd.DataFrame) -> pd.Series:
    """Rows with no completed, diverged or failed run: only unfinished ones (a point that diverged has a result)."""
    return (summary["n_seeds"] + summary["n_diverged"] + summary["n_failed"]) == 0


def missing_points(summary: pd.DataFrame, collected: Collected) -> list[str]:
    """The points with no result yet, each named once: summary rows whose runs are all unfinished,
    and sweep points with no run here (not started, or a tuned point with no chosen setting)."""
    labels = [point_label(row, collected.extra_keys) for row in summary[not_run_yet(summary)].to_dict("records")]
    labels += [point_label(point, collected.extra_keys) for point in collected.not_started]
    return list(dict.fromkeys(labels))


def missing_text(missing: list[str]) -> str:
    """One sentence: how many points have no completed run and which, or '' when none."""
    if not missing:
        return ""
    return (f"{len(missing)} point{'s' if len(missing) != 1 else ''} with no completed run yet, left out of the "
            f"tables, figures and findings: {'; '.join(missing)}.")


def write_report(collected: Collected, out: Path, sources: list[Path]) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Write summary.csv, the figures and report.md into `out`; returns the summary (points that
    have not run yet left out), the files, and those points' names."""
    runs, extra = collected.runs, collected.extra_keys
    summary = summarize(runs, extra)
    missing = missing_points(summary, collected)
    summary = summary[~not_run_yet(summary)].reset_index(drop=True)
    tuned = summary["tuned"].astype(bool).any()
    if not tuned:  # a plain sweep: no column of empty cells
        summary = summary.drop(columns=["tuned"])
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / SUMMARY_FILE, index=False, float_format="%.10g")
    files = [out / SUMMARY_FILE]
    md = intro(collected, sources, tuned)
    if missing:
        md += [f"**Missing points:** {missing_text(missing)}", ""]
    several_devices = summary["device"].nunique() > 1
    for (dataset, model), part in summary.groupby(["dataset", "model"], sort=False):
        title = f"{dataset} / {model}"
        part_runs = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        slug = _slug(f"{dataset}_{model}")
        varying = [k for k in extra if part[k].nunique() > 1]  # keys that split lines in this part
        per_device = [*varying, "device"] if several_devices else varying
        drawn = draw_part(part, part_runs, collected.curves, (varying, per_device), f"{title}, {budget_text(part_runs)}",
                          out, slug)
        files += [path for path, _ in drawn]
        md += [f"## {title}", "", "### Findings", ""]
        keys = per_device or ["device"]
        for _, setting in part.groupby(keys, sort=False):
            label = ", ".join(f"{k}={setting.iloc[0][k]}" for k in per_device)
            setting_runs = part_runs[(part_runs[keys] == setting.iloc[0][keys]).all(axis=1)]  # the same seeds' runs
            md += [f"- {f'({label}) ' if label else ''}{line}" for line in findings(setting, setting_runs)]
        md += [""]
        for path, caption in drawn:
            md += [f"![{caption}]({path.name})", ""]
        shown = part.drop(columns=["dataset", "model", *(["device"] if not several_devices else [])])  # device: in the header
        md += ["### Summary", "", *_md_table(shown), ""]
    bad = runs[runs["status"] != "completed"]
    if len(bad):
        md += ["## Runs not averaged (diverged, failed, unfinished)", "", "| run | norm | batch size | seed | status | reason |",
               "|---|---|---|---|---|---|"]
        md += [f"| `{r.run_dir}` | {r.norm} | {r.batch_size} | {r.seed} | {r.status} | {r.reason} |" for r in bad.itertuples()]
        md += [""]
    if collected.skipped:
        md += ["## Skipped runs", "", "| run | why |", "|---|---|"]
        md += [f"| `{path}` | {why} |" for path, why in collected.skipped] + [""]
    probe_files, probe_md = extras.probe_section(runs["run_dir"], out)
    bench_files, bench_md = extras.bench_section(extras.find_bench_csvs(sources), out)
    files += probe_files + bench_files
    md += probe_md + bench_md
    (out / REPORT_FILE).write_text("\n".join(md), encoding="utf-8")
    return summary, [*files, out / REPORT_FILE], missing


# The terminal table's columns (summary.csv's name -> a header that fits 80 columns); the CSV has them all.
TERMINAL_COLUMNS = {"norm": "norm", "batch_size": "batch", "n_seeds": "seeds", "test_error_pct_mean": "test err %",
                    "test_error_pct_ci95": "± CI95", "gap_pct_mean": "gap pts", "samples_per_s_mean": "samples/s"}


def summary_table(summary: pd.DataFrame, extra: list[str]):
    """One (dataset, model) part of the summary as a rich table with short headers (readable at 80
    columns), the same numbers as summary.csv; keys and devices that are constant go in the title."""
    from rich.table import Table

    constant = [c for c in [*extra, "device"] if summary[c].nunique() == 1]
    columns = {c: c for c in [*extra, "device"] if c not in constant}
    columns = {"norm": "norm", **columns, **{c: h for c, h in TERMINAL_COLUMNS.items()
                                             if c != "norm" and summary[c].notna().any()}}  # no column of dashes
    bad = summary["n_diverged"] + summary["n_failed"] + summary["n_unfinished"]
    first = summary.iloc[0]
    title = f"{first['dataset']} / {first['model']}: " + ", ".join(
        f"{c}={first[c]}" for c in constant if first[c] != "null")
    table = Table(title=title, title_justify="left")
    for column, header in columns.items():
        table.add_column(header, justify="left" if column in ("norm", "device") else "right")
    if bad.any():
        table.add_column("not averaged", justify="right")
    for (_, row), n_bad in zip(summary.iterrows(), bad):
        table.add_row(*(fmt(row[c], c) for c in columns), *([str(int(n_bad))] if bad.any() else []))
    return table


def cannot_write(out: Path, exc: OSError) -> NormbenchError:
    """The one-line error for a report that could not be written."""
    return NormbenchError(f"cannot write the report into '{out}': {exc.strerror or exc}; free some space or pass --out DIR")


def run_report(paths: list[Path], out: Path | None, console) -> Path:
    """Collect, write and print the report; returns the output folder."""
    paths = [Path(p) for p in paths] or [Path("results")]
    out = Path(out) if out else (paths[0] if paths[0].is_dir() else paths[0].parent) / "report"
    try:
        collected = collect(paths)
    except NormbenchError:
        bench_csvs = extras.find_bench_csvs(paths) if all(p.exists() for p in paths) else []
        if not bench_csvs:
            raise
        try:
            files, md = extras.bench_section(bench_csvs, out)  # a results root with benchmarks only
            (out / REPORT_FILE).write_text("\n".join(["# normbench report", "", *md]), encoding="utf-8")
        except OSError as exc:
            raise cannot_write(out, exc) from None
        console.print(f"wrote {len(files) + 1} files to {out}: " + ", ".join(p.name for p in [*files, out / REPORT_FILE]),
                      highlight=False, soft_wrap=True)
        return out
    try:
        summary, files, missing = write_report(collected, out, paths)
    except OSError as exc:  # a full disk, a read-only --out: from any file of the report, figures too
        raise cannot_write(out, exc) from None
    for _, part in summary.groupby(["dataset", "model"], sort=False):
        console.print(summary_table(part, collected.extra_keys))
    for path, why in collected.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}", highlight=False, soft_wrap=True)
    bad = collected.runs[collected.runs["status"] != "completed"]
    for r in bad.itertuples():
        console.print(f"[red]{r.status}[/] (not averaged) {r.run_dir}: {r.reason}", highlight=False, soft_wrap=True)
    if missing:
        console.print(f"[yellow]missing[/] {missing_text(missing)}", highlight=False, soft_wrap=True)
    console.print(f"wrote {len(files)} files to {out}: " + ", ".join(p.name for p in files), highlight=False, soft_wrap=True)
    return out
