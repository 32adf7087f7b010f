"""Where and how a run computes: device choice, seeding, autocast precision, device sync."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from normbench.errors import NormbenchError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an unavailable device is a one-line error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NormbenchError("device: cuda was requested but torch finds no CUDA GPU here; use device: cpu or auto")
    if name == "mps" and not has_mps:
        raise NormbenchError("device: mps was requested but Apple's MPS backend is not available here; use device: cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str, cache: bool = True):
    """The autocast context for `precision` (a no-op for fp32); `cache=False` inside a CUDA graph capture."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=cache)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1
