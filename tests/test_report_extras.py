"""`normbench report` also draws activation probes and `normbench bench` results when present."""

import csv

import pytest

from normbench.bench.vs_plain import BENCH_COLUMNS
from normbench.cli import app
from normbench.config import validate
from normbench.train.runner import run as run_config

from conftest import tiny_config


def bench_row(batch_size, ours, plain, timestamp="2026-11-23T10:00:00+00:00"):
    row = dict.fromkeys(BENCH_COLUMNS, "")
    row.update(timestamp=timestamp, device="cpu", device_name="cpu", threads=2, torch="x", precision="fp32",
               dataset="synthetic", model="cnn", norm="batch", batch_size=batch_size, steps=10, repeats=2,
               normbench_samples_per_s=ours, plain_samples_per_s=plain, ratio=ours / plain)
    return row


def write_bench(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BENCH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_report_draws_probe_and_bench_sections(runner, tmp_path):
    results = tmp_path / "results"
    cfg = validate(tiny_config(epochs=1, probe={"layer": "act3", "every": 4}), "t")
    run_config(cfg, results)
    write_bench(results / "bench" / "old.csv", [bench_row(8, 100.0, 100.0, "2026-11-23T09:00:00+00:00")])
    write_bench(results / "bench" / "new.csv", [bench_row(8, 300.0, 200.0), bench_row(64, 900.0, 400.0)])
    result = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for name in ("probe_percentiles.png", "probe_test_accuracy_vs_steps.png", "bench_throughput.png"):
        assert (out / name).stat().st_size > 10_000, name
    report = (out / "report.md").read_text()
    assert "## Activation probe" in report and "## Benchmark" in report
    assert "| synthetic | cpu | fp32 | batch | 8 | 300 | 200 | 1.50x |" in report  # the newest measurement of a point wins
    assert "| synthetic | cpu | fp32 | batch | 64 | 900 | 400 | 2.25x |" in report
    assert "1.00x" not in report


def test_bench_only_results_root_still_reports(runner, tmp_path):
    write_bench(tmp_path / "results" / "bench" / "b.csv", [bench_row(2, 50.0, 40.0)])
    result = runner.invoke(app, ["report", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results" / "report" / "bench_throughput.png").is_file()
    assert "1.25x" in (tmp_path / "results" / "report" / "report.md").read_text()


def test_empty_folder_is_still_a_clear_error(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "no runs found" in result.stderr


def test_every_report_figure_has_the_one_style(runner, tmp_path):
    """The batch-size figures, the probe plots and the bench figure all come out of report/style.py."""
    from PIL import Image

    from normbench.report.style import DPI

    results = tmp_path / "results"
    run_config(validate(tiny_config(epochs=1, probe={"layer": "act3", "every": 4}), "t"), results)
    write_bench(results / "bench" / "b.csv", [bench_row(8, 300.0, 200.0)])
    assert runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "out")]).exit_code == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    # test error by norm and the loss curves (one batch size: no figures over it), two probe plots, one bench figure
    assert len(pngs) == 5, [p.name for p in pngs]
    for png in pngs:
        assert Image.open(png).info["dpi"] == pytest.approx((DPI, DPI), abs=0.01), png.name


def test_only_the_report_draws_and_never_through_pyplot():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "normbench"
    users = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.startswith("matplotlib"):
                    users.setdefault(str(path.relative_to(package)), set()).add(name)
    assert set(users) == {"report/style.py", "report/figures.py"}, users
    assert not any("pyplot" in name for names in users.values() for name in names)
