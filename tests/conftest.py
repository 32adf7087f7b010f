"""Shared fixtures: tiny configs that run in seconds on CPU, and tiny datasets in real formats."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
TIMING = {"samples_per_s", "epoch_s", "eval_s", "elapsed_s"}  # CSV columns that vary run to run


def rows(path: Path) -> list[dict]:
    """A results CSV as a list of dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly (with a reason) where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def tiny_config(**overrides) -> dict:
    """A config that trains in about a second on CPU: synthetic 1x12x12 data, 2 epochs."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "synthetic", "shape": [1, 12, 12], "num_classes": 4, "train_samples": 256, "test_samples": 64},
        "model": "cnn",
        "norm": {"type": "batch"},
        "batch_size": 16,
        "epochs": 2,
        "log_every": 4,
        "eval_batch_size": 64,
        "num_threads": 1,
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


@pytest.fixture
def write_config(tmp_path):
    """write_config(**overrides) -> path of a tiny YAML config in tmp_path."""

    def write(name: str = "tiny.yaml", **overrides) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_config(**overrides)), encoding="utf-8")
        return path

    return write


def _idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format (big-endian magic 0x08, ndim, then sizes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_tiny_mnist(folder: Path, n_train: int = 64, n_test: int = 32, compress: bool = False, seed: int = 0) -> Path:
    """Write the four MNIST idx files (optionally .gz) with a learnable pattern: label = brightest quadrant."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 4, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 2)
            images[i, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] += 150
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx(array)
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def write_tiny_cifar(root: Path, n_train: int = 40, n_test: int = 20, hundred: bool = False, seed: int = 0) -> Path:
    """Write CIFAR-10 (or -100) python-pickle batches in torchvision's layout under `root`."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10

    def batch(n):
        labels = rng.integers(0, classes, n).tolist()
        data = rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8)  # (N, 3072): R, G, B planes
        key = "fine_labels" if hundred else "labels"
        return {"data": data, key: labels, "batch_label": "tiny"}

    if hundred:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        files = {"train": batch(n_train), "test": batch(n_test),
                 "meta": {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}}
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        per = n_train // 5
        files = {f"data_batch_{i}": batch(per) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
    for name, content in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)
    return folder
