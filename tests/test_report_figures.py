"""The report's figures and header read well: shared y where panels compare, one colour and marker
per norm everywhere, plain log ticks, no figure over a single batch size, setup stated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from normbench.cli import app
from normbench.report import figures

from test_report import FIXTURE, write_run


@pytest.fixture
def drawn(monkeypatch):
    """{PNG name: matplotlib Figure} of every figure the report draws (nothing written)."""
    found = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: found.setdefault(Path(path).name, fig) and Path(path))
    return found


def report(runner, tmp_path, runs: dict) -> tuple[str, str]:
    """Write `runs` {(norm, batch size, seed): (test_acc, train_acc, epoch_s)}, report them; (report.md, terminal)."""
    for (norm, batch_size, seed), (test_acc, train_acc, epoch_s) in runs.items():
        write_run(tmp_path / "runs", f"{norm}-{batch_size}-{seed}", norm, batch_size, seed, test_acc, train_acc,
                  epoch_s=epoch_s)
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return (tmp_path / "out" / "report.md").read_text(), result.output


def test_loss_panels_share_y_and_say_no_one_row_mean_or_n(runner, tmp_path, drawn):
    report(runner, tmp_path, FIXTURE)
    fig = drawn["loss_curves_synthetic_cnn.png"]
    first, second = [ax for ax in fig.axes if ax.get_visible()][:2]
    assert first.get_shared_y_axes().joined(first, second)
    texts = [ax.get_title() for ax in fig.axes] + [fig.get_suptitle()]
    texts += [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert not any("running mean of 1 " in t or "(n=" in t for t in texts), texts
    assert "2 seeds, 1,024 training samples per run" in fig.get_suptitle()
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)  # one legend, below the panels


def test_each_norm_has_one_colour_and_marker_in_every_figure(runner, tmp_path, drawn):
    report(runner, tmp_path, FIXTURE)
    seen: dict[str, set] = {}
    for fig in drawn.values():
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_label() in ("batch", "group"):
                    seen.setdefault(line.get_label(), set()).add((line.get_color(), line.get_marker()))
    assert len(seen["batch"]) == 1 and len(seen["group"]) == 1 and seen["batch"] != seen["group"], seen
    assert len(drawn) == 4


def test_log_axis_ticks_are_plain_numbers(runner, tmp_path, drawn):
    report(runner, tmp_path, FIXTURE)
    (ax,) = drawn["throughput_vs_batch_size_synthetic_cnn.png"].axes
    fig = ax.figure
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels and not any("times" in t or "^" in t for t in labels), labels
    assert "100" in labels


def test_one_batch_size_draws_no_figure_over_batch_size(runner, tmp_path, drawn):
    runs = {key: value for key, value in FIXTURE.items() if key[1] == 64}
    md, _ = report(runner, tmp_path, runs)
    assert sorted(drawn) == ["loss_curves_synthetic_cnn.png", "test_error_by_norm_synthetic_cnn.png"]
    assert "vs_batch_size" not in md


def test_report_states_setup_once_and_the_terminal_table_fits_80_columns(runner, tmp_path):
    md, terminal = report(runner, tmp_path, FIXTURE)
    assert "**Setup:** 2 seeds, 1,024 training samples per run (seeds 0, 1); device: Test CPU; normbench" in md
    assert md.count("Test CPU") == 1  # not in every table row
    table = terminal.split("wrote ")[0]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80, table
    assert "test err %" in table and "gap pts" in table
