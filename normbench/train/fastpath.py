"""Fast-path choices for normbench's own training loop, kept out of train.py.

- channels_last: 4-D activations stored (N, H, W, C), which oneDNN (CPU) and cuDNN (CUDA)
  convolve faster; measured on the 2-core EPYC, seed CNN, batch 64: ~1.4x alone (README).
- fused optimizers: one kernel updates every parameter (torch's `fused=True`, CPU and CUDA),
  instead of a Python loop over parameters; matters most at small batch, where the step is short.
- pool before ReLU: `ReLU -> MaxPool2d` computes the same values and gradients as
  `MaxPool2d -> ReLU` (ReLU is monotone, so the max of the ReLUs is the ReLU of the max, and where
  the window's max is <= 0 both give a zero gradient), and the second applies ReLU, forward and
  backward, to a quarter of the elements. Only with `placement: pre` are the two adjacent.
- flatten that keeps channels_last: `nn.Flatten` of a channels_last map hands backward a
  contiguous (N, C, H, W) gradient, and CPU max-pool backward then converts its input, indices and
  output to that layout (slow kernels, ~10% of a bf16 step at batch 64); `ChannelsLastFlatten`
  gives the same (N, C*H*W) values and hands backward a channels_last gradient.
- norm + max-pool + ReLU in one CPU kernel (`normbench.kernels.fused_bn_pool` for BatchNorm2d,
  `fused_gn_pool` for GroupNorm, i.e. normbench's group and layer norm, and InstanceNorm2d without
  running statistics): on CPU, with channels_last, every `norm, MaxPool2d(2), ReLU` run (after the
  swap above) becomes one module whose forward and backward make about four passes over the map
  instead of about eleven. Same parameter names; checked against the three modules.

`train.train` calls `prepare_model` after building the model, `prepare_data` once before the
first step, and `optimizer_options` when it builds the optimizer. The rewrites change no
parameter name, so state_dicts are those of the model as built (tests/test_fastpath.py,
tests/test_fused_bn_pool.py, tests/test_fused_gn_pool.py).
"""

from __future__ import annotations

import torch
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused Adam/AdamW/SGD kernels exist


def _fused_kinds() -> dict:
    """Fused module class -> the norm it fuses, in words (for meta.json's fast_path_rewrites)."""
    from normbench.kernels.fused_bn_pool import BatchNormMaxPoolReLU
    from normbench.kernels.fused_gn_pool import GroupNormMaxPoolReLU, InstanceNormMaxPoolReLU

    return {BatchNormMaxPoolReLU: "batch norm", GroupNormMaxPoolReLU: "group norm",
            InstanceNormMaxPoolReLU: "instance norm"}


def channels_last_on(setting: str | bool, model_name: str, sample_shape, device: torch.device) -> bool:
    """Resolve `channels_last: auto|true|false`; auto = on for the CNN on CPU and CUDA."""
    if setting == "auto":
        return model_name == "cnn" and len(sample_shape) == 3 and device.type in ("cpu", "cuda")
    return bool(setting)


