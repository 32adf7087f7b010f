"""Normalization schemes PyTorch has no module for: batch renormalization, filter response
normalization, and the slot marker for weight reparametrizations (weight / spectral norm)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from normbench.norms.reference import ReferenceBatchNorm, channel_view, stats_dtype


class BatchRenorm(ReferenceBatchNorm):
    """Batch renormalization (Ioffe 2017), per channel over every dim but 1.

    Training: x_hat = (x - mu_B) / sigma_B * r + d with sigma = sqrt(running_var + eps),
    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max, d_max),
    r and d held constant in backprop (detached). The limits follow the paper's schedule:
    r_max = 1 and d_max = 0 (plain batch norm) for `warmup_steps` training steps, then relaxed
    linearly to `r_max` / `d_max` over `relax_steps`. Running statistics are updated as in batch
    norm (momentum, unbiased variance); eval normalizes with them. The step counter is
    `num_batches_tracked`, so the schedule survives a state_dict round trip.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 dims: int = 2, r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 500, relax_steps: int = 2000):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, dims=dims)
        self.r_max, self.d_max, self.warmup_steps, self.relax_steps = r_max, d_max, warmup_steps, relax_steps

    def limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) at the current step, as device tensors (no host sync per step)."""
        t = self.num_batches_tracked.double()
        relaxed = ((t - self.warmup_steps) / max(self.relax_steps, 1)).clamp(0, 1)
        if self.relax_steps == 0:
            relaxed = (t >= self.warmup_steps).double()
        return 1 + (self.r_max - 1) * relaxed, self.d_max * relaxed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)  # eval: moving statistics, as batch norm
        self._check(x)
        xs = stats_dtype(x)
        mean, var, count = self.batch_stats(xs)
        sigma_batch = torch.sqrt(var + self.eps)  # (C,)
        with torch.no_grad():  # r and d are constants in backprop
            r_max, d_max = self.limits()
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.minimum(torch.maximum(sigma_batch / sigma, 1 / r_max), r_max).to(xs.dtype)
            d = torch.minimum(torch.maximum((mean - self.running_mean) / sigma, -d_max), d_max).to(xs.dtype)
            factor = self.update_factor()
            unbiased = var * (count / (count - 1))
            self.running_mean.copy_((1 - factor) * self.running_mean + factor * mean)
            self.running_var.copy_((1 - factor) * self.running_var + factor * unbiased)
        scale = r / sigma_batch
        x_hat = (xs - channel_view(mean, x.dim())) * channel_view(scale, x.dim()) + channel_view(d, x.dim())
        return self._affine(x_hat).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
                f"warmup_steps={self.warmup_steps}, relax_steps={self.relax_steps}")


class FilterResponseNorm(nn.Module):
    """Filter response normalization with a thresholded linear unit (Singh & Krishnan 2019).

    nu2 = mean of x^2 per sample and channel over the spatial dims (the single value on (N, F));
    y = max(weight * x / sqrt(nu2 + eps) + bias, tau). No mean subtraction, no batch dependence,
    the same in train and eval. `learnable_eps` adds |eps_learned| to eps, as the paper does for
    1x1 maps and fully connected layers. eps_learned starts at 1: on (N, F) a small eps makes
    x / sqrt(x^2 + eps) a sign function with vanishing gradients (measured on Fashion-MNIST, cnn,
    6,400 samples: test_acc 0.53 with eps_learned = 1e-4 at init, 0.81 with 1; batch norm 0.83).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False):
        super().__init__()
        self.num_features, self.eps, self.learnable_eps = num_features, eps, learnable_eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features))
        if learnable_eps:
            self.eps_learned = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_parameter("eps_learned", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        spatial = tuple(range(2, x.dim()))
        nu2 = xs.pow(2).mean(dim=spatial, keepdim=True) if spatial else xs.pow(2)  # (N, C, 1, 1) or (N, F)
        eps = self.eps + self.eps_learned.abs() if self.learnable_eps else self.eps
        y = xs * torch.rsqrt(nu2 + eps)
        y = y * channel_view(self.weight, x.dim()) + channel_view(self.bias, x.dim())
        return torch.maximum(y, channel_view(self.tau, x.dim())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}"


def apply_weight_norm(layer: nn.Module) -> nn.Module:
    """weight = g * v / ||v|| per output unit (Salimans & Kingma 2016), via torch's parametrization."""
    return nn.utils.parametrizations.weight_norm(layer, name="weight", dim=0)


def apply_spectral_norm(layer: nn.Module) -> nn.Module:
    """weight / sigma_max(weight), one power iteration per training step (Miyato et al. 2018)."""
    return nn.utils.parametrizations.spectral_norm(layer, name="weight", n_power_iterations=1)


class LayerReparam(nn.Identity):
    """The norm slot of a weight-reparametrized block: identity on activations; the model builder
    calls `wrap_layer` on the block's conv/linear layer instead."""

    def __init__(self, scheme: str, wrap: Callable[[nn.Module], nn.Module], layer: str):
        super().__init__()
        self.scheme, self._wrap, self.layer = scheme, wrap, layer

    def wrap_layer(self, module: nn.Module) -> nn.Module:
        """Reparametrize the block's layer (conv or linear) in place and return it."""
        return self._wrap(module)

    def extra_repr(self) -> str:
        return f"identity; {self.scheme} reparametrizes the weight of the conv/linear layer of block {self.layer}"
