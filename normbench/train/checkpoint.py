"""Checkpoints: everything a run needs to continue exactly where it stopped, in one file.

A checkpoint holds the model, the optimizer, the schedule, the loss scaler, every random state
(Python, NumPy, torch CPU and CUDA, each lane's data-order generator), the per-lane loss and
correct sums of the epoch in progress, the loop's position and each lane's standing. It is
written atomically (write, fsync, rename) as the run directory's `checkpoint.pt`, replacing the
previous one, and read back with `torch.load(weights_only=True)`: plain tensors and numbers, no
pickled code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


def save_atomic(path: Path, obj) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict:
    """A checkpoint or saved model, tensors on the CPU (no code is unpickled)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """Python's, NumPy's and torch's global random states, as tensors and numbers."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """Python's random state with its nested lists back as tuples (as random.setstate needs)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def trainer_state(trainer) -> dict:
    """The trainer's model, step (optimizer, schedule, scaler, sums) and data-order generators."""
    return {
        "model": trainer.model.state_dict(),
        "step": trainer.step.state_dict(),
        "orders": [g.get_state() for g in trainer.orders],
    }


def load_trainer_state(trainer, state: dict) -> None:
    """Restore what `trainer_state` returned into a freshly built trainer."""
    trainer.model.load_state_dict(state["model"])
    trainer.step.load_state_dict(state["step"])
    for generator, saved in zip(trainer.orders, state["orders"]):
        generator.set_state(saved)


class Checkpointer:
    """Writes a trainer's checkpoint into its first lane's run directory every `every` epochs
    (and when a run is stopped); `every` 0 writes none. Only the main process writes."""

    def __init__(self, trainer, every: int):
        self.trainer, self.every = trainer, every
        self.path = trainer.lanes[0].run_dir.path / CHECKPOINT_FILE

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether to checkpoint after `epoch` (never after the last: the run then completes)."""
        return self.every > 0 and epoch < last_epoch and epoch % self.every == 0

    def save(self, position: dict) -> None:
        """Write the checkpoint for the loop at `position`; record it in every lane's meta.json."""
        if self.every == 0 or not self.trainer.world.is_main:
            return
        lanes = self.trainer.lanes
        save_atomic(self.path, {
            "position": position,
            "trainer": trainer_state(self.trainer),
            "lanes": [{"status": l.status, "reason": l.reason, "final": l.final, "best_test_acc": l.best_test_acc}
                      for l in lanes],
            "rng": rng_state(),
        })
        where = {"epoch": position["epoch"], "step": position["steps_done"]}
        for lane in lanes:
            relative = os.path.relpath(self.path, lane.run_dir.path)
            lane.run_dir.update_meta(checkpoint={"file": relative, **where})

    def restore(self, state: dict) -> dict:
        """Load a checkpoint into the trainer and its lanes; returns the loop position."""
        load_trainer_state(self.trainer, state["trainer"])
        for lane, standing in zip(self.trainer.lanes, state["lanes"]):
            lane.status, lane.reason = standing["status"], standing["reason"]
            lane.final, lane.best_test_acc = dict(standing["final"]), standing["best_test_acc"]
        set_rng_state(state["rng"])
        return state["position"]

    def remove(self) -> None:
        """Delete the checkpoint of a completed run (its model.pt stays)."""
        if self.trainer.world.is_main:
            self.path.unlink(missing_ok=True)
