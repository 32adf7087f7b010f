"""The edge of the command line, shared by every command: errors become one red line and an exit
code, misplaced arguments get a hint, SIGTERM ends a command like Ctrl-C, flags show no type label."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from normbench.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, NormbenchError
from normbench.values import misplaced_hint

ARGS_KEY = "normbench.args"  # ctx.meta: the command's own arguments, as typed
LIST_OPTIONS = {"--batch-sizes", "--norms", "--seeds"}  # one comma-separated value each


def fail(message: str, code: int) -> None:
    """Print one red error line on stderr and exit with `code`."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def no_flag_metavars(params: list) -> list:
    """The parameters, each on/off flag without a `<bool>` type label in help (it takes no value)."""
    for param in params:
        if param.param_type_name == "option" and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose misplaced arguments get a hint (values.misplaced_hint) and exit code 2."""

    def parse_args(self, ctx, args):
        """Refuse `--batch-sizes 2 8 64` and `norm.type=group` with what to type instead; else parse."""
        value_options = {o for p in self.get_params(ctx) if p.param_type_name == "option" and not p.is_flag
                         for o in p.opts}
        hint = misplaced_hint(list(args), value_options, LIST_OPTIONS, lambda token: Path(token).exists())
        if hint:
            fail(hint, EXIT_USAGE)
        ctx.meta[ARGS_KEY] = list(args)
        return super().parse_args(ctx, args)

    def get_params(self, ctx):
        """The parameters, flags without a type label."""
        return no_flag_metavars(super().get_params(ctx))


class Group(TyperGroup):
    """The `normbench` group: its flags (--version, --install-completion) without a type label."""

    def get_params(self, ctx):
        """The parameters, flags without a type label."""
        return no_flag_metavars(super().get_params(ctx))


def handle_errors(command):
    """Turn NormbenchError, Ctrl-C and a full disk into a one-line message and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from normbench.results import DISK_FULL

        try:
            return command(*args, **kwargs)
        except NormbenchError as exc:
            fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            where = f" writing '{exc.filename}'" if exc.filename else ""
            fail(f"{exc.strerror}{where}; free some space and run the command again", EXIT_ERROR)

    return wrapper


def sigterm_as_interrupt() -> None:
    """Let SIGTERM end a run like Ctrl-C does: status recorded, files flushed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. some test runners)
        pass


def command_argv(ctx) -> list[str]:
    """The command line as typed: `normbench`, the command's name and its arguments."""
    return ["normbench", ctx.info_name, *ctx.meta.get(ARGS_KEY, [])]
