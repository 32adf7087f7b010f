"""What a sweep shows: the plan table, live progress (overall and per run), the summary table."""

from __future__ import annotations

import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

STATUS_STYLE = {
    "completed": "green", "diverged": "yellow", "failed": "red", "interrupted": "red", "invalid": "magenta",
    "running": "red", "incomplete": "red", "pending": "dim",
}


def _fmt(value, digits: int = 4) -> str:
    if value in ("", None):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def header(key: str) -> str:
    """A column header for a grid key: the short name of a common key (norm, bs, seed), else the key."""
    from normbench.sweep.grid import SHORT_KEYS

    return SHORT_KEYS.get(key, key)


def narrow_table(columns: list[tuple[str, str]]) -> Table:
    """A table for 80 columns and pipes: no vertical rules, every header whole (a column is never
    narrower than its header), long cells wrapped instead of cut with an ellipsis."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for title, justify in columns:
        table.add_column(title, justify=justify, min_width=len(title), overflow="fold")
    return table


def plan_header(name: str, axes, points: int, budget: str, threads: int, jobs: int, norms_from: str) -> list[str]:
    """The lines above the plan: the sweep's name (a line of its own: never wrapped), its size,
    budget and workers, and its norms with where they come from."""
    norms = ", ".join(map(str, next(a.values for a in axes if a.key == "norm.type")))
    return [f"sweep {name}", f"{points} points, {budget} each; {jobs} worker(s) x {threads} thread(s)",
            f"norms: {norms} (from {norms_from})"]


def plan_table(axes, states, notes: dict[str, str] | None = None) -> Table:
    """Every point: its grid values, learning rate, and whether it runs (packed with its other
    seeds or alone, as `notes` say by point id), is skipped or is invalid."""
    notes = notes or {}
    table = narrow_table([("#", "right"), *((header(a.key), "left") for a in axes), ("lr", "right"), ("plan", "left")])
    for i, (point, _, label) in enumerate(states, 1):
        lr = f"{point.config.optimizer.lr:.4g}" if point.config else "-"
        note = notes.get(point.point_id)
        plan = f"[magenta]invalid: {escape(point.invalid)}[/]" if point.invalid else \
            escape(f"{label}, {note}" if note else label)
        table.add_row(str(i), *(escape(str(v)) for v in point.values.values()), lr, plan)
    return table


def summary_table(axes, rows: list[dict]) -> Table:
    """One row per point: status, test accuracy, speed and wall time (reasons are printed below it)."""
    table = narrow_table([*((header(a.key), "left") for a in axes), ("status", "left"), ("test_acc", "right"),
                          ("samples/s", "right"), ("wall s", "right")])
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        speed = row["samples_per_s"]
        table.add_row(
            *(escape(str(row[a.key])) for a in axes), f"[{style}]{row['status']}[/]", _fmt(row["test_acc"]),
            f"{speed:,.0f}" if isinstance(speed, float) else "-", _fmt(row["wall_s"], 1),
        )
    return table


def reason_lines(rows: list[dict]) -> list[str]:
    """A heading and one line per point that did not complete and says why: `  <point> (<status>): <reason>`."""
    lines = [f"  {row['point']} ({row['status']}): {row['reason']}" for row in rows if row["reason"]]
    return ["why points did not complete:", *lines] if lines else []


class SweepProgress:
    """Overall progress (points done / total, ETA) and one bar per run in flight, fitted to the
    console's width: at under 100 columns the loss and elapsed-time columns are left out, and a long
    point id wraps rather than cutting the step counts.

    `handle` takes the (point_id, kind, payload) events of sweep.EventReporter; `logs` is the folder
    of the points' stderr logs, named when a point fails."""

    def __init__(self, console: Console, total: int, done: int = 0, logs: Path | None = None):
        self.console, self.logs = console, logs
        wide = console.width >= 100
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(overflow="fold", ratio=1)),
            BarColumn(bar_width=None if wide else 10),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            *((TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True)), TimeElapsedColumn()) if wide else ()),
            TimeRemainingColumn(), console=console, expand=False,
        )
        self.overall = self.progress.add_task("points", total=total, completed=done, info="")
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def handle(self, event) -> None:
        """Apply one progress event from a run."""
        point_id, kind, payload = event
        if kind == "start":
            self.started[point_id] = time.monotonic()
            if point_id in self.tasks:
                self.progress.remove_task(self.tasks.pop(point_id))
            self.tasks[point_id] = self.progress.add_task(f"  {point_id}", total=payload["total"], info="")
        elif kind == "advance" and point_id in self.tasks:
            self.progress.advance(self.tasks[point_id], payload)
        elif kind == "log" and point_id in self.tasks:
            info = f"loss {payload['loss']:.4f}  {payload['speed']:,.0f} samples/s"
            self.progress.update(self.tasks[point_id], info=info)

    def point_done(self, result) -> None:
        """A point ended: drop its bar (its pack's), print one line, advance the overall bar."""
        bar = result.group or result.point_id
        if bar in self.tasks:
            self.progress.remove_task(self.tasks.pop(bar))
        style = STATUS_STYLE.get(result.status, "")
        reason = f": {result.reason}" if result.reason and result.status != "completed" else ""
        self.progress.console.print(
            f"[{style}]{result.status}[/] {escape(result.point_id)} ({result.wall_s:.1f} s){escape(reason)}",
            highlight=False, soft_wrap=True)
        log = self.logs / f"{result.point_id}.log" if self.logs else None
        if result.status not in ("completed", "interrupted") and log is not None and log.exists():
            self.progress.console.print(f"  log: {log}", highlight=False, soft_wrap=True, markup=False)
        self.progress.advance(self.overall)
