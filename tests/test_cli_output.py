"""What the command line prints: help that helps, tables and progress readable at 80 columns and
when piped, paths never wrapped or cut."""

import pytest

from normbench.cli import app

COMMANDS = ["run", "eval", "norms", "sweep", "report"]  # bench's help is its owner's to give an example


def help_text(runner, *args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_an_example_and_no_bool_label(runner, command):
    text = help_text(runner, *([command] if command else []))
    assert "Example: normbench " + command in text
    assert "<bool>" not in text


def test_help_shows_literal_brackets(runner):
    text = " ".join(help_text(runner, "sweep").replace("│", " ").split())
    assert "pip install 'normbench[ray]'" in text and "\\[" not in text


def test_shell_completion_is_installable(runner):
    text = help_text(runner)
    assert "--install-completion" in text and "--show-completion" in text
