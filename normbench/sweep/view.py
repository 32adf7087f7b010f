"""What a sweep shows: the plan table, live progress (overall and per run), the summary table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

STATUS_STYLE = {
    "completed": "green", "diverged": "yellow", "failed": "red", "interrupted": "red", "invalid": "magenta",
    "running": "red", "incomplete": "red", "pending": "dim",
}


def _fmt(value, digits: int = 4) -> str:
    if value in ("", None):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def plan_table(name: str, axes, states, budget: str, threads: int, jobs: int, norms_from: str = "--norms") -> Table:
    """Every point: its grid values, learning rate, and whether it runs, is skipped or is invalid; the
    title says where the norms came from (`norms_from`)."""
    norms = ",".join(map(str, next(a.values for a in axes if a.key == "norm.type")))
    title = (f"sweep {name}: {len(states)} points, {budget} each; {jobs} worker(s) x {threads} thread(s)\n"
             f"norms: {norms} (from {norms_from})")
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    for axis in axes:
        table.add_column(axis.key)
    table.add_column("lr", justify="right")
    table.add_column("plan")
    for i, (point, _, label) in enumerate(states, 1):
        lr = f"{point.config.optimizer.lr:.4g}" if point.config else "-"
        plan = f"[magenta]invalid: {point.invalid}[/]" if point.invalid else label
        table.add_row(str(i), *(str(v) for v in point.values.values()), lr, plan)
    return table


def summary_table(name: str, axes, rows: list[dict]) -> Table:
    """One row per point: status, test accuracy, speed, wall time and any reason."""
    table = Table(title=f"sweep {name}: summary", title_justify="left")
    for axis in axes:
        table.add_column(axis.key)
    for column in ("status", "test_acc", "samples/s", "wall s", "reason"):
        table.add_column(column, justify="right" if column in ("test_acc", "samples/s", "wall s") else "left")
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        speed = row["samples_per_s"]
        table.add_row(
            *(str(row[a.key]) for a in axes), f"[{style}]{row['status']}[/]", _fmt(row["test_acc"]),
            f"{speed:,.0f}" if isinstance(speed, float) else "-", _fmt(row["wall_s"], 1), row["reason"],
        )
    return table


class SweepProgress:
    """Overall progress (points done / total, ETA) and one bar per run in flight.

    `handle` takes the (point_id, kind, payload) events of sweep.EventReporter."""

    def __init__(self, console: Console, total: int, done: int = 0):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
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
        """A point ended: drop its bar, print one line, advance the overall bar."""
        if result.point_id in self.tasks:
            self.progress.remove_task(self.tasks.pop(result.point_id))
        style = STATUS_STYLE.get(result.status, "")
        reason = f": {result.reason}" if result.reason and result.status != "completed" else ""
        self.progress.console.print(
            f"[{style}]{result.status}[/] {result.point_id} ({result.wall_s:.1f} s){reason}", highlight=False, soft_wrap=True)
        self.progress.advance(self.overall)
