"""Norms without running statistics from 2019-2025: RMSNorm, Global Response Normalization,
Dynamic Tanh, and weight standardization with group norm (the slot of `ws_group`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from normbench.norms.reference import ReferenceGroupNorm, affine_parameters, apply_affine, channel_view, stats_dtype


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * g, no re-centering.

    The mean runs per sample over (C, *spatial): (C, H, W) on maps, F on vectors; the gain g is
    per channel (`affine`), and there is no bias, as in the paper.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.affine = num_features, eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        mean_square = xs.pow(2).mean(dim=tuple(range(1, x.dim())), keepdim=True)  # (N, 1, ...)
        y = xs * torch.rsqrt(mean_square + self.eps)
        if self.affine:
            y = y * channel_view(self.weight, x.dim())
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class GlobalResponseNorm(nn.Module):
    """Global Response Normalization (ConvNeXt V2, Woo et al. 2023).

    G = ||x||_2 per sample and channel over the spatial dims (|x| on (N, F)); N = G / (mean over
    channels of G + eps); y = gamma * (x * N) + beta + x, gamma and beta per channel and
    initialized to 0, so the layer starts as the identity.
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.zeros(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        spatial = tuple(range(2, x.dim()))
        gx = torch.linalg.vector_norm(xs, dim=spatial, keepdim=True) if spatial else xs.abs()  # (N, C, 1, 1)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        y = channel_view(self.weight, x.dim()) * (xs * nx) + channel_view(self.bias, x.dim()) + xs
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class DynamicTanh(nn.Module):
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025): y = gamma * tanh(alpha * x) + beta.

    alpha is one learnable scalar (initialized to `alpha_init`); gamma/beta are per channel
    (`affine`). No statistics: elementwise, the same in train and eval.
    """

    def __init__(self, num_features: int, alpha_init: float = 0.5, affine: bool = True):
        super().__init__()
        self.num_features, self.affine, self.alpha_init = num_features, affine, float(alpha_init)
        self.alpha = nn.Parameter(torch.tensor(self.alpha_init))
        affine_parameters(self, num_features, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_affine(torch.tanh(self.alpha * stats_dtype(x)), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha_init={self.alpha_init}, affine={self.affine}"


class StandardizedWeight(nn.Module):
    """Weight standardization (Qiao et al. 2019) as a parametrization: per output unit (dim 0),
    W_hat = (W - mean) / sqrt(var + eps) over the fan-in (C_in, kH, kW), biased variance."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.flatten(1)  # (C_out, fan_in)
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)  # (C_out, 1)
        return ((flat - mean) * torch.rsqrt(var + self.eps)).view_as(weight)


def standardize_weight(layer: nn.Module, eps: float = 1e-6) -> nn.Module:
    """Register weight standardization on `layer.weight` (a conv or linear layer) and return the layer."""
    parametrize.register_parametrization(layer, "weight", StandardizedWeight(eps))
    return layer


class StandardizesLayer:
    """Mixin for the norm slot of a `ws_group` block: the norm itself, plus `wrap_layer`, which the
    model builder calls to standardize the block's conv/linear weight (BiT's StdConv + GroupNorm)."""

    def __init__(self, *args, ws_eps: float = 1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps

    def wrap_layer(self, module: nn.Module) -> nn.Module:
        """Standardize the weight of the block's layer (conv or linear) in place and return it."""
        return standardize_weight(module, self.ws_eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ws_eps={self.ws_eps} (weight standardization on the block's layer)"


class WSGroupNorm(StandardizesLayer, nn.GroupNorm):
    """torch's GroupNorm after a weight-standardized layer (`norm.impl: torch`)."""


class ReferenceWSGroupNorm(StandardizesLayer, ReferenceGroupNorm):
    """normbench's ReferenceGroupNorm after a weight-standardized layer (`norm.impl: reference`)."""
