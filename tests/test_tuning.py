"""Tuned sweeps: each grid point keeps the tuning value with the best val_acc, never looking at test_acc."""

from __future__ import annotations

import csv

import pytest

from normbench.cli import app
from normbench.results import read_meta
from normbench.sweep.grid import Axis
from normbench.sweep.tuning import select

AXES = [Axis("norm.type", ("batch", "group")), Axis("seed", (0, 1)), Axis("optimizer.lr", (0.01, 0.001), tune=True)]


def row(norm, seed, lr, val_acc, test_acc, val_loss=1.0, status="completed"):
    return {"norm.type": norm, "seed": seed, "optimizer.lr": lr, "status": status, "val_acc": val_acc,
            "val_loss": val_loss, "test_acc": test_acc}


def test_selection_is_by_mean_val_acc_over_seeds_even_where_test_disagrees():
    rows = [
        row("batch", 0, 0.01, 0.80, 0.99), row("batch", 1, 0.01, 0.82, 0.99),  # best test, worse val
        row("batch", 0, 0.001, 0.85, 0.50), row("batch", 1, 0.001, 0.83, 0.50),
        row("group", 0, 0.01, 0.90, 0.10), row("group", 1, 0.01, 0.70, 0.10),  # mean 0.80
        row("group", 0, 0.001, 0.81, 0.90), row("group", 1, 0.001, 0.81, 0.90),  # mean 0.81
    ]
    assert select(rows, AXES) == [False, False, True, True, False, False, True, True]


def test_ties_go_to_the_lower_val_loss_and_incomplete_values_are_not_eligible():
    rows = [
        row("batch", 0, 0.01, 0.8, 0, val_loss=0.5), row("batch", 1, 0.01, 0.8, 0, val_loss=0.5),
        row("batch", 0, 0.001, 0.8, 0, val_loss=0.4), row("batch", 1, 0.001, 0.8, 0, val_loss=0.4),
        row("group", 0, 0.01, 0.9, 0), row("group", 1, 0.01, "", 0, status="failed"),
        row("group", 0, 0.001, 0.5, 0), row("group", 1, 0.001, 0.5, 0),
    ]
    assert select(rows, AXES) == [False, False, True, True, False, False, True, True]


def test_a_tuned_sweep_marks_the_selected_rows_and_their_runs(runner, write_config, tmp_path):
    config = write_config(epochs=1, **{"dataset.val_samples": 64})
    result = runner.invoke(app, ["sweep", str(config), "--norms", "batch", "--batch-sizes", "16", "--jobs", "1",
                                 "--tune", "optimizer.lr=0.01,0.0001", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (sweep,) = (tmp_path / "sweeps").iterdir()
    with open(sweep / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["selected"] for r in rows) == ["False", "True"]
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert best["selected"] == "True"
    meta = read_meta(sweep / best["run_dir"])
    assert meta["sweep"]["tuning"] == {"keys": ["optimizer.lr"], "selected": True, "by": "val_acc"}


def test_tuning_without_a_validation_split_is_refused(runner, write_config, tmp_path):
    result = runner.invoke(app, ["sweep", str(write_config()), "--norms", "batch", "--tune", "optimizer.lr=0.1,0.01",
                                 "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--tune selects by val_acc" in result.output


def test_the_report_of_a_tuned_sweep_keeps_the_selected_runs(runner, write_config, tmp_path):
    config = write_config(epochs=1, **{"dataset.val_samples": 64})
    assert runner.invoke(app, ["sweep", str(config), "--norms", "batch,group", "--batch-sizes", "16", "--jobs", "1",
                               "--tune", "optimizer.lr=0.01,0.0001", "--results-dir", str(tmp_path)]).exit_code == 0
    (sweep,) = (tmp_path / "sweeps").iterdir()
    result = runner.invoke(app, ["report", str(sweep), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "report" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert sorted(r["norm"] for r in summary) == ["batch", "group"]  # one row per norm: its selected lr only
    assert all("optimizer.lr" not in r for r in summary) and all(r["tuned"].startswith("optimizer.lr=") for r in summary)
    assert "This is a tuned sweep" in (tmp_path / "report" / "report.md").read_text()


def test_the_report_of_an_unfinished_tuned_sweep_leaves_out_and_counts_the_missing_points(runner, write_config, tmp_path):
    """What a killed tuned sweep leaves: group at batch 16 has one setting interrupted (no choice
    recorded) and the other not started; batch at batch 16 has not started at all."""
    import json
    import shutil

    config = write_config(epochs=1, **{"dataset.val_samples": 64})
    assert runner.invoke(app, ["sweep", str(config), "--norms", "batch,group", "--batch-sizes", "4,16", "--jobs", "1",
                               "--tune", "optimizer.lr=0.01,0.0001", "--results-dir", str(tmp_path)]).exit_code == 0
    (sweep,) = (tmp_path / "sweeps").iterdir()
    for run_dir in (sweep / "runs").iterdir():
        if run_dir.name.startswith("norm=group_bs=16_") and run_dir.name.endswith("lr=0.01"):
            meta = json.loads((run_dir / "meta.json").read_text())
            meta["status"] = "interrupted"
            del meta["sweep"]["tuning"]  # the sweep records a choice only for completed runs
            (run_dir / "meta.json").write_text(json.dumps(meta))
        elif "_bs=16_" in run_dir.name:
            shutil.rmtree(run_dir)
    result = runner.invoke(app, ["report", str(sweep), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "report.md").read_text()
    expected = "2 points with no completed run yet, left out of the tables, figures and findings: " \
               "group at batch size 16; batch at batch size 16."
    assert expected in report and expected in " ".join(result.output.split())
    assert "batch size nan" not in report and "At batch size 16" not in report and "- At batch size 4: test error" in report
    with open(tmp_path / "report" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert sorted((r["norm"], r["batch_size"]) for r in summary) == [("batch", "4"), ("group", "4")]
    assert "optimizer.lr" not in summary[0]  # the interrupted run's lr does not split the table
