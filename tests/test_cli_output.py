"""What the command line prints: help that helps, tables and progress readable at 80 columns and
when piped, paths never wrapped or cut."""

import pytest

from normbench.cli import app

COMMANDS = ["run", "eval", "bench", "norms", "sweep", "report", "configs", "export", "export mlflow"]


def help_text(runner, *args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_an_example_and_no_bool_label(runner, command):
    text = help_text(runner, *command.split())
    assert "Example: normbench " + command in text
    assert "<bool>" not in text


def test_help_shows_literal_brackets(runner):
    text = " ".join(help_text(runner, "sweep").replace("│", " ").split())
    assert "pip install 'normbench[ray]'" in text and "\\[" not in text


def test_shell_completion_is_installable(runner):
    text = help_text(runner)
    assert "--install-completion" in text and "--show-completion" in text


# --- sweep output at 80 columns, narrow and piped ----------------------------------------------


def unbroken(path, text: str) -> bool:
    """`path` appears whole on one line of `text`."""
    return any(str(path) in line for line in text.splitlines())


def test_sweep_output_at_80_columns_cuts_nothing(runner, write_config, tmp_path):
    results = tmp_path / "a-results-folder-with-a-long-name" / "and-another-level" / "results"
    result = runner.invoke(app, ["sweep", str(write_config(epochs=1)), "--results-dir", str(results), "--jobs", "1",
                                 "--norms", "batch,layer", "--batch-sizes", "1,16", "--grid", "optimizer.lr=0.01"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "…" not in out
    for header in ("norm", "bs", "seed", "optimizer.lr", "status", "test_acc", "samples/s", "wall s"):
        assert header in out
    (path,) = (results / "sweeps").iterdir()
    assert unbroken(path, out) and unbroken(path / "index.csv", out)
    assert unbroken(f"normbench report {path}", out)
    assert "norm=batch_bs=1_seed=0_optimizer.lr=0.01 (invalid): batch_size=1 with" in " ".join(out.split())


def sweep_outputs(console, base, axes, tmp_path):
    from normbench.sweep.plan import run_sweep

    return run_sweep(base, axes, console, jobs=1, results_dir=tmp_path / "r")


@pytest.mark.parametrize("width, terminal", [(80, False), (80, True), (56, False)])
def test_sweep_tables_and_bars_fit_narrow_and_piped_consoles(tmp_path, width, terminal):
    import io

    from rich.console import Console

    from normbench.config import validate
    from normbench.sweep.grid import build_axes

    from conftest import tiny_config

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None)
    base = validate(tiny_config(epochs=1, name="a-base-config-with-a-long-name"), "t")
    axes = build_axes(["batch_renorm", "spectral_norm"], [16], [0], [])
    assert sweep_outputs(console, base, axes, tmp_path) == 0
    out = buffer.getvalue()
    assert "…" not in out, out
    assert "normbench report " + str(tmp_path / "r" / "sweeps") in out
    if not terminal:  # only a path or the sweep's name may run past the width, on a line of its own
        (path,) = (tmp_path / "r" / "sweeps").iterdir()
        assert all(len(line) <= width for line in out.splitlines() if "/" not in line and path.name not in line), out


def test_a_points_stderr_goes_to_its_log_not_the_terminal(runner, write_config, tmp_path, monkeypatch, capfd):
    import os
    import sys

    from normbench.sweep import point
    from normbench.sweep.point import PointResult

    def noisy_point(task, reporter=None, data_cache=None):
        print("UserWarning: planted python warning", file=sys.stderr)
        os.write(2, b"planted C++ warning\n")
        return PointResult(task.point_id, "failed", "planted failure")

    monkeypatch.setattr(point, "run_point", noisy_point)
    results = tmp_path / "r"
    result = runner.invoke(app, ["sweep", str(write_config()), "--results-dir", str(results), "--jobs", "1",
                                 "--norms", "layer"], env={"COLUMNS": "80"})
    terminal = result.output + result.stderr + "".join(capfd.readouterr())
    assert result.exit_code == 1, result.output
    assert "planted python warning" not in terminal and "planted C++" not in terminal
    (log,) = (results / "sweeps").glob("*/logs/norm=layer_bs=16_seed=0.log")
    text = log.read_text()
    assert "planted python warning" in text and "planted C++ warning" in text
    assert unbroken(f"log: {log}", result.output)


def test_norms_table_keeps_its_headers_at_80_columns(runner):
    result = runner.invoke(app, ["norms"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.output
    assert any(line.split()[:1] == ["name"] and line.split()[-1] == "batch" for line in result.output.splitlines())


@pytest.mark.parametrize("width", [80, 60])
def test_a_runs_progress_bar_cuts_nothing_at_narrow_widths(width):
    import io

    from rich.console import Console

    from normbench.train.progress import RichReporter

    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, width=width, force_terminal=True, color_system=None))
    reporter.start("quickstart-norm=group-bs=8", 12345, 3)
    reporter.advance(377)
    reporter.log(1, 0.1234, 12345.6)
    reporter.progress.refresh()
    reporter.finish()
    out = buffer.getvalue()
    assert "377/12345" in out and "…" not in out
