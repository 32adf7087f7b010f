"""The activation probe (the BN paper's Figure 1(b, c)) and its plots.

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


def _save(fig, out_png: Path) -> Path:
    """Write a figure as PNG (creating its folder) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def _run_label(run_dir: Path) -> str:
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        return f"{cfg['name']} (norm {cfg['norm']['type']})"
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return Path(run_dir).name


def _read_probe(run_dir: Path):
    import pandas as pd

    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        raise NormbenchError(f"{path} not found; add `probe: {{layer: act1, every: 50}}` to the run's config")
    frame = pd.read_csv(path)
    if frame.empty:
        raise NormbenchError(f"{path} has no rows; the run stopped before its first probe step")
    return frame


def plot_probe(run_dir: Path | list[Path], out_png: Path) -> Path:
    """Plot the probed percentiles (median line, 15-85 % band) vs step, one panel per run dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    frames = [_read_probe(d) for d in run_dirs]
    fig, axes = plt.subplots(1, len(frames), figsize=(5 * len(frames), 3.6), sharey=True, squeeze=False)
    for ax, run, frame in zip(axes[0], run_dirs, frames):
        ax.fill_between(frame["step"], frame["p15"], frame["p85"], alpha=0.3, label="15-85th percentile")
        ax.plot(frame["step"], frame["p50"], label="median")
        unit = frame["unit"].iloc[0]
        ax.set_title(f"{_run_label(run)}\ninput to {frame['layer'].iloc[0]}, unit {unit}", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("layer input")
    axes[0][0].legend(fontsize=8)
    return _save(fig, out_png)


def accuracy_vs_steps(run_dir: Path):
    """(steps, test accuracies) of a run: probe.csv's test_acc if recorded, else epochs.csv."""
    import pandas as pd
    import yaml

    run_dir = Path(run_dir)
    probe_path = run_dir / PROBE_FILE
    if probe_path.is_file():
        frame = pd.read_csv(probe_path).dropna(subset=["test_acc"])
        if not frame.empty:
            return frame["step"].to_numpy(), frame["test_acc"].to_numpy()
    epochs = pd.read_csv(run_dir / "epochs.csv")
    batch_size = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["batch_size"]
    return (epochs["samples_seen"] // batch_size).to_numpy(), epochs["test_acc"].to_numpy()


def plot_accuracy_vs_steps(run_dirs: list[Path], out_png: Path) -> Path:
    """Test accuracy vs training step, one line per run (the BN paper's Figure 1(a))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run_dir in run_dirs:
        steps, acc = accuracy_vs_steps(run_dir)
        ax.plot(steps, acc, marker="." if len(steps) < 30 else None, label=_run_label(run_dir))
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)
