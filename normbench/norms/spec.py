"""What a registered norm is (NormSpec) and the options every builder reads (NormOptions),
with the helpers builders share (defaults, group counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from normbench.errors import ConfigError


@dataclass(frozen=True)
class NormOptions:
    """Options shared by every norm; `None` means "the layer type's own PyTorch default"."""

    eps: float = 1e-5
    momentum: float | None = 0.1  # None: cumulative moving average (PyTorch semantics)
    affine: bool | None = None
    track_running_stats: bool | None = None
    groups: int | None = None
    # batch_renorm (Ioffe 2017): clipping limits reached after the warm-up-then-relax schedule
    r_max: float = 3.0
    d_max: float = 5.0
    renorm_warmup_steps: int = 500  # steps of plain batch norm (r_max = 1, d_max = 0)
    renorm_relax_steps: int = 2000  # steps to relax linearly to r_max / d_max
    # frn: learnable eps; None = learnable on feature vectors (N, F), fixed on maps (the paper's advice)
    frn_learnable_eps: bool | None = None
    sync: bool = False  # batch norm only: statistics over all processes (sync_batchnorm.py)
    ghost_batch_size: int = 16  # ghost_batch: samples per virtual batch
    ws_eps: float = 1e-6  # ws_group: added to each filter's weight variance (timm's StdConv2d value)
    dyt_alpha_init: float = 0.5  # dyt: initial alpha (the paper's default alpha0)


@dataclass(frozen=True)
class NormSpec:
    """What a registered norm is, for users (README, errors) and for validation."""

    name: str
    summary: str
    maps: str  # what it normalizes over on (N, C, H, W)
    features: str  # what it normalizes over on (N, F)
    batch_dependent: bool  # statistics over the batch: needs at least 2 samples per batch
    build: Callable[[int, int, NormOptions, str, str], nn.Module]  # (channels, dims, opts, layer, impl)
    train_eval: str = "same"  # how train and eval mode differ
    options: str = "eps, affine"  # the norm.* options it reads
    impls: str = "torch: PyTorch module; reference: reference_norms.py"


def pick(value, default):
    """`value`, or `default` where value is None (an option left at "the layer's default")."""
    return default if value is None else value


MAX_DEFAULT_GROUPS = 32  # the GN paper's G
# The fewest channels a default group holds. On a feature map a group normalizes channels x H x W
# values, and fewer than 4 channels makes group norm instance-norm-like, which the GN paper finds
# worse. A feature vector (N, F) has one value per channel, so a group of F/G features normalizes
# only F/G numbers: docs/reproductions.md (groups ablation) measured 4 features per group on the
# cnn's fc layer 1.6 points worse than 16 at batch 64, and 16 as good as the best uniform G.
MIN_CHANNELS_PER_GROUP = {2: 4, 1: 16}  # dims -> channels (maps) or features (vectors) per group


def default_groups(channels: int, dims: int = 2) -> int:
    """The largest divisor G of `channels` with G <= 32 and at least 4 channels per group on a
    feature map (dims=2) or 16 features per group on a feature vector (dims=1); 1 if none."""
    limit = min(MAX_DEFAULT_GROUPS, channels // MIN_CHANNELS_PER_GROUP[dims])
    return max((g for g in range(1, limit + 1) if channels % g == 0), default=1)


def resolve_groups(channels: int, dims: int, opts: NormOptions, layer: str) -> int:
    """norm.groups, or the default for a `dims` layer, checked to divide `channels`; else a
    ConfigError naming the layer."""
    groups = opts.groups if opts.groups is not None else default_groups(channels, dims)
    if channels % groups:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ConfigError(
            f"norm.groups={groups} does not divide the {channels} channels of layer '{layer}'; "
            f"use a divisor of {channels} ({', '.join(map(str, divisors))}) or leave groups unset"
        )
    return groups
