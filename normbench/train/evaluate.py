"""Evaluation in eval mode (running statistics): one model, or K packed seeds at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models.packed import pack_inputs, per_seed_loss
from normbench.runtime import autocast


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: str = "fp32"):
    """(mean cross-entropy, accuracy) over all of x in eval mode (running statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with autocast(x.device, precision):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb).float()  # (B, classes)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = len(x)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluate_packed(model: nn.Module, test_x: list[torch.Tensor], test_y: list[torch.Tensor], batch_size: int,
                    precision: str = "fp32") -> list[tuple[float, float]]:
    """Per seed (mean cross-entropy, accuracy) over its whole test split, in eval mode."""
    was_training = model.training
    model.eval()
    y = torch.stack(test_y, dim=1)  # (N, K)
    k, n = len(test_x), len(y)
    loss_sum = torch.zeros(k, device=y.device, dtype=torch.float64)
    correct = torch.zeros(k, device=y.device, dtype=torch.long)
    with autocast(y.device, precision):
        for start in range(0, n, batch_size):
            xb = pack_inputs([x[start : start + batch_size] for x in test_x])  # (B, K*C, H, W)
            yb = y[start : start + batch_size]  # (B, K)
            logits = model(xb).float()  # (B, K, classes)
            loss_sum += per_seed_loss(logits, yb, reduction="sum").double()
            correct += (logits.argmax(2) == yb).sum(0)
    model.train(was_training)
    return [(loss_sum[i].item() / n, correct[i].item() / n) for i in range(k)]


class TrainSubset:
    """A fixed subset of the training split (the same samples for every run, seed and epoch), evaluated
    in eval mode at each epoch's end like the test split: the train accuracy the accuracy gap is
    taken from, not the running average over a still-learning epoch."""

    SAMPLES = 5000  # at most; fewer when the training split is smaller
    SEED = 20150211  # fixed: the subset does not depend on the run's seed

    def __init__(self, n_train: int, device: torch.device):
        generator = torch.Generator().manual_seed(self.SEED)
        size = min(self.SAMPLES, n_train)
        self.index = torch.randperm(n_train, generator=generator)[:size].sort().values.to(device)  # (size,)

    def accuracies(self, trainer) -> list[float]:
        """Per lane of `trainer` (one model, or K packed seeds): accuracy on the subset in eval mode."""
        cfg, i = trainer.cfg, self.index
        if hasattr(trainer, "datas"):  # packed seeds: one data set per seed
            xs, ys = [d.train_x[i] for d in trainer.datas], [d.train_y[i] for d in trainer.datas]
            return [acc for _, acc in evaluate_packed(trainer.model, xs, ys, cfg.eval_batch_size, cfg.precision)]
        model = trainer.model
        loss, acc = trainer.world.evaluate(model, lambda x, y: evaluate(model, x, y, cfg.eval_batch_size, cfg.precision),
                                           trainer.data.train_x[i], trainer.data.train_y[i])
        return [acc]
