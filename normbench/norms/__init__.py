"""Normalization registry: one dict of name -> spec, one `make_norm` to build any of them.

Every norm takes the channel count first (timm's convention), so models swap them freely.
Shapes: `dims=2` means feature maps (N, C, H, W); `dims=1` means feature vectors (N, F).
"""

from __future__ import annotations

from torch import nn

from normbench.errors import ConfigError
from normbench.norms import reference as ref
from normbench.norms import schemes
from normbench.norms.spec import NormOptions, NormSpec, default_groups, pick, resolve_groups
from normbench.norms.sync_batchnorm import AllReduceBatchNorm
from normbench.norms.zoo_specs import ZOO_NORMS

__all__ = ["IMPLS", "NORMS", "NormOptions", "NormSpec", "default_groups", "get_spec", "make_norm", "norm_names"]

# torch: PyTorch's own modules; reference: normbench's from-scratch modules (reference_norms.py).
# Schemes PyTorch has no module for (batch_renorm, frn) and the weight reparametrizations
# (weight_norm, spectral_norm, through torch.nn.utils.parametrizations) have one implementation,
# built for either value; the README's norm table says which.
IMPLS = ("torch", "reference")


def _build_none(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return nn.Identity()


def _build_batch(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    kwargs = dict(
        eps=opts.eps,
        momentum=opts.momentum,
        affine=pick(opts.affine, True),
        track_running_stats=pick(opts.track_running_stats, True),
    )
    if impl == "reference":
        return ref.ReferenceBatchNorm(channels, dims=dims, **kwargs)
    if opts.sync:  # statistics over all processes; one class for (N, F) and (N, C, H, W)
        return AllReduceBatchNorm(channels, **kwargs)
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(channels, **kwargs)


def _build_layer(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    affine = pick(opts.affine, True)
    if dims == 2:
        # Over (C, H, W) per sample with a per-channel gamma/beta: GroupNorm with one group,
        # as in the Group Normalization paper (independent of the map size).
        cls = ref.ReferenceGroupNorm if impl == "reference" else nn.GroupNorm
        return cls(1, channels, eps=opts.eps, affine=affine)
    cls = ref.ReferenceLayerNorm if impl == "reference" else nn.LayerNorm
    return cls(channels, eps=opts.eps, elementwise_affine=affine)


def _build_group(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    groups = resolve_groups(channels, dims, opts, layer)
    cls = ref.ReferenceGroupNorm if impl == "reference" else nn.GroupNorm
    return cls(groups, channels, eps=opts.eps, affine=pick(opts.affine, True))


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
        affine=pick(opts.affine, False),
        track_running_stats=pick(opts.track_running_stats, False),
    )


def _build_batch_renorm(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    return schemes.BatchRenorm(
        channels, eps=opts.eps, momentum=opts.momentum, affine=pick(opts.affine, True), dims=dims,
        r_max=opts.r_max, d_max=opts.d_max, warmup_steps=opts.renorm_warmup_steps, relax_steps=opts.renorm_relax_steps,
    )


def _build_frn(channels: int, dims: int, opts: NormOptions, layer: str, impl: str = "torch") -> nn.Module:
    learnable = pick(opts.frn_learnable_eps, dims == 1)
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
        options="eps, affine, groups",
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
    **ZOO_NORMS,  # 2017-2025: ghost_batch, ws_group, evonorm_b0, evonorm_s0, rms, grn, dyt (zoo_specs.py)
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
    builder applies to the block's conv/linear layer. The module carries `norm_type` (`name`) and
    `norm_channels` (`channels`).
    """
    spec = get_spec(name)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if impl not in IMPLS:
        raise ConfigError(f"unknown norm implementation '{impl}'; valid: {', '.join(IMPLS)}")
    if options.get("sync") and (name != "batch" or impl != "torch"):
        raise ConfigError(f"norm.sync=true needs norm.type=batch with norm.impl=torch, not {name} with impl {impl}")
    module = spec.build(channels, dims, NormOptions(**options), layer, impl)
    # what was asked for, read back by models.norm_layers for meta.json (a class alone can be shared)
    module.norm_type, module.norm_channels = name, channels
    return module
