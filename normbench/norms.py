"""Normalization registry: one dict of name -> spec, one `make_norm` to build any of them.

Every norm takes the channel count first (timm's convention), so models swap them freely.
Shapes: `dims=2` means feature maps (N, C, H, W); `dims=1` means feature vectors (N, F).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from normbench.errors import ConfigError
from normbench.sync_batchnorm import AllReduceBatchNorm

IMPLS = ("torch",)


@dataclass(frozen=True)
class NormOptions:
    """Options shared by every norm; `None` means "the layer type's own PyTorch default"."""

    eps: float = 1e-5
    momentum: float | None = 0.1  # None: cumulative moving average (PyTorch semantics)
    affine: bool | None = None
    track_running_stats: bool | None = None
    groups: int | None = None
    sync: bool = False  # batch norm only: statistics over all processes (sync_batchnorm.py)


@dataclass(frozen=True)
class NormSpec:
    """What a registered norm is, for users (README, errors) and for validation."""

    name: str
    summary: str
    maps: str  # what it normalizes over on (N, C, H, W)
    features: str  # what it normalizes over on (N, F)
    batch_dependent: bool  # statistics over the batch: needs at least 2 samples per batch
    build: Callable[[int, int, NormOptions, str], nn.Module]


def _pick(value, default):
    return default if value is None else value


def default_groups(channels: int) -> int:
    """The largest divisor of `channels` that is at most min(32, channels) (the GN paper uses 32)."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _build_none(channels: int, dims: int, opts: NormOptions, layer: str) -> nn.Module:
    return nn.Identity()


def _build_batch(channels: int, dims: int, opts: NormOptions, layer: str) -> nn.Module:
    if opts.sync:
        cls = AllReduceBatchNorm  # one class for (N, F) and (N, C, H, W)
    else:
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(
        channels,
        eps=opts.eps,
        momentum=opts.momentum,
        affine=_pick(opts.affine, True),
        track_running_stats=_pick(opts.track_running_stats, True),
    )


def _build_layer(channels: int, dims: int, opts: NormOptions, layer: str) -> nn.Module:
    affine = _pick(opts.affine, True)
    if dims == 2:
        # Over (C, H, W) per sample with a per-channel gamma/beta: GroupNorm with one group,
        # as in the Group Normalization paper (independent of the map size).
        return nn.GroupNorm(1, channels, eps=opts.eps, affine=affine)
    return nn.LayerNorm(channels, eps=opts.eps, elementwise_affine=affine)


def _build_group(channels: int, dims: int, opts: NormOptions, layer: str) -> nn.Module:
    groups = opts.groups if opts.groups is not None else default_groups(channels)
    if channels % groups:
        raise ConfigError(
            f"norm.groups={groups} does not divide the {channels} channels of layer '{layer}'; "
            f"use a divisor of {channels} ({', '.join(map(str, _divisors(channels)))}) or leave groups unset"
        )
    return nn.GroupNorm(groups, channels, eps=opts.eps, affine=_pick(opts.affine, True))


def _build_instance(channels: int, dims: int, opts: NormOptions, layer: str) -> nn.Module:
    if dims == 1:
        # An instance of a feature vector has one value per channel, so instance statistics
        # would be that value itself and the output a constant. The stated substitute:
        # normalize each sample over its features, i.e. layer normalization.
        return _build_layer(channels, dims, opts, layer)
    return nn.InstanceNorm2d(
        channels,
        eps=opts.eps,
        momentum=opts.momentum,
        affine=_pick(opts.affine, False),
        track_running_stats=_pick(opts.track_running_stats, False),
    )


NORMS: dict[str, NormSpec] = {
    "none": NormSpec("none", "no normalization (identity)", "-", "-", False, _build_none),
    "batch": NormSpec(
        "batch",
        "batch normalization (Ioffe & Szegedy 2015)",
        "per channel over (N, H, W)",
        "per feature over N",
        True,
        _build_batch,
    ),
    "layer": NormSpec(
        "layer",
        "layer normalization (Ba et al. 2016)",
        "per sample over (C, H, W), per-channel gamma/beta",
        "per sample over F",
        False,
        _build_layer,
    ),
    "group": NormSpec(
        "group",
        "group normalization (Wu & He 2018)",
        "per sample and group of C/G channels over (C/G, H, W)",
        "per sample and group of F/G features",
        False,
        _build_group,
    ),
    "instance": NormSpec(
        "instance",
        "instance normalization (Ulyanov et al. 2016)",
        "per sample and channel over (H, W)",
        "substitute: layer normalization over F (see README)",
        False,
        _build_instance,
    ),
}


def norm_names() -> list[str]:
    """Registered norm names, in registry order."""
    return list(NORMS)


def get_spec(name: str) -> NormSpec:
    """The spec for `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return NORMS[name]
    except KeyError:
        raise ConfigError(f"unknown norm '{name}'; valid norms: {', '.join(NORMS)}") from None


def make_norm(
    name: str,
    channels: int,
    dims: int = 2,
    impl: str = "torch",
    layer: str = "?",
    **options,
) -> nn.Module:
    """Build norm `name` for `channels` channels on maps (dims=2) or feature vectors (dims=1)."""
    spec = get_spec(name)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if impl not in IMPLS:
        raise ConfigError(f"unknown norm implementation '{impl}'; valid: {', '.join(IMPLS)}")
    if options.get("sync") and name != "batch":
        raise ConfigError(f"norm.sync=true applies to batch norm only, not '{name}'")
    return spec.build(channels, dims, NormOptions(**options), layer)
