"""`normbench report` from fixture run directories: figures, summary numbers, robustness."""

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from normbench.cli import app
from normbench.results import EPOCH_COLUMNS, STEP_COLUMNS

from conftest import tiny_config

FIGURES = ("test_error_vs_batch_size", "loss_curves", "throughput_vs_batch_size", "accuracy_gap_vs_batch_size")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, norm: str, batch_size: int, seed: int, test_acc: float, train_acc: float,
              status: str = "completed", epoch_s: float = 2.0, samples: int = 1024, extra_column: bool = True) -> Path:
    """A run directory as `normbench run` writes it, with known final numbers (two epochs)."""
    path = root / name
    path.mkdir(parents=True)
    config = tiny_config(**{"norm.type": norm, "batch_size": batch_size, "seed": seed})
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    meta = {"status": status, "reason": "training loss became nan at step 7" if status == "diverged" else None,
            "samples_seen": samples, "environment": {"device": "cpu", "device_name": "Test CPU"}}
    (path / "meta.json").write_text(json.dumps(meta))
    # An extra column, as later helpers add (BN diagnostics): the report reads by name.
    epoch_cols = (*EPOCH_COLUMNS, "bn_extra") if extra_column else EPOCH_COLUMNS
    with open(path / "epochs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=epoch_cols)
        writer.writeheader()
        for epoch, (tr, te) in enumerate([(train_acc - 0.1, test_acc - 0.1), (train_acc, test_acc)], start=1):
            writer.writerow({"epoch": epoch, "samples_seen": samples // 2 * epoch, "train_loss": 1.0 / epoch, "train_acc": tr,
                             "test_loss": 1.1 / epoch, "test_acc": te, "samples_per_s": samples / 2 / epoch_s,
                             "epoch_s": epoch_s, "eval_s": 0.1, "lr": 0.001, **({"bn_extra": 0.5} if extra_column else {})})
    with open(path / "steps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS)
        writer.writeheader()
        steps = samples // batch_size
        for step in range(1, steps + 1, max(1, steps // 16)):
            writer.writerow({"step": step, "epoch": 1 + (step > steps // 2), "samples_seen": step * batch_size,
                             "train_loss": 2.0 / (1 + step * batch_size / 256) + 0.01 * seed, "lr": 0.001,
                             "samples_per_s": 500.0, "elapsed_s": step * 0.01})
    return path


# (norm, batch size, seed) -> (test_acc, train_acc, epoch_s)
FIXTURE = {
    ("batch", 2, 0): (0.70, 0.55, 8.0), ("batch", 2, 1): (0.74, 0.57, 9.0),
    ("batch", 64, 0): (0.90, 0.93, 1.0), ("batch", 64, 1): (0.91, 0.95, 1.5),
    ("group", 2, 0): (0.88, 0.90, 7.0), ("group", 2, 1): (0.87, 0.89, 7.5),
    ("group", 64, 0): (0.89, 0.92, 1.2), ("group", 64, 1): (0.90, 0.91, 1.3),
}


@pytest.fixture
def fixture_runs(tmp_path) -> Path:
    root = tmp_path / "results"
    for (norm, bs, seed), (te, tr, secs) in FIXTURE.items():
        write_run(root / "runs", f"{norm}-{bs}-{seed}", norm, bs, seed, te, tr, epoch_s=secs)
    write_run(root / "runs", "batch-2-2-diverged", "batch", 2, 2, 0.1, 0.1, status="diverged")
    return root


def summary_rows(path: Path) -> dict:
    with open(path, newline="") as f:
        return {(r["norm"], int(r["batch_size"])): r for r in csv.DictReader(f)}


def test_report_writes_every_figure_and_a_summary_equal_to_the_fixture_means(runner, fixture_runs, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(fixture_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for figure in FIGURES:
        png = out / f"{figure}_synthetic_cnn.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000, figure

    summary = summary_rows(out / "summary.csv")
    assert set(summary) == {("batch", 2), ("batch", 64), ("group", 2), ("group", 64)}
    for (norm, bs), row in summary.items():
        seeds = [v for k, v in FIXTURE.items() if k[:2] == (norm, bs)]
        test = [s[0] for s in seeds]
        assert int(row["n_seeds"]) == 2
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.mean(test), abs=5e-5)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(test), abs=5e-5)
        assert float(row["test_error_pct_mean"]) == pytest.approx(100 * (1 - statistics.mean(test)), abs=5e-3)
        gap = statistics.mean(100 * (s[1] - s[0]) for s in seeds)
        assert float(row["gap_pct_mean"]) == pytest.approx(gap, abs=5e-3)
        speed = statistics.mean(1024 / (2 * s[2]) for s in seeds)  # samples / total epoch seconds
        assert float(row["samples_per_s_mean"]) == pytest.approx(speed, abs=0.05)
    # the diverged run is counted, never averaged in (its 0.1 would pull the mean down)
    assert summary[("batch", 2)]["n_diverged"] == "1"

    report = (out / "report.md").read_text()
    for figure in FIGURES:
        assert f"]({figure}_synthetic_cnn.png)" in report
    for row in summary.values():  # the report shows the CSV's numbers, digit for digit
        assert f"| {row['test_acc_mean']} |" in report or f"| {float(row['test_acc_mean']):.4f} |" in report
        assert f"{float(row['test_error_pct_mean']):.2f}" in report
    assert "batch-2-2-diverged" in report and "diverged" in report
    b2, g2 = float(summary[("batch", 2)]["test_error_pct_mean"]), float(summary[("group", 2)]["test_error_pct_mean"])
    assert f"Batch norm is {b2 - g2:.2f} points above the best batch-independent norm (group" in report
    assert "synthetic / cnn" in result.output and "diverged (not averaged)" in result.output  # the table, the note


def test_corrupt_runs_are_skipped_by_name_and_the_rest_reported(runner, fixture_runs, tmp_path):
    runs = fixture_runs / "runs"
    truncated = write_run(runs, "truncated", "group", 8, 0, 0.8, 0.8)
    text = (truncated / "epochs.csv").read_text()
    (truncated / "epochs.csv").write_text(text[: len(text) - 25])  # killed mid-row
    header_only = write_run(runs, "header-only", "group", 8, 1, 0.8, 0.8)
    (header_only / "epochs.csv").write_text(",".join(EPOCH_COLUMNS) + "\n")
    (write_run(runs, "no-steps", "group", 8, 2, 0.8, 0.8) / "steps.csv").unlink()
    (write_run(runs, "bad-meta", "group", 8, 3, 0.8, 0.8) / "meta.json").write_text("{not json")
    short = write_run(runs, "short", "group", 8, 4, 0.8, 0.8)  # whole rows, but the last epoch is missing
    lines = (short / "epochs.csv").read_text().splitlines()
    (short / "epochs.csv").write_text("\n".join(lines[:-1]) + "\n")

    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(fixture_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    expected = {"truncated": "epochs.csv truncated", "header-only": "epochs.csv has a header but no rows",
                "no-steps": "steps.csv missing", "bad-meta": "meta.json missing or unreadable", "short": "epochs.csv truncated"}
    for name, why in expected.items():
        assert any(name in line and why in line for line in report.splitlines()), name
    output = " ".join(result.output.split())
    assert all(f"skipped {runs / name}" in output for name in expected)
    assert ("group", 8) not in summary_rows(out / "summary.csv")  # nothing usable there
    assert len(summary_rows(out / "summary.csv")) == 4


def test_a_path_without_runs_is_a_clear_error(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no runs found under" in result.output and "Traceback" not in result.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_only_unusable_runs_is_an_error_naming_one(runner, tmp_path):
    run = write_run(tmp_path / "r", "only", "batch", 2, 0, 0.5, 0.5)
    (run / "epochs.csv").write_text("")
    result = runner.invoke(app, ["report", str(tmp_path / "r")])
    assert result.exit_code == 1 and "epochs.csv is empty" in result.output


def test_a_swept_key_splits_the_summary_and_the_default_out_is_inside_the_path(runner, tmp_path):
    root = tmp_path / "results"
    for lr in (0.01, 0.001):
        for seed in (0, 1):
            path = write_run(root, f"lr{lr}-{seed}", "layer", 8, seed, 0.8 + lr, 0.85)
            config = yaml.safe_load((path / "config.yaml").read_text())
            config["optimizer"] = {"name": "adam", "lr": lr}
            (path / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    with open(root / "report" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["optimizer.lr"], r["n_seeds"], r["test_acc_mean"]) for r in rows) == [
        ("0.001", "2", "0.801"), ("0.01", "2", "0.81")]


def test_the_gap_uses_the_eval_mode_train_accuracy_when_measured(runner, tmp_path):
    """A short run's train-mode average (0.55) is below its test accuracy; the eval-mode accuracy on
    the fixed training subset (0.80) is what the gap is drawn from."""
    import json

    for seed in (0, 1):
        path = write_run(tmp_path / "runs", f"b{seed}", "batch", 8, seed, test_acc=0.70, train_acc=0.55)
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, "final_train_eval_acc": 0.80}))
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["gap_pct_mean"]) == pytest.approx(10.0)


def test_a_point_that_only_diverged_keeps_its_row_and_one_not_run_yet_is_left_out_and_counted(runner, fixture_runs,
                                                                                             tmp_path):
    runs = fixture_runs / "runs"
    write_run(runs, "batch-8-0-diverged", "batch", 8, 0, 0.1, 0.1, status="diverged")
    write_run(runs, "group-8-0-running", "group", 8, 0, 0.1, 0.1, status="running")  # killed before it finished
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(fixture_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = summary_rows(out / "summary.csv")
    assert summary[("batch", 8)]["n_diverged"] == "1" and summary[("batch", 8)]["n_seeds"] == "0"
    assert ("group", 8) not in summary and len(summary) == 5
    expected = "1 point with no completed run yet, left out of the tables, figures and findings: group at batch size 8."
    report = (out / "report.md").read_text()
    assert expected in report and expected in " ".join(result.output.split())
    assert "batch size nan" not in report and "group-8-0-running" in report  # still listed among the runs not averaged
