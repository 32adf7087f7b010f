"""The training loop: data order, steps, logging, evaluation and diagnostics, meta.json.

One loop serves every kind of run. What differs (one model or K packed seeds, one process or a
rank of many) is in the trainer it is given (`normbench.train.lanes`): the loop asks it for
batches, calls its step, and writes each lane's rows into that lane's run directory.
Host syncs happen only at logged steps and epoch ends.
"""

from __future__ import annotations

import math
import time

import torch

from normbench.results import EPOCH_COLUMNS
from normbench.runtime import synchronize
from normbench.train.progress import Reporter


class Loop:
    """Trains a trainer's lanes for the planned steps, writing steps.csv, epochs.csv and meta.json."""

    def __init__(self, trainer, reporter: Reporter):
        self.trainer, self.reporter = trainer, reporter
        self.cfg, self.step = trainer.cfg, trainer.step
        self.steps_per_epoch, self.total_steps, self.epochs = trainer.plan
        self.steps_done, self.samples_seen, self.train_s = 0, 0, 0.0
        self.run_start = time.perf_counter()
        self.window_start = (0, [0.0] * len(trainer.lanes), self.run_start)  # (step in epoch, loss sums, time)

    def alive(self) -> list[int]:
        """Indices of the lanes still training."""
        return [j for j, lane in enumerate(self.trainer.lanes) if lane.status == "running"]

    def run(self) -> None:
        """Every epoch of the plan, or until every lane has diverged."""
        lanes = self.trainer.lanes
        name = self.cfg.name if len(lanes) == 1 else f"{self.cfg.name} x{len(lanes)} packed"
        self.reporter.start(name, self.total_steps, self.epochs)
        try:
            for epoch in range(1, self.epochs + 1):
                if not self.train_epoch(epoch) or not self.end_epoch(epoch):
                    return
        finally:
            self.trainer.close()

    def train_epoch(self, epoch: int) -> bool:
        """One epoch's steps; False once every lane has diverged."""
        trainer = self.trainer
        trainer.model.train()
        n_train = len(trainer.lanes[0].data.train_y)
        perms = [torch.randperm(n_train, generator=g).to(trainer.device) for g in trainer.orders]
        self.epoch_steps = min(self.steps_per_epoch, self.total_steps - self.steps_done)
        self.step.reset()
        self.window_start = (0, [0.0] * len(trainer.lanes), time.perf_counter())
        epoch_start = self.window_start[2]
        for i in range(self.epoch_steps):
            xb, yb = trainer.batch(perms, i)
            trainer.before_step(self.steps_done + 1)
            self.step(xb, yb)
            self.steps_done += 1
            self.samples_seen += self.cfg.batch_size
            trainer.after_step(self.steps_done, epoch)
            self.reporter.advance()
            if self.steps_done % self.cfg.log_every == 0 or i == self.epoch_steps - 1:
                if not self.log_window(epoch, i + 1):
                    return False
        synchronize(trainer.device)
        self.epoch_s = time.perf_counter() - epoch_start
        self.train_s += self.epoch_s
        return True

    def log_window(self, epoch: int, done: int) -> bool:
        """A steps.csv row per lane for the steps since the last logged one; False once all diverged."""
        cumulative = self.trainer.world.reduce(self.step.loss_sum, mean=True)  # the one host sync per logged step
        now = time.perf_counter()
        last_done, last_loss, last_time = self.window_start
        window = done - last_done
        window_loss = [(c - b) / window for c, b in zip(cumulative, last_loss)]
        speed = window * self.cfg.batch_size / max(now - last_time, 1e-9)  # per lane
        for j in self.alive():
            self.trainer.lanes[j].run_dir.steps.write({
                "step": self.steps_done, "epoch": epoch, "samples_seen": self.samples_seen,
                "train_loss": window_loss[j], "lr": self.step.lr, "samples_per_s": speed,
                "elapsed_s": now - self.run_start,
            })
            if not math.isfinite(window_loss[j]):
                self.trainer.lanes[j].diverge(f"training loss became {window_loss[j]} at step {self.steps_done} (epoch {epoch})")
        alive = self.alive()
        if not alive:
            return False
        self.reporter.log(epoch, sum(window_loss[j] for j in alive) / len(alive), speed * len(alive))
        self.window_start = (done, cumulative, now)
        return True

    def end_epoch(self, epoch: int) -> bool:
        """Evaluate, write each lane's epochs.csv row and final metrics; False once all diverged."""
        eval_start = time.perf_counter()
        tests = self.trainer.evaluate()
        eval_s = time.perf_counter() - eval_start
        extras = self.trainer.diagnostics(epoch)
        losses = self.trainer.world.reduce(self.step.loss_sum, mean=True)
        correct = self.trainer.world.reduce(self.step.correct)
        for j in self.alive():
            row = {
                "epoch": epoch, "samples_seen": self.samples_seen,
                "train_loss": losses[j] / self.epoch_steps,
                "train_acc": correct[j] / (self.epoch_steps * self.cfg.batch_size),
                "test_loss": tests[j][0], "test_acc": tests[j][1],
                "samples_per_s": self.epoch_steps * self.cfg.batch_size / self.epoch_s,
                "epoch_s": self.epoch_s, "eval_s": eval_s, "lr": self.step.lr, **extras[j],
            }
            self.record_epoch(self.trainer.lanes[j], {column: row.get(column) for column in EPOCH_COLUMNS})
        return bool(self.alive())

    def record_epoch(self, lane, row: dict) -> None:
        """Write one lane's epoch row, then its final metrics, or its divergence."""
        lane.run_dir.epochs.write(row)
        self.reporter.epoch(row, self.epochs)
        if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
            lane.diverge(f"loss became non-finite in epoch {row['epoch']} (train {row['train_loss']}, test {row['test_loss']})")
            return
        lane.best_test_acc = max(lane.best_test_acc, row["test_acc"])
        lane.final = {
            "final_test_acc": row["test_acc"], "final_test_loss": row["test_loss"],
            "final_train_loss": row["train_loss"], "final_train_acc": row["train_acc"],
            "best_test_acc": lane.best_test_acc, "epochs_done": row["epoch"], "steps_done": self.steps_done,
            "samples_seen": self.samples_seen, "train_s": self.train_s,
            "mean_samples_per_s": self.samples_seen / self.train_s,
        }
        lane.run_dir.update_meta(**lane.final)
