"""Issue 11's red-team faults, each as the hostile or unlucky user met it: tampered and replaced
dataset files, colliding grid values, a full disk, a stopped launcher, malformed files, racing
runs, tiny inputs with huge echoes, and the small ones."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from normbench import results
from normbench.cli import app
from normbench.config import validate
from normbench.data import load_dataset
from normbench.errors import NormbenchError

from conftest import REPO, rows, tiny_config, write_tiny_cifar, write_tiny_mnist
from test_cli_errors import check_one_line_error


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NORMBENCH_DATA", raising=False)


def dataset(name: str, data_dir: Path):
    return validate({"dataset": {"name": name, "data_dir": str(data_dir)}}, "t").dataset


# --- 1. a tampered CIFAR pickle ---------------------------------------------------------------


class RunsCommand:
    """What a hostile data_batch_1 holds: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_tampered_cifar_batch_is_refused_and_never_runs_code(tmp_path):
    folder = write_tiny_cifar(tmp_path / "d")
    marker = tmp_path / "pwned"
    payload = {"data": RunsCommand(f"touch {marker}"), "labels": [], "batch_label": "x"}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(NormbenchError) as info:
        load_dataset(dataset("cifar10", tmp_path / "d"))
    assert not marker.exists()
    message = info.value.message
    assert "data_batch_1 was refused" in message and "system" in message and "\n" not in message


def test_cifar_batches_pickled_the_old_way_still_load(tmp_path):
    folder = write_tiny_cifar(tmp_path / "d", n_train=10, n_test=5)
    for name in ("data_batch_1", "test_batch"):  # protocol 2, as the official release (Python 2)
        entry = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    assert load_dataset(dataset("cifar10", tmp_path / "d")).train_x.shape == (10, 3, 32, 32)


# --- 2. the idx unpack cache notices changed files --------------------------------------------


def test_replaced_labels_are_read_again(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d", n_train=16, n_test=8, compress=True)
    assert load_dataset(dataset("mnist", tmp_path / "d")).train_y.sum() > 0
    labels = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:8] + bytes(16)))  # same size, every label 0
    assert load_dataset(dataset("mnist", tmp_path / "d")).train_y.tolist() == [0] * 16


def test_a_corrupt_file_replaced_as_told_loads(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d", n_train=16, n_test=8, compress=True)
    images = folder / "train-images-idx3-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(gzip.compress(gzip.decompress(good)[:500]))  # unpacks fine, but truncated
    with pytest.raises(NormbenchError, match="train-images-idx3-ubyte is truncated"):
        load_dataset(dataset("mnist", tmp_path / "d"))
    images.write_bytes(good)
    assert len(load_dataset(dataset("mnist", tmp_path / "d")).train_y) == 16


# --- 6. one line, not a traceback: a wrong-magic idx file --------------------------------------


def test_a_wrong_magic_idx_file_is_named(runner, write_config, tmp_path):
    folder = write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=8, n_test=4)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x09\x01" + labels.read_bytes()[4:])
    config = write_config(**{"dataset": {"name": "mnist"}})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")])
    text = check_one_line_error(result, 1, "train-labels-idx1-ubyte is not an idx file", "magic number is 00000901")
    assert "AssertionError" not in text


# --- 9. a mistyped --data-dir ------------------------------------------------------------------


def test_a_mistyped_data_dir_is_an_error_and_nothing_is_created(runner, write_config, tmp_path):
    config = write_config(**{"dataset": {"name": "mnist"}})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "dta"), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, f"data folder '{tmp_path / 'dta'}'", "does not exist")
    assert not (tmp_path / "dta").exists() and not (tmp_path / "r" / "runs").exists()


def test_a_failed_download_leaves_nothing_in_the_data_folder(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):  # what torchvision does without a network: folders first, then the error
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    (tmp_path / "data").mkdir()
    with pytest.raises(NormbenchError, match="torchvision download into"):
        load_dataset(dataset("mnist", tmp_path / "data"))
    assert list((tmp_path / "data").iterdir()) == []
