"""Group norm + 2x2 max-pool + ReLU in one pass over the map: the fast path's CPU kernel for the
per-sample norms (group, layer and instance norm on conv maps).

Layer norm on a conv map is `nn.GroupNorm(1, C)` in normbench (normbench.norms) and instance norm
is `nn.InstanceNorm2d(C)` without running statistics, i.e. group norm with C groups; so one kernel
serves all three. What it computes, per sample n and group g of C/G consecutive channels over the
M = C/G * H * W values of the group (PyTorch's GroupNorm):
    mean, var (biased);  y = (x - mean) * invstd * gamma[c] + beta[c],  invstd = 1/sqrt(var + eps)
    out = ReLU(MaxPool2d(2)(y))  (the first maximum of each 2x2 window in row-major order, NaN wins)
and the gradient of the composition (g_y: the pooled gradient at each window's argmax where out > 0):
    dbeta = sum g_y,  dgamma = sum g_y * xhat  (over samples and positions),
    dx = invstd * (gamma * g_y - A/M - xhat * B/M),  A, B = sums over the group of gamma * g_y and
    gamma * g_y * xhat.
The C++ is in fused_bn_pool.cpp (one extension for both kernels: its forward pass and its input
gradient pass are batch norm's, with per-sample instead of per-batch coefficients). Statistics
and sums accumulate in float64, elements are computed in float32 and stored in the input's dtype
(float32 or bfloat16, rounded to nearest even); the max-pool compares the values as stored, so
ties resolve as PyTorch's do. `tests/test_fused_gn_pool.py` checks values and gradients against
nn.GroupNorm / nn.InstanceNorm2d -> F.max_pool2d -> F.relu.

`GroupNormMaxPoolReLU` is an nn.GroupNorm and `InstanceNormMaxPoolReLU` an nn.InstanceNorm2d
(same parameters, buffers and state_dict keys) whose forward also pools and applies ReLU. They use
the kernel for float32/bfloat16 channels_last CPU inputs; every other input (CUDA, float64,
contiguous, maps smaller than 2x2) goes through PyTorch's own three functions.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.kernels.fused_bn_pool import KERNEL_DTYPES, BatchNormPoolReLUFunction, kernel, plain_pool


class GroupNormPoolReLUFunction(BatchNormPoolReLUFunction):
    """out = ReLU(MaxPool2d(2)(group_norm(x))) with the group statistics `mean`, `invstd` (N, G) of
    x: batch norm's forward with per-sample scale and shift (N, C), group norm's backward."""

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, out, idx, xmax = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx, dgamma, dbeta = kernel().group_backward(x, grad, out, idx, xmax, mean, invstd, weight,
                                                    ctx.needs_input_grad[0])
        return dx, dgamma, dbeta, None, None, None, None


def uses_kernel(x: torch.Tensor, params) -> bool:
    """Can the kernel take `x` (float32/bfloat16, channels_last, on the CPU, at least 2x2) with
    these affine parameters (None or float32)?"""
    return (x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and x.dim() == 4 and x.shape[2] >= 2
            and x.shape[3] >= 2 and x.is_contiguous(memory_format=torch.channels_last)
            and all(p is None or p.dtype == torch.float32 for p in params))


def group_norm_pool_relu(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """The kernel's ReLU(MaxPool2d(2)(group_norm(x, groups, weight, bias, eps))); weight and bias
    None mean 1 and 0 (no affine)."""
    channels = x.shape[1]
    weight = weight if weight is not None else torch.ones(channels)
    bias = bias if bias is not None else torch.zeros(channels)
    with torch.no_grad():
        mean, invstd, scale, shift = kernel().group_prepare(x, weight.detach(), bias.detach(), groups, eps)
    return GroupNormPoolReLUFunction.apply(x, weight, bias, mean, invstd, scale, shift)


class GroupNormMaxPoolReLU(nn.GroupNorm):
    """nn.GroupNorm followed by nn.MaxPool2d(2) and nn.ReLU, as one module (see the module docstring)."""

    @classmethod
    def from_group_norm(cls, gn: nn.GroupNorm) -> "GroupNormMaxPoolReLU":
        """A copy of `gn` (hyper-parameters, parameters, mode) that also pools and applies ReLU."""
        fused = cls(gn.num_groups, gn.num_channels, eps=gn.eps, affine=gn.affine,
                    device=gn.weight.device if gn.affine else None, dtype=gn.weight.dtype if gn.affine else None)
        fused.load_state_dict(gn.state_dict())
        fused.train(gn.training)
        return fused

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        return uses_kernel(x, (self.weight, self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_kernel(x):
            return plain_pool(super().forward(x))
        return group_norm_pool_relu(x, self.num_groups, self.weight, self.bias, self.eps)


class InstanceNormMaxPoolReLU(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (no running statistics) followed by nn.MaxPool2d(2) and nn.ReLU, as one
    module: group norm with one group per channel (see the module docstring)."""

    @classmethod
    def from_instance_norm(cls, norm: nn.InstanceNorm2d) -> "InstanceNormMaxPoolReLU":
        """A copy of `norm` (hyper-parameters, parameters, mode) that also pools and applies ReLU."""
        fused = cls(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                    track_running_stats=norm.track_running_stats,
                    device=norm.weight.device if norm.affine else None, dtype=norm.weight.dtype if norm.affine else None)
        fused.load_state_dict(norm.state_dict())
        fused.train(norm.training)
        return fused

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        return not self.track_running_stats and uses_kernel(x, (self.weight, self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_kernel(x):
            return plain_pool(super().forward(x))
        return group_norm_pool_relu(x, self.num_features, self.weight, self.bias, self.eps)


def fuse(norm: nn.Module) -> nn.Module | None:
    """The fused copy of `norm` when it is PyTorch's GroupNorm, or InstanceNorm2d without running
    statistics (they would need updating and using in eval); else None."""
    if type(norm) is nn.GroupNorm:
        return GroupNormMaxPoolReLU.from_group_norm(norm)
    if type(norm) is nn.InstanceNorm2d and not norm.track_running_stats:
        return InstanceNormMaxPoolReLU.from_instance_norm(norm)
    return None
