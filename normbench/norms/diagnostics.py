"""Batch-norm diagnostics at the end of each epoch, as extra epochs.csv columns:

- `test_*_batch_stats`: the test split evaluated with train-mode batch norm, i.e. each test batch
  (of the training batch size) normalized with its own statistics; running statistics untouched.
- `test_*_precise_bn`: PreciseBN (Wu & Johnson 2021): population statistics recomputed as the
  equal-weight average over `precise_bn.batches` training batches with the weights frozen, then
  the usual eval-mode evaluation. The statistics are restored afterwards, so training continues unchanged.

Both apply to `norm.type: batch` (PyTorch's BatchNorm or the reference one), else the columns stay empty.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from normbench.norms.ghost import GhostBatchNorm
from normbench.norms.reference import ReferenceBatchNorm
from normbench.norms.schemes import BatchRenorm

DIAGNOSTIC_COLUMNS = ("test_loss_batch_stats", "test_acc_batch_stats", "test_loss_precise_bn", "test_acc_precise_bn")


def batch_norm_modules(model: nn.Module) -> list[nn.Module]:
    """The model's batch-norm layers that keep running statistics (batch renorm and ghost batch norm excluded)."""
    found = []
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm) or (
            isinstance(module, ReferenceBatchNorm) and not isinstance(module, (BatchRenorm, GhostBatchNorm))
        )
        if is_bn and module.track_running_stats:
            found.append(module)
    return found


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Inside: the model in eval mode except its batch norms, which normalize with batch statistics
    and update nothing (train mode with track_running_stats off: no running update, no count)."""
    layers = batch_norm_modules(model)
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.train()
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True
            layer.eval()
        model.train(was_training)


@torch.no_grad()
def evaluate_batch_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, autocast_ctx) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) with batch statistics over full batches of `batch_size`
    (a trailing partial batch is dropped, as in training)."""
    n = (len(x) // batch_size) * batch_size
    if n == 0:
        raise ValueError(f"the test split ({len(x)} samples) is smaller than one batch of {batch_size}")
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with batch_statistics(model), autocast_ctx():
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size]).float()  # (B, classes)
            yb = y[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / n, correct.item() / n


@contextlib.contextmanager
def precise_bn_statistics(model: nn.Module, train_x: torch.Tensor, batches: int, batch_size: int, seed: int, autocast_ctx):
    """Inside: the model in eval mode with batch-norm statistics averaged over `batches` random
    training batches (momentum None = equal weights), weights frozen. On exit every buffer,
    momentum and mode is restored, so training continues exactly as without PreciseBN."""
    layers = batch_norm_modules(model)
    saved = [(layer.momentum, {k: v.clone() for k, v in layer.named_buffers()}) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch weighs 1 / batches
            layer.train()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad(), autocast_ctx():
            for _ in range(batches):
                idx = torch.randint(len(train_x), (batch_size,), generator=generator).to(train_x.device)
                model(train_x[idx])
        model.eval()
        yield model
    finally:
        with torch.no_grad():
            for layer, (momentum, buffers) in zip(layers, saved):
                layer.momentum = momentum
                for name, value in buffers.items():
                    getattr(layer, name).copy_(value)
        model.train(was_training)


def epoch_diagnostics(model: nn.Module, data, cfg, epoch: int, evaluate, autocast_ctx) -> dict:
    """The DIAGNOSTIC_COLUMNS for one epoch's row: None where they do not apply."""
    row = dict.fromkeys(DIAGNOSTIC_COLUMNS)
    if cfg.norm.type != "batch" or not batch_norm_modules(model):
        return row
    loss, acc = evaluate_batch_stats(model, data.test_x, data.test_y, cfg.batch_size, autocast_ctx)
    row.update(test_loss_batch_stats=loss, test_acc_batch_stats=acc)
    if cfg.precise_bn is not None:
        seed = cfg.seed * 1000 + epoch
        with precise_bn_statistics(model, data.train_x, cfg.precise_bn.batches, cfg.batch_size, seed, autocast_ctx):
            loss, acc = evaluate(model, data.test_x, data.test_y, cfg.eval_batch_size, cfg.precision)
        row.update(test_loss_precise_bn=loss, test_acc_precise_bn=acc)
    return row
