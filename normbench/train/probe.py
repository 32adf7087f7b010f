"""The activation probe (the BN paper's Figure 1(b, c)); normbench/report/probe_plots.py draws it.

During training, every `probe.every` steps (and at step 1), a forward pre-hook on the chosen
layer records the 15th, 50th and 85th percentiles of that layer's input (one unit, or all units
pooled) into `probe.csv`; with `probe.test_acc` the test accuracy at that step too. The hook only
computes on probe steps and the one host sync per probe step happens after the optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from normbench.errors import ConfigError, NormbenchError
from normbench.results import CsvLog

PROBE_FILE = "probe.csv"
PROBE_COLUMNS = ("step", "epoch", "layer", "unit", "p15", "p50", "p85", "test_acc")
QUANTILES = (0.15, 0.50, 0.85)
MAX_VALUES = 1 << 24  # torch.quantile's input limit; larger inputs are subsampled with a stride


def _probed_values(x: torch.Tensor, unit: int | None) -> torch.Tensor:
    """The probed values of a layer input (B, C, ...) or (B, F) as a flat float32 tensor."""
    x = x.detach()
    if unit is not None:
        x = x[:, unit]
    values = x.float().reshape(-1)
    if values.numel() > MAX_VALUES:
        values = values[:: math.ceil(values.numel() / MAX_VALUES)]
    return values


def check_probe(model: nn.Module, probe_cfg, input_shape, model_name: str) -> None:
    """Config-time check (on a meta-device model) that probe.layer is a layer of the model and
    probe.unit exists in its input."""
    if probe_cfg is None:
        return
    layers = dict(model.named_children())
    if probe_cfg.layer not in layers:
        raise ConfigError(f"probe.layer={probe_cfg.layer!r} is not a layer of model {model_name}; valid layers: {', '.join(layers)}")
    if probe_cfg.unit is None:
        return
    layer = layers[probe_cfg.layer]
    seen = {}

    def record(module, args) -> None:  # a pre-hook that returns something would replace the input
        seen.setdefault("shape", tuple(args[0].shape))

    handle = layer.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            model(torch.empty((2, *input_shape), device="meta"))
    finally:
        handle.remove()
    units = seen["shape"][1]
    if probe_cfg.unit >= units:
        raise ConfigError(f"probe.unit={probe_cfg.unit}: the input of layer '{probe_cfg.layer}' has {units} units; use 0..{units - 1} or null")


class Probe:
    """Records input percentiles of one layer of `model` into `probe.csv` in `run_path`."""

    def __init__(self, model: nn.Module, probe_cfg, run_path: Path, append: bool = False):
        self.cfg = probe_cfg
        layer = dict(model.named_children())[probe_cfg.layer]
        self.armed = False
        self.pending: torch.Tensor | None = None  # (3,) percentiles, on the device
        self.quantiles = None
        self.handle = layer.register_forward_pre_hook(self._hook)
        self.log = CsvLog(Path(run_path) / PROBE_FILE, PROBE_COLUMNS, append=append)  # append: a resumed run

    def _hook(self, module, args) -> None:
        if self.armed:
            values = _probed_values(args[0], self.cfg.unit)
            if self.quantiles is None or self.quantiles.device != values.device:
                self.quantiles = torch.tensor(QUANTILES, device=values.device)
            self.pending = torch.quantile(values, self.quantiles)

    def before_step(self, step: int) -> None:
        """Arm the hook if training step `step` (1-based) is a probe step."""
        self.armed = step == 1 or step % self.cfg.every == 0

    def after_step(self, step: int, epoch: int, test_acc=None) -> None:
        """Write the row of a probe step; `test_acc()` is called for the accuracy if probe.test_acc."""
        if not self.armed:
            return
        self.armed = False
        if self.pending is None:
            raise NormbenchError(f"probe: layer '{self.cfg.layer}' was not called in the forward pass")
        p15, p50, p85 = self.pending.tolist()  # the host sync, on probe steps only
        self.pending = None
        self.log.write({
            "step": step, "epoch": epoch, "layer": self.cfg.layer, "unit": "all" if self.cfg.unit is None else self.cfg.unit,
            "p15": p15, "p50": p50, "p85": p85, "test_acc": test_acc() if self.cfg.test_acc and test_acc else None,
        })

    def close(self) -> None:
        """Remove the hook and close probe.csv."""
        self.handle.remove()
        self.log.close()