def prepare_model(model: nn.Module, channels_last: bool, reorder: bool = True, fuse: bool = True) -> nn.Module:
    """The model with 4-D weights in channels_last layout (same values, other strides) and, with
    `reorder`, the exact rewrites above, in every nn.Sequential of the model (the packed model's
    body included). Pass reorder=False when hooks must see the layers' inputs as built (the
    activation probe)."""
    if reorder:
        pool_before_relu(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Flatten and child.start_dim == 1 and child.end_dim == -1:
                    setattr(parent, name, ChannelsLastFlatten())
    if reorder and channels_last and fuse:
        fuse_norm_pool_relu(model)
    return model


def fuse_norm_pool_relu(model: nn.Module) -> list[str]:
    """In place, on CPU models: every `norm, MaxPool2d(2), ReLU` run of a Sequential whose norm is
    PyTorch's BatchNorm2d, GroupNorm (normbench's group and layer norm) or InstanceNorm2d without
    running statistics becomes `<fused norm>, Identity, Identity` (normbench.kernels.fused_bn_pool
    and fused_gn_pool; same state_dict keys). Returns the runs fused; none when the model is not on
    the CPU or the kernel cannot be built here (then `rewrites(model)` says why)."""
    from normbench.kernels import fused_bn_pool

    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    runs = []
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for a, b, c in zip(names, names[1:], names[2:]):
            norm, pool, act = sequential._modules[a], sequential._modules[b], sequential._modules[c]
            fused = fused_copy(norm) if on_cpu and fused_bn_pool.pool_and_relu(pool, act) else None
            if fused is not None:
                runs.append((sequential, a, b, c, fused))
    if not runs:
        return []
    error = fused_bn_pool.kernel_error()
    if error:
        named = _fused_kinds()
        kinds = sorted({named[type(fused)] for *_, fused in runs}, key=list(named.values()).index)
        model._normbench_fusion_unavailable = (" and ".join(kinds), error)
        return []
    for sequential, a, b, c, fused in runs:
        sequential._modules[a] = fused
        sequential._modules[b] = nn.Identity()
        sequential._modules[c] = nn.Identity()
    return [f"{a}+{b}+{c}" for _, a, b, c, _ in runs]


def fused_copy(norm: nn.Module) -> nn.Module | None:
    """The module that computes ReLU(MaxPool2d(2)(norm(x))) in one CPU kernel, with norm's
    parameters and state, or None for a norm no kernel covers."""
    from normbench.kernels import fused_bn_pool, fused_gn_pool

    if type(norm) is nn.BatchNorm2d:
        fused = fused_bn_pool.BatchNormMaxPoolReLU.from_batch_norm(norm)
    else:
        fused = fused_gn_pool.fuse(norm)
    if fused is not None:  # make_norm's tags, which meta.json's norm_layers read
        for tag in ("norm_type", "norm_channels"):
            if hasattr(norm, tag):
                setattr(fused, tag, getattr(norm, tag))
    return fused


def pool_before_relu(model: nn.Module) -> list[str]:
    """In place: every `ReLU, MaxPool2d` pair of every nn.Sequential in `model` becomes
    `MaxPool2d, ReLU` (same names, same math: see the module docstring). Returns the pairs moved."""
    moved = []
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(sequential._modules.items())
        i = 0
        while i + 1 < len(children):
            (act_name, act), (pool_name, pool) = children[i], children[i + 1]
            if type(act) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices:
                children[i], children[i + 1] = children[i + 1], children[i]
                moved.append(f"{pool_name} before {act_name}")
                i += 2
            else:
                i += 1
        sequential._modules.clear()
        sequential._modules.update(children)
    return moved


class _FlattenChannelsLastGrad(torch.autograd.Function):
    """x.flatten(1) of a 4-D x whose backward returns a channels_last gradient."""

    @staticmethod
    def forward(ctx, x):  # x: (N, C, H, W), any layout
        ctx.shape = x.shape
        return x.contiguous().view(x.shape[0], -1)  # (N, C*H*W) in (C, H, W) order, as nn.Flatten

    @staticmethod
    def backward(ctx, grad):  # grad: (N, C*H*W)
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class ChannelsLastFlatten(nn.Module):
    """nn.Flatten() for channels_last 4-D inputs: same output, channels_last gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.requires_grad:
            return _FlattenChannelsLastGrad.apply(x)
        return x.flatten(1)


def rewrites(model: nn.Module) -> list[str]:
    """What prepare_model changed in `model`, in words, for meta.json (normbench's models never
    build a max-pool directly followed by ReLU, so such a pair is the rewrite's)."""
    done = []
    if any(isinstance(m, ChannelsLastFlatten) for m in model.modules()):
        done.append("flatten keeps a channels_last gradient")
    kinds = _fused_kinds()
    swapped, fused = [], {kind: [] for kind in kinds.values()}
    for sequential in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        pairs = list(sequential.named_children())
        swapped += [f"{a} before {b}" for (a, first), (b, second) in zip(pairs, pairs[1:])
                    if type(first) is nn.MaxPool2d and type(second) is nn.ReLU]
        for (a, first), (b, _), (c, _) in zip(pairs, pairs[1:], pairs[2:]):
            if type(first) in kinds:
                fused[kinds[type(first)]].append(f"{a}+{b}+{c}")
    if swapped:
        done.append("max-pool before ReLU (exact): " + ", ".join(swapped))
    for kind, runs in fused.items():
        if runs:
            done.append(f"{kind} + max-pool + ReLU in one CPU kernel: " + ", ".join(runs))
    unavailable = getattr(model, "_normbench_fusion_unavailable", None)
    if unavailable:
        kind, error = unavailable
        done.append(f"{kind} + max-pool + ReLU not fused: the CPU kernel cannot be built here ({error})")
    return done


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A (N, C, H, W) tensor stored (N, H, W, C); other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def prepare_data(data, channels_last: bool):
    """Store the data's images channels_last once, so every sliced batch already is."""
    if channels_last:
        data.train_x = to_channels_last(data.train_x)
        data.test_x = to_channels_last(data.test_x)
        if data.val_x is not None:
            data.val_x = to_channels_last(data.val_x)
    return data


def optimizer_options(device: torch.device) -> dict:
    """Keyword options for torch's SGD/Adam/AdamW: the fused kernel where torch has one."""
    return {"fused": True} if device.type in FUSED_DEVICES else {}


def optimizer_impl(device: torch.device) -> str:
    """How the optimizer updates parameters on `device` (recorded in meta.json)."""
    return "fused" if device.type in FUSED_DEVICES else "torch default (foreach or for-loop)"
