"""What a run is built from: the model with its norms, the optimizer, the schedule, the step plan."""

from __future__ import annotations

import math

import torch
from torch import nn

from normbench.config import Config
from normbench.data import dataset_shape
from normbench.errors import ConfigError, NormbenchError
from normbench.models import build_model
from normbench.norms import make_norm
from normbench.train import fastpath
from normbench.train.graph import graph_reason
from normbench.train.probe import check_probe


def build_for_config(cfg: Config, input_shape, num_classes: int) -> nn.Module:
    """The config's model with the config's norm in every norm slot."""
    opts = cfg.norm.options()

    def norm_factory(channels: int, dims: int, layer: str) -> nn.Module:
        return make_norm(cfg.norm.type, channels, dims=dims, impl=cfg.norm.impl, layer=layer, **opts)

    return build_model(cfg.model, input_shape, num_classes, norm_factory, cfg.norm.placement)


def check_buildable(cfg: Config) -> None:
    """Build the model on the meta device (no memory) so layer-level errors surface before any work."""
    shape, classes = dataset_shape(cfg.dataset)
    with torch.device("meta"):
        model = build_for_config(cfg, shape, classes)
    check_probe(model, cfg.probe, shape, cfg.model)


def check_capturable(cfg: Config, device: torch.device, data_parallel: bool) -> None:
    """With `cuda_graph: true`, a ConfigError before any work when the run cannot be captured."""
    if cfg.cuda_graph is not True:
        return
    shape, classes = dataset_shape(cfg.dataset)
    with torch.device("meta"):
        model = build_for_config(cfg, shape, classes)
    reason = graph_reason(cfg, model, device, data_parallel)
    if reason:
        raise ConfigError(f"cuda_graph: true, but this run cannot be captured: {reason}; set cuda_graph: auto or false")


def make_optimizer(cfg: Config, params, device: torch.device | None = None, capturable: bool = False,
                   lr_tensor: bool = False) -> torch.optim.Optimizer:
    """The optimizer the config names; fused kernels on CPU/CUDA (`fastpath.optimizer_options`).
    For a CUDA-graph step: `capturable` Adam/AdamW and, with `lr_tensor`, the learning rate as a
    device tensor that the schedule fills in place."""
    opt = cfg.optimizer
    extra = fastpath.optimizer_options(device) if device is not None else {}
    if capturable:
        extra["capturable"] = True
    lr = torch.tensor(opt.lr, device=device) if lr_tensor else opt.lr
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **extra)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=lr, weight_decay=opt.weight_decay, **extra)


def make_scheduler(cfg: Config, optimizer, total_steps: int):
    """Per-step schedule: cosine to 0 over the run, or x0.1 at 50 % and 75 % of the steps."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if cfg.schedule == "step":
        milestones = [max(1, total_steps // 2), max(1, (3 * total_steps) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return None


def plan_steps(cfg: Config, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, epochs) for the budget; the trailing partial batch is dropped."""
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise NormbenchError(f"batch_size={cfg.batch_size} is larger than the training set ({n_train} samples)")
    total = cfg.max_samples // cfg.batch_size if cfg.max_samples else cfg.epochs * steps_per_epoch
    return steps_per_epoch, total, math.ceil(total / steps_per_epoch)
