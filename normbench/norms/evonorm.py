"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020, "Evolving Normalization-Activation
Layers"): normalization and nonlinearity in one layer, found by architecture search.

On feature vectors (N, F) both read the input as 1x1 maps (N, F, 1, 1), the formula's own
meaning there: a single value per sample and channel has instance variance 0.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.norms.reference import ReferenceGroupNorm, affine_parameters, apply_affine, channel_view, stats_dtype


class EvoNormB0(nn.Module):
    """EvoNorm-B0: y = x / max(sqrt(s2_batch + eps), v * x + sqrt(s2_instance + eps)) * gamma + beta.

    s2_batch: per channel over (N, *spatial), biased; s2_instance: per sample and channel over
    the spatial dims (0 on (N, F)). Training normalizes with the batch variance and updates
    `running_var` as batch norm updates its running variance (momentum, unbiased, momentum None
    = cumulative average); eval uses `running_var`. `track_running_stats=False`: batch variance
    always. v (per channel, initialized to 1) is always learned; gamma/beta when `affine`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        affine_parameters(self, num_features, affine)
        self.v = nn.Parameter(torch.ones(num_features))
        if track_running_stats:
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def batch_variance(self, x: torch.Tensor) -> torch.Tensor:
        """The biased batch variance per channel (C,); in training also updates `running_var`."""
        reduce = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        var = torch.var(x, dim=reduce, correction=0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / self.num_batches_tracked.to(var.dtype) if self.momentum is None else self.momentum
                self.running_var.copy_((1 - factor) * self.running_var + factor * var * (count / (count - 1)))
        return var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        use_batch = self.training or not self.track_running_stats
        var = self.batch_variance(xs) if use_batch else self.running_var  # (C,)
        left = channel_view(torch.sqrt(var + self.eps), x.dim())
        spatial = tuple(range(2, x.dim()))
        instance_var = torch.var(xs, dim=spatial, correction=0, keepdim=True) if spatial else torch.zeros_like(xs)
        right = xs * channel_view(self.v, x.dim()) + torch.sqrt(instance_var + self.eps)  # (N, C, ...)
        return apply_affine(xs / torch.maximum(left, right), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class EvoNormS0(ReferenceGroupNorm):
    """EvoNorm-S0: y = x * sigmoid(v * x) / sqrt(s2_group + eps) * gamma + beta, no batch statistics.

    s2_group: per sample and group of C/G channels over (C/G, *spatial), biased, as group norm
    (whose parameters and checks it shares); the same in train and eval. v (per channel,
    initialized to 1) is always learned.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.v = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = stats_dtype(x)
        grouped = xs.reshape(x.shape[0], self.num_groups, -1)  # (N, G, C/G * spatial)
        var = torch.var(grouped, dim=2, correction=0, keepdim=True)  # (N, G, 1)
        group_std = torch.sqrt(var + self.eps).expand_as(grouped).reshape(x.shape)  # (N, C, ...)
        y = xs * torch.sigmoid(xs * channel_view(self.v, x.dim())) / group_std
        return apply_affine(y, self.weight, self.bias).to(x.dtype)
