"""Cross-process batch norm that works on CPU (gloo) and GPU (nccl) alike.

PyTorch's `nn.SyncBatchNorm` refuses CPU tensors, so normbench has its own: in training, each
process computes per-channel [sum, count] over its shard, an all-reduce gives the global mean,
a second all-reduce of the centred sums of squares gives the global (biased) variance, and the backward pass all-reduces the two
per-channel gradient reductions (sum dy, sum dy * xhat) so input gradients are those of the
global batch. gamma/beta gradients stay local: DistributedDataParallel averages them.

Without an initialized process group (or with one process) there is nothing to reduce and the
layer computes exactly what `nn.BatchNorm1d/2d` computes.

Shapes: x is (N, C) or (N, C, H, W); statistics are per channel C over every other dimension.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channel dimension 1."""
    return [0, *range(2, x.dim())]


def _channel_shape(x: torch.Tensor) -> list[int]:
    """Shape that broadcasts a per-channel (C,) vector against x: (1, C) or (1, C, 1, 1)."""
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """Sum `tensor` over the processes of `group` in place (a no-op without a process group)."""
    if group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with mean/var over all processes' shards."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group):
        dims = _reduce_dims(x)
        local_count = x.numel() // x.shape[1]  # values per channel in this shard
        if local_count <= 1 and group is None:  # as nn.BatchNorm; checked without a host sync
            raise ValueError(f"expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        # Two all-reduces, as a two-pass variance: first (C + 1,) = [sum x per channel, count] gives
        # the global mean, then (C,) = sum (x - mean)^2. A one-pass E[x^2] - E[x]^2 in float32 loses
        # the variance when a channel's mean is large against its spread (tested).
        channels = x.shape[1]
        shape = _channel_shape(x)
        stats = torch.cat([x.sum(dims), torch.tensor([float(local_count)], dtype=x.dtype, device=x.device)])
        stats = _all_reduce_sum(stats, group)
        count = stats[-1]
        mean = stats[:channels] / count  # (C,)
        centered_sq = _all_reduce_sum((x - mean.view(shape)).square().sum(dims), group)
        var = centered_sq / count  # biased variance of the global batch, (C,)
        invstd = torch.rsqrt(var + eps)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(xhat, invstd, weight, count)
        ctx.group = group
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_count):
        xhat, invstd, weight, count = ctx.saved_tensors
        dims = _reduce_dims(grad_y)
        shape = _channel_shape(grad_y)
        local_sum_dy = grad_y.sum(dims)  # (C,)
        local_sum_dy_xhat = (grad_y * xhat).sum(dims)  # (C,)
        # Parameter gradients from this shard only; DDP averages them over processes.
        grad_weight = local_sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = local_sum_dy if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            global_sums = _all_reduce_sum(torch.cat([local_sum_dy, local_sum_dy_xhat]), ctx.group)
            channels = grad_y.shape[1]
            mean_dy = (global_sums[:channels] / count).view(shape)
            mean_dy_xhat = (global_sums[channels:] / count).view(shape)
            scale = invstd if weight is None else invstd * weight
            # d/dx of the normalized output, with mean and variance over the global batch.
            grad_x = (grad_y - mean_dy - xhat * mean_dy_xhat) * scale.view(shape)
        return grad_x, grad_weight, grad_bias, None, None


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all processes; eval uses running statistics.

    Same parameters, buffers and momentum semantics as `nn.BatchNorm2d` (momentum None is a
    cumulative average); the running variance is unbiased over the global count.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group  # None: the default group, when one is initialized

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected (N, C) or (N, C, H, W) input, got {x.dim()}-D input of shape {tuple(x.shape)}")

    def _group(self):
        """The process group to reduce over, or None when there is only this process."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize x (N, C[, H, W]) per channel; statistics over all processes in training."""
        self._check_input_dim(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        in_dtype = x.dtype
        # Only training reduces across processes (as nn.SyncBatchNorm): evaluation without running
        # statistics uses each process's own batch, so ranks may evaluate different numbers of batches.
        group = self._group() if self.training else None
        # Reductions in at least float32 (autocast may hand us fp16/bf16), as PyTorch's BN does.
        with torch.autocast(device_type=x.device.type, enabled=False):
            compute = x.float() if in_dtype in (torch.float16, torch.bfloat16) else x
            y, mean, var, count = _SyncBatchNormFunction.apply(compute, self.weight, self.bias, self.eps, group)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return y.to(in_dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """PyTorch's rule: running = (1 - m) * running + m * batch; m = 1 / batches when momentum is None."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            momentum = self.momentum
        unbiased = var * (count / (count - 1))  # Bessel's correction over the GLOBAL count
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
