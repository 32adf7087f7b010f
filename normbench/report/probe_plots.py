"""Plots of the activation probe (train/probe.py records probe.csv), in the report's one style:
input percentiles vs step (the BN paper's Figure 1(b, c)) and test accuracy vs step (Figure 1(a))."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from normbench.errors import NormbenchError
from normbench.report.style import finish_axes, new_figure, save
from normbench.train.probe import PROBE_FILE


def run_label(run_dir: Path) -> str:
    """`name (norm type)` from the run's config.yaml, else the folder's name."""
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        return f"{cfg['name']} (norm {cfg['norm']['type']})"
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return Path(run_dir).name


def read_probe(run_dir: Path) -> pd.DataFrame:
    """A run's probe.csv; missing or empty is a one-line error saying what to do."""
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        raise NormbenchError(f"{path} not found; add `probe: {{layer: act1, every: 50}}` to the run's config")
    frame = pd.read_csv(path)
    if frame.empty:
        raise NormbenchError(f"{path} has no rows; the run stopped before its first probe step")
    return frame


def plot_probe(run_dir: Path | list[Path], out_png: Path) -> Path:
    """Plot the probed percentiles (median line, 15-85 % band) vs step, one panel per run dir."""
    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    frames = [read_probe(d) for d in run_dirs]
    fig, axes = new_figure(len(frames), size=(5, 3.6), sharey=True)
    for ax, run, frame in zip(axes, run_dirs, frames):
        ax.fill_between(frame["step"], frame["p15"], frame["p85"], alpha=0.3, label="15-85th percentile")
        ax.plot(frame["step"], frame["p50"], label="median")
        unit = frame["unit"].iloc[0]
        title = f"{run_label(run)}\ninput to {frame['layer'].iloc[0]}, unit {unit}"
        finish_axes(ax, title, "training step", "layer input" if ax is axes[0] else None, legend=ax is axes[0])
    return save(fig, out_png)


def accuracy_vs_steps(run_dir: Path):
    """(steps, test accuracies) of a run: probe.csv's test_acc if recorded, else epochs.csv."""
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
    fig, (ax,) = new_figure(size=(5.5, 3.6))
    for run_dir in run_dirs:
        steps, acc = accuracy_vs_steps(run_dir)
        ax.plot(steps, acc, marker="." if len(steps) < 30 else None, label=run_label(run_dir))
    finish_axes(ax, xlabel="training step", ylabel="test accuracy")
    return save(fig, out_png)
