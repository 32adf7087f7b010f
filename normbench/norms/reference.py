"""From-scratch normalization layers in plain tensor operations (`norm.impl: reference`).

Each module follows PyTorch's semantics exactly and uses the same parameter and buffer names
(`weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`), so state_dicts
interchange with `torch.nn`:

- normalize with the biased variance: x_hat = (x - mean) / sqrt(var_biased + eps)
- store the unbiased variance: running_var <- (1 - m) * running_var + m * var * n / (n - 1)
- `momentum=None`: cumulative average, m = 1 / num_batches_tracked
- eval mode uses running statistics; `track_running_stats=False` uses batch statistics always
- y = weight * x_hat + bias when affine

Statistics are computed in float32 even for half-precision inputs (as PyTorch's kernels do).
"""

from __future__ import annotations

import torch
from torch import nn


def stats_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is half precision (statistics in bf16/fp16 lose too many digits)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel (C,) tensor shaped (1, C, 1, ...) to broadcast against an ndim input."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def affine_parameters(module: nn.Module, shape, enabled: bool) -> None:
    """Register `weight` (ones) and `bias` (zeros) of `shape` on `module`, or both as None when disabled."""
    if enabled:
        module.weight = nn.Parameter(torch.ones(shape))
        module.bias = nn.Parameter(torch.zeros(shape))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def apply_affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """y * weight + bias with per-channel (C,) weight and bias; y itself when there is no weight."""
    if weight is None:
        return y
    return y * channel_view(weight, y.dim()) + channel_view(bias, y.dim())


class _RunningStats(nn.Module):
    """Affine parameters and running-statistics buffers, named and initialized as in torch's _NormBase."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool, track_running_stats: bool):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        affine_parameters(self, num_features, affine)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def _affine(self, x_hat: torch.Tensor) -> torch.Tensor:
        return apply_affine(x_hat, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class ReferenceBatchNorm(_RunningStats):
    """Batch normalization per channel over every dim but 1: (N, C), (N, C, L) or (N, C, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dims: int = 2):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.dims = dims

    def _check(self, x: torch.Tensor) -> None:
        allowed = (4,) if self.dims == 2 else (2, 3)
        if x.dim() not in allowed:
            raise ValueError(f"expected {' or '.join(f'{d}D' for d in allowed)} input (got {x.dim()}D input)")

    def update_factor(self) -> torch.Tensor | float:
        """Count this training batch and return the running-average weight (momentum or 1/count)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / self.num_batches_tracked.double()  # stays on the device: no host sync
        return self.momentum

    def batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean (C,), biased variance (C,), values per channel) of x over all dims but 1."""
        reduce = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        if count <= 1:  # the same message as torch's _verify_batch_size
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        var, mean = torch.var_mean(x, dim=reduce, correction=0)
        return mean, var, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        xs = stats_dtype(x)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            mean, var, count = self.batch_stats(xs)
            if self.training and self.track_running_stats:
                factor = self.update_factor()
                with torch.no_grad():
                    unbiased = var * (count / (count - 1))
                    self.running_mean.copy_((1 - factor) * self.running_mean + factor * mean.detach())
                    self.running_var.copy_((1 - factor) * self.running_var + factor * unbiased.detach())
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (xs - channel_view(mean, x.dim())) * channel_view(torch.rsqrt(var + self.eps), x.dim())
        return self._affine(x_hat).to(x.dtype)


class ReferenceInstanceNorm2d(_RunningStats):
    """Instance normalization per sample and channel over (H, W), with torch's defaults (no affine, no stats).

    With `track_running_stats`, training updates the running statistics with the mean over the
    batch of the per-instance means and unbiased variances, and eval normalizes with them.
    As in torch, `momentum=None` means the running statistics are never updated (factor 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        xs = stats_dtype(x)
        if self.training or not self.track_running_stats:
            spatial = x.shape[2] * x.shape[3]
            if spatial <= 1:  # torch's _verify_spatial_size
                raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(x.shape)}")
            var, mean = torch.var_mean(xs, dim=(2, 3), correction=0, keepdim=True)  # (N, C, 1, 1)
            if self.training and self.track_running_stats:
                factor = 0.0 if self.momentum is None else self.momentum
                with torch.no_grad():
                    unbiased = (var * (spatial / (spatial - 1))).mean(dim=(0, 2, 3))  # (C,)
                    self.running_mean.copy_((1 - factor) * self.running_mean + factor * mean.mean(dim=(0, 2, 3)))
                    self.running_var.copy_((1 - factor) * self.running_var + factor * unbiased)
            x_hat = (xs - mean) * torch.rsqrt(var + self.eps)
        else:
            x_hat = (xs - channel_view(self.running_mean, 4)) * channel_view(torch.rsqrt(self.running_var + self.eps), 4)
        return self._affine(x_hat).to(x.dtype)


class ReferenceGroupNorm(nn.Module):
    """Group normalization: per sample and group of C/G channels, over (C/G, *spatial); per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        affine_parameters(self, num_channels, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        n = x.shape[0]
        grouped = xs.reshape(n, self.num_groups, -1)  # (N, G, C/G * spatial); copies a channels_last input
        var, mean = torch.var_mean(grouped, dim=2, correction=0, keepdim=True)  # (N, G, 1)
        x_hat = ((grouped - mean) * torch.rsqrt(var + self.eps)).view(x.shape)
        return apply_affine(x_hat, self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class ReferenceLayerNorm(nn.Module):
    """Layer normalization over the last dim of (..., F), elementwise affine, as torch's LayerNorm(F)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.normalized_shape, self.eps, self.elementwise_affine = (normalized_shape,), eps, elementwise_affine
        affine_parameters(self, normalized_shape, elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        var, mean = torch.var_mean(xs, dim=-1, correction=0, keepdim=True)  # (..., 1)
        x_hat = (xs - mean) * torch.rsqrt(var + self.eps)
        if self.elementwise_affine:
            x_hat = x_hat * self.weight + self.bias
        return x_hat.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
