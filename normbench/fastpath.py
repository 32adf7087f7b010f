"""Fast-path choices for normbench's own training loop, kept out of train.py.

- channels_last: 4-D activations stored (N, H, W, C), which oneDNN (CPU) and cuDNN (CUDA)
  convolve faster; measured on the 2-core EPYC, seed CNN, batch 64: ~1.4x alone (README).
- fused optimizers: one kernel updates every parameter (torch's `fused=True`, CPU and CUDA),
  instead of a Python loop over parameters; matters most at small batch, where the step is short.

`train.train` calls `prepare_model` after building the model, `prepare_data` once before the
first step, and `optimizer_options` when it builds the optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused Adam/AdamW/SGD kernels exist


def channels_last_on(setting: str | bool, model_name: str, sample_shape, device: torch.device) -> bool:
    """Resolve `channels_last: auto|true|false`; auto = on for the CNN on CPU and CUDA."""
    if setting == "auto":
        return model_name == "cnn" and len(sample_shape) == 3 and device.type in ("cpu", "cuda")
    return bool(setting)


def prepare_model(model: nn.Module, channels_last: bool) -> nn.Module:
    """The model with 4-D weights in channels_last layout (same values, other strides)."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A (N, C, H, W) tensor stored (N, H, W, C); other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def prepare_data(data, channels_last: bool):
    """Store the data's images channels_last once, so every sliced batch already is."""
    if channels_last:
        data.train_x = to_channels_last(data.train_x)
        data.test_x = to_channels_last(data.test_x)
    return data


def optimizer_options(device: torch.device) -> dict:
    """Keyword options for torch's SGD/Adam/AdamW: the fused kernel where torch has one."""
    return {"fused": True} if device.type in FUSED_DEVICES else {}


def optimizer_impl(device: torch.device) -> str:
    """How the optimizer updates parameters on `device` (recorded in meta.json)."""
    return "fused" if device.type in FUSED_DEVICES else "torch default (foreach or for-loop)"
