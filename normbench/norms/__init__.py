"""Normalization registry: one dict of name -> spec, one `make_norm` to build any of them.

Every norm takes the channel count first (timm's convention), so models swap them freely.
Shapes: `dims=2` means feature maps (N, C, H, W); `dims=1` means feature vectors (N, F).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from normbench.norms import reference as ref
from normbench.norms import schemes
from normbench.errors import ConfigError
from normbench.norms.sync_batchnorm import AllReduceBatchNorm

# torch: PyTorch's own modules; reference: normbench's from-scratch modules (reference_norms.py).
# Schemes PyTorch has no module for (batch_renorm, frn) and the weight reparametrizations
# (weight_norm, spectral_norm, through torch.nn.utils.parametrizations) have one implementation,
# built for either value; the README's norm table says which.
IMPLS = ("torch", "reference")


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


def _pick(value, default):
    return default if value is None else value


def default_groups(channels: int) -> int:
    """The largest divisor of `channels` that is at most min(32, channels) (the GN paper uses 32)."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _build_none(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return nn.Identity()


def _build_batch(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    kwargs = dict(
        eps=opts.eps,
        momentum=opts.momentum,
        affine=_pick(opts.affine, True),
        track_running_stats=_pick(opts.track_running_stats, True),
    )
    if impl == "reference":
        return ref.ReferenceBatchNorm(channels, dims=dims, **kwargs)
    if opts.sync:  # statistics over all processes; one class for (N, F) and (N, C, H, W)
        return AllReduceBatchNorm(channels, **kwargs)
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(channels, **kwargs)


def _build_layer(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    affine = _pick(opts.affine, True)
    if dims == 2:
        # Over (C, H, W) per sample with a per-channel gamma/beta: GroupNorm with one group,
        # as in the Group Normalization paper (independent of the map size).
        cls = ref.ReferenceGroupNorm if impl == "reference" else nn.GroupNorm
        return cls(1, channels, eps=opts.eps, affine=affine)
    cls = ref.ReferenceLayerNorm if impl == "reference" else nn.LayerNorm
    return cls(channels, eps=opts.eps, elementwise_affine=affine)


def _build_group(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    groups = opts.groups if opts.groups is not None else default_groups(channels)
    if channels % groups:
        raise ConfigError(
            f"norm.groups={groups} does not divide the {channels} channels of layer '{layer}'; "
            f"use a divisor of {channels} ({', '.join(map(str, _divisors(channels)))}) or leave groups unset"
        )
    cls = ref.ReferenceGroupNorm if impl == "reference" else nn.GroupNorm
    return cls(groups, channels, eps=opts.eps, affine=_pick(opts.affine, True))


def _build_instance(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    if dims == 1:
        # An instance of a feature vector has one value per channel, so instance statistics
        # would be that value itself and the output a constant. The stated substitute:
        # normalize each sample over its features, i.e. layer normalization.
        return _build_layer(channels, dims, opts, layer, impl)
    cls = ref.ReferenceInstanceNorm2d if impl == "reference" else nn.InstanceNorm2d
    return cls(
        channels,
        eps=opts.eps,
        momentum=opts.momentum,
        affine=_pick(opts.affine, False),
        track_running_stats=_pick(opts.track_running_stats, False),
    )


def _build_batch_renorm(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return schemes.BatchRenorm(
        channels, eps=opts.eps, momentum=opts.momentum, affine=_pick(opts.affine, True), dims=dims,
        r_max=opts.r_max, d_max=opts.d_max, warmup_steps=opts.renorm_warmup_steps, relax_steps=opts.renorm_relax_steps,
    )


def _build_frn(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    learnable = _pick(opts.frn_learnable_eps, dims == 1)
    return schemes.FilterResponseNorm(channels, eps=opts.eps, learnable_eps=learnable)


def _build_weight_norm(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return schemes.LayerReparam("weight_norm", schemes.apply_weight_norm, layer)


def _build_spectral_norm(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return schemes.LayerReparam("spectral_norm", schemes.apply_spectral_norm, layer)


NORMS: dict[str, NormSpec] = {
    "none": NormSpec("none", "no normalization (identity)", "-", "-", False, _build_none, options="-",
                     impls="nn.Identity (both)"),
    "batch": NormSpec(
        "batch",
        "batch normalization (Ioffe & Szegedy 2015)",
        "per channel over (N, H, W)",
        "per feature over N",
        True,
        _build_batch,
        train_eval="train: batch statistics, updates running mean / unbiased running variance; eval: running statistics",
        options="eps, momentum, affine, track_running_stats",
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
        train_eval="same, unless track_running_stats: true (then eval uses running statistics)",
        options="eps, momentum, affine, track_running_stats",
    ),
    "batch_renorm": NormSpec(
        "batch_renorm",
        "batch renormalization (Ioffe 2017)",
        "per channel over (N, H, W), corrected by r, d toward the moving statistics",
        "per feature over N, corrected by r, d",
        True,
        _build_batch_renorm,
        train_eval="train: batch statistics times r plus d (clipped, constant in backprop), updates moving statistics; "
        "eval: moving statistics",
        options="eps, momentum, affine, r_max, d_max, renorm_warmup_steps, renorm_relax_steps",
        impls="normbench.norms.schemes.BatchRenorm (both)",
    ),
    "frn": NormSpec(
        "frn",
        "filter response normalization + TLU (Singh & Krishnan 2019)",
        "per sample and channel: x / sqrt(mean over (H, W) of x^2 + eps), then max(y, tau)",
        "per sample and feature: x / sqrt(x^2 + eps) with learnable eps, then max(y, tau)",
        False,
        _build_frn,
        options="eps, frn_learnable_eps",
        impls="normbench.norms.schemes.FilterResponseNorm (both)",
    ),
    "weight_norm": NormSpec(
        "weight_norm",
        "weight normalization (Salimans & Kingma 2016)",
        "no activation normalization; conv weight = g * v / ||v|| per output channel",
        "no activation normalization; linear weight = g * v / ||v|| per output unit",
        False,
        _build_weight_norm,
        train_eval="same",
        options="-",
        impls="torch.nn.utils.parametrizations.weight_norm (both)",
    ),
    "spectral_norm": NormSpec(
        "spectral_norm",
        "spectral normalization (Miyato et al. 2018)",
        "no activation normalization; conv weight / its largest singular value",
        "no activation normalization; linear weight / its largest singular value",
        False,
        _build_spectral_norm,
        train_eval="train: one power iteration per forward updates the singular-vector estimate; eval: estimate frozen",
        options="-",
        impls="torch.nn.utils.parametrizations.spectral_norm (both)",
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
    """Build norm `name` for `channels` channels on maps (dims=2) or feature vectors (dims=1).

    `impl` is "torch" (PyTorch's modules) or "reference" (normbench's from-scratch modules);
    `options` are NormOptions fields (eps, momentum, affine, track_running_stats, groups, ...).
    Weight reparametrizations return a `schemes.LayerReparam` slot whose `wrap_layer` the model
    builder applies to the block's conv/linear layer.
    """
    spec = get_spec(name)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if impl not in IMPLS:
        raise ConfigError(f"unknown norm implementation '{impl}'; valid: {', '.join(IMPLS)}")
    if options.get("sync") and (name != "batch" or impl != "torch"):
        raise ConfigError(f"norm.sync=true needs norm.type=batch with norm.impl=torch, not {name} with impl {impl}")
    return spec.build(channels, dims, NormOptions(**options), layer, impl)
