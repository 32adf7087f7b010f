"""Progress reporting for training: a silent reporter and a rich progress bar.

The training loop calls `start`, then `advance` once per step (cheap: no device sync), `log`
at every logged step (loss and speed are known then), `epoch` after each evaluation and `finish`.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column


class Reporter:
    """A reporter that shows nothing (tests, sweeps with their own display)."""

    def start(self, name: str, total_steps: int, epochs: int) -> None: ...

    def advance(self, steps: int = 1) -> None: ...

    def log(self, epoch: int, loss: float, samples_per_s: float) -> None: ...

    def epoch(self, row: dict, epochs: int) -> None: ...

    def finish(self) -> None: ...


class RichReporter(Reporter):
    """A rich progress bar with epoch, step, loss and samples/s, plus one line per epoch."""

    def __init__(self, console: Console | None = None, transient: bool = False):
        self.console = console or Console()  # stdout, as the CLI's own console
        self.transient = transient
        self.progress: Progress | None = None
        self.task = None

    def start(self, name: str, total_steps: int, epochs: int) -> None:
        """Show the bar; at under 100 columns without the speed and elapsed time, so nothing is cut."""
        wide = self.console.width >= 100
        fixed = Column(no_wrap=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(overflow="fold", ratio=1)),
            BarColumn(bar_width=None if wide else 10),
            MofNCompleteColumn(table_column=fixed),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}", table_column=fixed),
            TextColumn("loss {task.fields[loss]}", table_column=fixed),
            *((TextColumn("{task.fields[speed]} samples/s", table_column=fixed), TimeElapsedColumn()) if wide else ()),
            TimeRemainingColumn(),
            console=self.console,
            transient=self.transient,
        )
        self.progress.start()
        self.task = self.progress.add_task(name, total=total_steps, epoch=1, epochs=epochs, loss="-", speed="-")

    def advance(self, steps: int = 1) -> None:
        self.progress.advance(self.task, steps)

    def log(self, epoch: int, loss: float, samples_per_s: float) -> None:
        self.progress.update(self.task, epoch=epoch, loss=f"{loss:.4f}", speed=f"{samples_per_s:,.0f}")

    def epoch(self, row: dict, epochs: int) -> None:
        self.progress.console.print(
            f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
            f"test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f}  "
            f"{row['samples_per_s']:,.0f} samples/s  {row['epoch_s']:.1f} s",
            highlight=False, soft_wrap=True,
        )

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
