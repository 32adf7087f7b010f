"""The training step: forward, per-lane loss, backward, optimizer and schedule for one batch.

A step is one callable with no host synchronization inside: the per-lane loss and
correct-count sums it keeps (`loss_sum`, `correct`, shape (K,)) stay on the device, and the loop
reads them only at logged steps. K is the number of lanes: 1 for a plain run or a data-parallel
rank, K for K packed seeds.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models.packed import per_seed_loss
from normbench.runtime import autocast


def single_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, classes) against targets (B,), as a (1,) lane vector."""
    return F.cross_entropy(logits, targets).reshape(1)


def packed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each seed's mean cross-entropy of packed logits (B, K, classes) against targets (B, K): (K,)."""
    return per_seed_loss(logits, targets)


def lane_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct predictions per lane: logits (B, [K,] classes), targets (B, [K]) -> (K,)."""
    return (logits.argmax(-1) == targets).sum(0).reshape(-1)


class TrainStep:
    """forward -> loss per lane -> backward of their sum -> optimizer (and scaler, schedule).

    The gradient of the lanes' summed loss with respect to lane k's parameters is lane k's own
    gradient (packed blocks never interact), so K packed seeds train as K separate runs.
    """

    def __init__(self, net: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler,
                 scaler: torch.amp.GradScaler, precision: str, lanes: int, device: torch.device,
                 autocast_cache: bool = True):
        self.net, self.loss_fn, self.optimizer = net, loss_fn, optimizer
        self.scheduler, self.scaler, self.precision, self.device = scheduler, scaler, precision, device
        self.autocast_cache = autocast_cache  # off inside a CUDA graph capture (torch's rule)
        self.loss_sum = torch.zeros(lanes, device=device)  # (K,) summed over the epoch's steps
        self.correct = torch.zeros(lanes, device=device, dtype=torch.long)  # (K,)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.update(xb, yb)
        self.after_update()

    def update(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Everything on the device: forward, backward, optimizer update, per-lane sums."""
        with autocast(self.device, self.precision, cache=self.autocast_cache):
            logits = self.net(xb)  # (B, classes) or packed (B, K, classes)
            losses = self.loss_fn(logits, yb)  # (K,)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += losses.detach()
        self.correct += lane_correct(logits, yb)

    def after_update(self) -> None:
        """The host's part of a step: advance the learning-rate schedule."""
        if self.scheduler is not None:
            self.scheduler.step()

    def reset(self) -> None:
        """Zero the per-lane sums (at the start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])  # a device tensor in a captured step

    def state_dict(self) -> dict:
        """Optimizer, schedule, loss scaler and the per-lane sums of the epoch in progress."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "loss_sum": self.loss_sum.detach().cpu(),
            "correct": self.correct.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (sums copied in place: a captured graph keeps their addresses)."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(lr, torch.Tensor):  # a device lr the graph reads: keep the tensor, take the value
                lr.copy_(torch.as_tensor(group["lr"]))
                group["lr"] = lr
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_sum.copy_(state["loss_sum"])
        self.correct.copy_(state["correct"])
