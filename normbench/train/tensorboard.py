"""TensorBoard logging (`tensorboard: true`): the rows of steps.csv and epochs.csv as scalars, live.

Each lane writes into `<run dir>/tensorboard/` through torch.utils.tensorboard.SummaryWriter, with
the global step as x axis. The values are the Python floats the CSV rows hold, so logging adds no
host sync. Ranks other than 0 of a data-parallel run write nothing, as they write no CSV.
"""

from __future__ import annotations

import math

from normbench.errors import ConfigError
from normbench.results import NullRunDir

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'normbench[tensorboard]'"
# steps.csv column -> scalar tag, written every `log_every` steps
STEP_TAGS = {"train_loss": "train/loss", "lr": "lr", "samples_per_s": "samples_per_s"}
# epochs.csv column -> scalar tag, written at each epoch's end
EPOCH_TAGS = {"train_loss": "train/epoch_loss", "train_acc": "train/acc", "train_eval_acc": "train/eval_acc",
              "val_loss": "val/loss", "val_acc": "val/acc", "test_loss": "test/loss", "test_acc": "test/acc"}


def summary_writer_class():
    """torch's SummaryWriter; a ConfigError naming the extra when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError (or ModuleNotFoundError) without `tensorboard`
        raise ConfigError(f"tensorboard: true needs the tensorboard package; {INSTALL_HINT}, or set tensorboard: false") from None
    return SummaryWriter


class TensorBoardLog:
    """One SummaryWriter per writing lane; `enabled=False` writes nothing and imports nothing."""

    def __init__(self, lanes: list, enabled: bool, start_step: int = 0, flush_secs: int = 10):
        self.writers = {}
        if not enabled:
            return
        writer = summary_writer_class()
        for j, lane in enumerate(lanes):
            if isinstance(lane.run_dir, NullRunDir):
                continue
            # purge_step: a resumed run drops the events logged after its checkpoint, as steps.csv does
            self.writers[j] = writer(log_dir=str(lane.run_dir.path / TENSORBOARD_DIR), flush_secs=flush_secs,
                                     purge_step=start_step or None)

    def write(self, lane: int, row: dict, tags: dict[str, str], step: int) -> None:
        """Lane `lane`'s values of `row` under `tags`, at global step `step`; empty and non-finite cells skipped."""
        writer = self.writers.get(lane)
        if writer is None:
            return
        for column, tag in tags.items():
            value = row.get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(tag, value, step)

    def steps_row(self, lane: int, row: dict) -> None:
        """A steps.csv row: training loss, learning rate and samples/s."""
        self.write(lane, row, STEP_TAGS, row["step"])

    def epochs_row(self, lane: int, row: dict, step: int) -> None:
        """An epochs.csv row: train, val and test loss and accuracy; flushed so TensorBoard shows it now."""
        self.write(lane, row, EPOCH_TAGS, step)
        if lane in self.writers:
            self.writers[lane].flush()

    def close(self) -> None:
        """Flush and close every writer."""
        for writer in self.writers.values():
            writer.close()
