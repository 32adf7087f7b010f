"""The registry entries of the 2017-2025 norms (docs/norm_zoo.md): ghost batch norm, weight
standardization + group norm, EvoNorm-B0/S0, RMSNorm, GRN and Dynamic Tanh."""

from __future__ import annotations

from torch import nn

from normbench.norms.evonorm import EvoNormB0, EvoNormS0
from normbench.norms.ghost import GhostBatchNorm
from normbench.norms.spec import NormOptions, NormSpec, pick, resolve_groups
from normbench.norms.zoo import DynamicTanh, GlobalResponseNorm, ReferenceWSGroupNorm, RMSNorm, WSGroupNorm


def build_ghost_batch(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """GhostBatchNorm with norm.ghost_batch_size samples per ghost batch."""
    return GhostBatchNorm(channels, ghost_batch_size=opts.ghost_batch_size, eps=opts.eps, momentum=opts.momentum,
                          affine=pick(opts.affine, True), track_running_stats=pick(opts.track_running_stats, True),
                          dims=dims)


def build_ws_group(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """Group norm whose `wrap_layer` standardizes the block's conv/linear weight."""
    cls = ReferenceWSGroupNorm if impl == "reference" else WSGroupNorm
    groups = resolve_groups(channels, dims, opts, layer)
    return cls(groups, channels, eps=opts.eps, affine=pick(opts.affine, True), ws_eps=opts.ws_eps)


def build_evonorm_b0(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """EvoNorm-B0 with batch-norm-style running variance."""
    return EvoNormB0(channels, eps=opts.eps, momentum=opts.momentum, affine=pick(opts.affine, True),
                     track_running_stats=pick(opts.track_running_stats, True))


def build_evonorm_s0(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """EvoNorm-S0 over norm.groups groups (default as group norm)."""
    return EvoNormS0(resolve_groups(channels, dims, opts, layer), channels, eps=opts.eps, affine=pick(opts.affine, True))


def build_rms(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """RMSNorm per sample over (C, H, W) or F."""
    return RMSNorm(channels, eps=opts.eps, affine=pick(opts.affine, True))


def build_grn(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """Global Response Normalization (its gamma/beta are always learned)."""
    return GlobalResponseNorm(channels, eps=opts.eps)


def build_dyt(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    """Dynamic Tanh with alpha initialized to norm.dyt_alpha_init."""
    return DynamicTanh(channels, alpha_init=opts.dyt_alpha_init, affine=pick(opts.affine, True))


ONE_IMPL = "normbench.norms.{} (both)"

ZOO_NORMS: dict[str, NormSpec] = {
    "ghost_batch": NormSpec(
        "ghost_batch",
        "ghost batch normalization (Hoffer et al. 2017)",
        "per channel over (G, H, W) of each ghost batch of G = norm.ghost_batch_size consecutive samples",
        "per feature over each ghost batch of G samples",
        True,
        build_ghost_batch,
        train_eval="train: ghost-batch statistics, one batch-norm update of the running mean / unbiased variance "
        "per ghost batch; eval: running statistics. G >= batch: batch norm",
        options="eps, momentum, affine, track_running_stats, ghost_batch_size",
        impls=ONE_IMPL.format("ghost.GhostBatchNorm"),
    ),
    "ws_group": NormSpec(
        "ws_group",
        "weight standardization (Qiao et al. 2019) + group normalization, as in BiT",
        "conv weight standardized per output channel over (C_in, kH, kW); then group norm over (C/G, H, W)",
        "linear weight standardized per output unit over its inputs; then group norm over F/G features",
        False,
        build_ws_group,
        options="eps, affine, groups, ws_eps",
        impls="torch: normbench.norms.zoo.WSGroupNorm (nn.GroupNorm); reference: normbench.norms.zoo.ReferenceWSGroupNorm; "
        "the weight: normbench.norms.zoo.standardize_weight",
    ),
    "evonorm_b0": NormSpec(
        "evonorm_b0",
        "EvoNorm-B0, normalization + activation (Liu et al. 2020)",
        "x / max(sqrt(batch var over (N, H, W) + eps), v*x + sqrt(instance var over (H, W) + eps))",
        "as a 1x1 map: x / max(sqrt(batch var over N + eps), v*x + sqrt(eps))",
        True,
        build_evonorm_b0,
        train_eval="train: batch variance, updates the running variance as batch norm does; eval: running variance",
        options="eps, momentum, affine, track_running_stats",
        impls=ONE_IMPL.format("evonorm.EvoNormB0"),
    ),
    "evonorm_s0": NormSpec(
        "evonorm_s0",
        "EvoNorm-S0, normalization + activation (Liu et al. 2020)",
        "x * sigmoid(v*x) / sqrt(var over (C/G, H, W) per sample and group + eps)",
        "x * sigmoid(v*x) / sqrt(var over F/G features per sample and group + eps)",
        False,
        build_evonorm_s0,
        options="eps, affine, groups",
        impls=ONE_IMPL.format("evonorm.EvoNormS0"),
    ),
    "rms": NormSpec(
        "rms",
        "RMS normalization (Zhang & Sennrich 2019)",
        "per sample: x / sqrt(mean over (C, H, W) of x^2 + eps), per-channel gain, no centering",
        "per sample: x / sqrt(mean over F of x^2 + eps), per-feature gain",
        False,
        build_rms,
        impls=ONE_IMPL.format("zoo.RMSNorm"),
    ),
    "grn": NormSpec(
        "grn",
        "global response normalization (ConvNeXt V2, Woo et al. 2023)",
        "G = L2 norm over (H, W) per sample and channel; x + gamma * x * G / (mean over C of G + eps) + beta",
        "as a 1x1 map: G = |x|; x + gamma * x * |x| / (mean over F of |x| + eps) + beta",
        False,
        build_grn,
        options="eps",
        impls=ONE_IMPL.format("zoo.GlobalResponseNorm"),
    ),
    "dyt": NormSpec(
        "dyt",
        "dynamic tanh (Zhu et al. 2025)",
        "no statistics: gamma * tanh(alpha * x) + beta, one learnable scalar alpha",
        "no statistics: gamma * tanh(alpha * x) + beta",
        False,
        build_dyt,
        options="affine, dyt_alpha_init",
        impls=ONE_IMPL.format("zoo.DynamicTanh"),
    ),
}
