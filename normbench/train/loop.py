"""The training loop: data order, steps, logging, evaluation and diagnostics, checkpoints.

One loop serves every kind of run. What differs (one model or K packed seeds, one process or a
rank of many) is in the trainer it is given (`normbench.train.lanes`): the loop asks it for
batches, calls its step, and writes each lane's rows into that lane's run directory.
Host syncs happen only at logged steps and epoch ends. A loop can start from a checkpoint's
position, mid-epoch included, and continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import signal
import threading
import time

import torch

from normbench.results import EPOCH_COLUMNS
from normbench.runtime import synchronize
from normbench.train.checkpoint import Checkpointer
from normbench.train.evaluate import TrainSubset
from normbench.train.progress import Reporter
from normbench.train.tensorboard import TensorBoardLog


class StopRequests:
    """Inside: the first Ctrl-C or SIGTERM asks the loop to stop at the next step boundary (after
    a checkpoint); a second one interrupts at once. Off outside the main thread, and for
    data-parallel ranks, whose peers must stop at the same step."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequests":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Loop:
    """Trains a trainer's lanes for the planned steps, writing steps.csv, epochs.csv and meta.json."""

    def __init__(self, trainer, reporter: Reporter, checkpoint_every: int = 0, resume: dict | None = None):
        self.trainer, self.reporter = trainer, reporter
        self.cfg, self.step = trainer.cfg, trainer.step
        self.steps_per_epoch, self.total_steps, self.epochs = trainer.plan
        self.checkpoints = Checkpointer(trainer, checkpoint_every)
        self.stop = StopRequests(False)
        zeros = [0.0] * len(trainer.lanes)
        self.position = {"epoch": 1, "in_epoch": 0, "steps_done": 0, "samples_seen": 0, "train_s": 0.0,
                         "elapsed_s": 0.0, "epoch_s": 0.0, "window": (0, zeros), "epoch_orders": None}
        if resume is not None:
            self.position = self.checkpoints.restore(resume)
        self.run_start = time.perf_counter() - self.position["elapsed_s"]
        self.train_subset = TrainSubset(len(trainer.lanes[0].data.train_y), trainer.device)
        self.tensorboard = TensorBoardLog(trainer.lanes, self.cfg.tensorboard, self.position["steps_done"])

    def alive(self) -> list[int]:
        """Indices of the lanes still training."""
        return [j for j, lane in enumerate(self.trainer.lanes) if lane.status == "running"]

    def run(self) -> None:
        """Every epoch of the plan from the loop's position, or until every lane has diverged."""
        lanes = self.trainer.lanes
        name = self.cfg.name if len(lanes) == 1 else f"{self.cfg.name} x{len(lanes)} packed"
        self.reporter.start(name, self.total_steps, self.epochs)
        if self.position["steps_done"]:
            self.reporter.advance(self.position["steps_done"])
        try:
            with StopRequests(self.checkpoints.every > 0 and not self.trainer.world.data_parallel) as self.stop:
                for epoch in range(self.position["epoch"], self.epochs + 1):
                    if not self.train_epoch(epoch) or not self.end_epoch(epoch):
                        break
                    if self.checkpoints.due(epoch, self.epochs) or (self.stop.requested and epoch < self.epochs):
                        self.checkpoints.save(self.at(epoch + 1, 0))
                    if self.stop.requested and epoch < self.epochs:
                        raise KeyboardInterrupt
            self.checkpoints.remove()
        finally:
            self.tensorboard.close()
            self.trainer.close()

    def at(self, epoch: int, in_epoch: int) -> dict:
        """The loop's position before step `in_epoch` + 1 of `epoch` (what a checkpoint records)."""
        p = self.position
        return {**p, "epoch": epoch, "in_epoch": in_epoch, "elapsed_s": time.perf_counter() - self.run_start,
                "epoch_orders": p["epoch_orders"] if in_epoch else None}

    def start_epoch(self) -> tuple[list[torch.Tensor], int]:
        """The epoch's data orders and the step to start at (0, or where a checkpoint stopped)."""
        trainer, p = self.trainer, self.position
        start = p["in_epoch"]
        if start:  # resumed mid-epoch: draw this epoch's orders again, sums come from the checkpoint
            for generator, state in zip(trainer.orders, p["epoch_orders"]):
                generator.set_state(state)
        else:
            p["epoch_orders"] = [g.get_state() for g in trainer.orders]
            p["epoch_s"], p["window"] = 0.0, (0, [0.0] * len(trainer.lanes))
            self.step.reset()
        n_train = len(trainer.lanes[0].data.train_y)
        return [torch.randperm(n_train, generator=g).to(trainer.device) for g in trainer.orders], start

    def train_epoch(self, epoch: int) -> bool:
        """One epoch's steps; False once every lane has diverged."""
        trainer, p = self.trainer, self.position
        trainer.model.train()
        perms, start = self.start_epoch()
        p["in_epoch"] = 0
        self.epoch_steps = min(self.steps_per_epoch, self.total_steps - p["steps_done"] + start)
        epoch_start = self.window_time = time.perf_counter()
        for i in range(start, self.epoch_steps):
            xb, yb = trainer.batch(perms, i)
            trainer.before_step(p["steps_done"] + 1)
            self.step(xb, yb)
            p["steps_done"] += 1
            p["samples_seen"] += self.cfg.batch_size
            trainer.after_step(p["steps_done"], epoch)
            self.reporter.advance()
            if p["steps_done"] % self.cfg.log_every == 0 or i == self.epoch_steps - 1:
                if not self.log_window(epoch, i + 1):
                    return False
            if self.stop.requested and i + 1 < self.epoch_steps:
                self.stopping(epoch, i + 1, time.perf_counter() - epoch_start)
        synchronize(trainer.device)
        self.epoch_s = p["epoch_s"] + time.perf_counter() - epoch_start
        p["train_s"] += self.epoch_s - p["epoch_s"]
        return True

    def stopping(self, epoch: int, in_epoch: int, epoch_s: float) -> None:
        """Checkpoint the position after step `in_epoch` of `epoch`, then end the run as interrupted."""
        synchronize(self.trainer.device)
        p = self.position
        p["train_s"] += epoch_s
        p["epoch_s"] += epoch_s
        self.checkpoints.save(self.at(epoch, in_epoch))
        raise KeyboardInterrupt

    def log_window(self, epoch: int, done: int) -> bool:
        """A steps.csv row per lane for the steps since the last logged one; False once all diverged."""
        p = self.position
        cumulative = self.trainer.world.reduce(self.step.loss_sum, mean=True)  # the one host sync per logged step
        now = time.perf_counter()
        last_done, last_loss = p["window"]
        window = done - last_done
        window_loss = [(c - b) / window for c, b in zip(cumulative, last_loss)]
        speed = window * self.cfg.batch_size / max(now - self.window_time, 1e-9)  # per lane
        for j in self.alive():
            row = {"step": p["steps_done"], "epoch": epoch, "samples_seen": p["samples_seen"],
                   "train_loss": window_loss[j], "lr": self.step.lr, "samples_per_s": speed,
                   "elapsed_s": now - self.run_start}
            self.trainer.lanes[j].run_dir.steps.write(row)
            self.tensorboard.steps_row(j, row)
            if not math.isfinite(window_loss[j]):
                self.trainer.lanes[j].diverge(f"training loss became {window_loss[j]} at step {p['steps_done']} (epoch {epoch})")
        alive = self.alive()
        if not alive:
            return False
        self.reporter.log(epoch, sum(window_loss[j] for j in alive) / len(alive), speed * len(alive))
        p["window"], self.window_time = (done, cumulative), now
        return True

    def end_epoch(self, epoch: int) -> bool:
        """Evaluate, write each lane's epochs.csv row and final metrics; False once all diverged."""
        eval_start = time.perf_counter()
        tests, vals = self.trainer.evaluate("test"), self.trainer.evaluate("val")
        train_evals = self.train_subset.accuracies(self.trainer)
        eval_s = time.perf_counter() - eval_start
        extras = self.trainer.diagnostics(epoch)
        losses = self.trainer.world.reduce(self.step.loss_sum, mean=True)
        correct = self.trainer.world.reduce(self.step.correct)
        p = self.position
        for j in self.alive():
            row = {
                "epoch": epoch, "samples_seen": p["samples_seen"],
                "train_loss": losses[j] / self.epoch_steps,
                "train_acc": correct[j] / (self.epoch_steps * self.cfg.batch_size), "train_eval_acc": train_evals[j],
                "test_loss": tests[j][0], "test_acc": tests[j][1],
                "val_loss": vals[j] and vals[j][0], "val_acc": vals[j] and vals[j][1],
                "samples_per_s": self.epoch_steps * self.cfg.batch_size / self.epoch_s,
                "epoch_s": self.epoch_s, "eval_s": eval_s, "lr": self.step.lr, **extras[j],
            }
            self.tensorboard.epochs_row(j, row, p["steps_done"])
            self.record_epoch(self.trainer.lanes[j], {column: row.get(column) for column in EPOCH_COLUMNS},
                              train_evals[j])
        return bool(self.alive())

    def record_epoch(self, lane, row: dict, train_eval_acc: float) -> None:
        """Write one lane's epoch row, then its final metrics (with the eval-mode accuracy on the fixed
        training subset, whether or not epochs.csv has that column), or its divergence."""
        lane.run_dir.epochs.write(row)
        self.reporter.epoch(row, self.epochs)
        if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
            lane.diverge(f"loss became non-finite in epoch {row['epoch']} (train {row['train_loss']}, test {row['test_loss']})")
            return
        p = self.position
        lane.best_test_acc = max(lane.best_test_acc, row["test_acc"])
        lane.final = {
            "final_test_acc": row["test_acc"], "final_test_loss": row["test_loss"],
            "final_train_loss": row["train_loss"], "final_train_acc": row["train_acc"],
            "final_train_eval_acc": train_eval_acc,
            "final_val_loss": row["val_loss"], "final_val_acc": row["val_acc"],
            "best_test_acc": lane.best_test_acc, "epochs_done": row["epoch"], "steps_done": p["steps_done"],
            "samples_seen": p["samples_seen"], "train_s": p["train_s"],
            "mean_samples_per_s": p["samples_seen"] / p["train_s"],
        }
        lane.run_dir.update_meta(**lane.final)
