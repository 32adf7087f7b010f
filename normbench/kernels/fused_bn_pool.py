"""Batch norm + 2x2 max-pool + ReLU in one pass over the map: a CPU kernel for the fast path.

Why: in the seed CNN the first block's 32x28x28 map is memory-bound element-wise work (batch-norm
statistics, normalization, max-pool and its zero-filled backward, batch-norm backward): about
half of a bf16 step at batch 64 (README, "Performance"). PyTorch's eager kernels make about eleven
passes over that map per step; this makes four (statistics 2, forward 1 that writes only the
pooled map, backward 1 plus quarter-size reads).

What it computes, per channel c over the N*H*W positions (PyTorch's BatchNorm2d in training mode):
    mean, var (biased) of x;  y = (x - mean) * invstd * gamma + beta,  invstd = 1/sqrt(var + eps)
    out = ReLU(MaxPool2d(2)(y))  (the first maximum of each 2x2 window in row-major order, NaN wins)
and the gradient of BatchNorm2d composed with them (batch statistics depend on x):
    g_y = the pooled gradient at each window's argmax where out > 0, else 0
    dbeta = sum g_y,  dgamma = sum g_y * xhat,  dx = gamma * invstd * (g_y - dbeta/M - xhat * dgamma/M).
Statistics and sums accumulate in float64; element values are computed in float32 and stored in
the input's dtype (float32 or bfloat16, round to nearest even, as PyTorch rounds); the max-pool
compares the normalized values as stored in that dtype, so ties resolve as PyTorch's do.
`tests/test_fused_bn_pool.py` checks values, gradients and running statistics against
nn.BatchNorm2d -> nn.MaxPool2d(2) -> nn.ReLU.

`BatchNormMaxPoolReLU` is an nn.BatchNorm2d (same parameters, buffers and state_dict keys) whose
forward also pools and applies ReLU. It uses the kernel for float32/bfloat16 channels_last CPU
inputs with batch statistics; in every other case (eval mode with running statistics, CUDA,
float64, contiguous inputs) it calls PyTorch's own three functions, so results there are exactly
PyTorch's. The C++ is fused_bn_pool.cpp beside this file, compiled with torch.utils.cpp_extension
once per binary it produces (torch version, flags, source, CPU level: normbench.kernels.build;
about 30 s, cached under TORCH_EXTENSIONS_DIR); where it cannot be built, the fast path leaves
the model as built and says so in meta.json.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normbench.kernels import build

SPEC = build.KernelSpec("normbench_bn_pool_relu", Path(__file__).with_name("fused_bn_pool.cpp"))


@functools.lru_cache(maxsize=1)
def kernel():
    """The compiled extension (fused_bn_pool.cpp): loaded from its build for this torch, source and
    CPU level, or built now with a notice on stderr (normbench.kernels.build)."""
    return build.load(SPEC)


def ensure_built() -> str | None:
    """Build or load the kernel now, so that nothing timed later includes a compile: None when it
    is ready, else the one line kernel_error gives."""
    return kernel_error()


@functools.lru_cache(maxsize=1)
def kernel_error() -> str | None:
    """None when the kernel builds and loads here, else the first line of why not (asked once per process)."""
    try:
        kernel()
    except Exception as exc:  # no compiler, no ninja, a build error: the fast path goes without it
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


KERNEL_DTYPES = (torch.float32, torch.bfloat16)


class BatchNormPoolReLUFunction(torch.autograd.Function):
    """out = ReLU(MaxPool2d(2)(batch_norm(x))) with the batch statistics `mean`, `invstd` of x."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, scale, shift):  # x: (N, C, H, W) channels_last
        out, idx, xmax = kernel().forward(x, scale, shift)  # (N, C, H/2, W/2); 2x (N, H/2, W/2, C)
        ctx.save_for_backward(x, weight, mean, invstd, out, idx, xmax)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, out, idx, xmax = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dbeta, dgamma = kernel().reduce(grad, out, xmax, mean, invstd)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = kernel().input_grad(x, grad, out, idx, mean, invstd, weight, dbeta, dgamma)
        return dx, dgamma, dbeta, None, None, None, None


class BatchNormMaxPoolReLU(nn.BatchNorm2d):
    """nn.BatchNorm2d followed by nn.MaxPool2d(2) and nn.ReLU, as one module (see the module docstring)."""

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> "BatchNormMaxPoolReLU":
        """A copy of `bn` (hyper-parameters, parameters, buffers, mode) that also pools and applies ReLU."""
        state = next(iter(bn.state_dict().values()), None)  # a parameter or statistic: its device and dtype
        fused = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                    track_running_stats=bn.track_running_stats,
                    device=state.device if state is not None else None,
                    dtype=state.dtype if state is not None and state.is_floating_point() else None)
        fused.load_state_dict(bn.state_dict())
        fused.train(bn.training)
        return fused

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        batch_stats = self.training or self.running_mean is None
        float32_state = all(t is None or t.dtype == torch.float32 for t in (self.weight, self.bias, self.running_mean, self.running_var))
        return (batch_stats and float32_state and x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and x.dim() == 4
                and x.shape[2] >= 2 and x.shape[3] >= 2 and x.shape[0] * x.shape[2] * x.shape[3] > 1
                and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_kernel(x):
            return plain_pool(super().forward(x))
        factor = 0.0  # the running statistics' update weight, as nn.BatchNorm2d picks it
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        channels = x.shape[1]
        weight = self.weight if self.affine else torch.ones(channels)
        bias = self.bias if self.affine else torch.zeros(channels)
        none = torch.empty(0)
        with torch.no_grad():
            mean, invstd, scale, shift = kernel().prepare(
                x, weight.detach(), bias.detach(), self.running_mean if factor else none,
                self.running_var if factor else none, factor, self.eps)
        return BatchNormPoolReLUFunction.apply(x, weight, bias, mean, invstd, scale, shift)


def plain_pool(y: torch.Tensor) -> torch.Tensor:
    """PyTorch's own ReLU(MaxPool2d(2)(y)): the fused modules' path where the kernel does not apply."""
    return F.relu(F.max_pool2d(y, 2))


def pool_and_relu(pool: nn.Module, act: nn.Module) -> bool:
    """Are (pool, act) a plain 2x2 stride-2 MaxPool2d (no padding, dilation, ceil mode or indices)
    and a ReLU, the two the fused kernels apply after the norm?"""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(act) is nn.ReLU and type(pool) is nn.MaxPool2d
            and pair(pool.kernel_size) == (2, 2) and pair(pool.stride or pool.kernel_size) == (2, 2)
            and pair(pool.padding) == (0, 0) and pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode and not pool.return_indices)
