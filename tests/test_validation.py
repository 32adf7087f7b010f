"""The validation split: held out of the training split, the same for every run and seed."""

from __future__ import annotations

import pytest
import torch

from conftest import rows, tiny_config, write_tiny_mnist
from normbench.cli import app
from normbench.config import validate
from normbench.data import hold_out, load_dataset, val_count, validation_split
from normbench.errors import NormbenchError
from normbench.results import read_meta


def test_the_split_is_deterministic_disjoint_and_complete():
    train, val = validation_split(100, 10)
    again_train, again_val = validation_split(100, 10)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 10 and len(train) == 90
    assert set(train.tolist()).isdisjoint(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(100))
    assert torch.equal(train, train.sort().values)  # the training part keeps the data's order
    assert not torch.equal(val, torch.arange(10))  # drawn, not the first samples


def test_held_out_samples_are_the_same_for_every_seed():
    cfgs = [validate(tiny_config(seed=s, **{"dataset.val_samples": 32}), "t") for s in (0, 1)]
    # synthetic data depends on the seed, so compare which indices were held out, on one data set
    x, y = torch.arange(256).view(256, 1, 1, 1).float(), torch.arange(256)
    (_, _), (_, val_a) = hold_out(x, y, val_count(cfgs[0].dataset, 256))
    (_, _), (_, val_b) = hold_out(x, y, val_count(cfgs[1].dataset, 256))
    assert torch.equal(val_a, val_b) and len(val_a) == 32


def test_default_sizes_and_refusals():
    real, synthetic = validate({"dataset": "mnist"}, "t").dataset, validate(tiny_config(), "t").dataset
    assert val_count(real, 60_000) == 5000 and val_count(real, 100) == 10 and val_count(synthetic, 256) == 0
    with pytest.raises(NormbenchError, match="leaves no training samples"):
        val_count(validate(tiny_config(**{"dataset.val_samples": 256}), "t").dataset, 256)


def test_a_real_dataset_holds_out_a_tenth_of_tiny_files(tmp_path, monkeypatch):
    mnist_dir = tmp_path / "d"
    write_tiny_mnist(mnist_dir / "MNIST" / "raw", n_train=50, n_test=20)
    monkeypatch.setenv("NORMBENCH_CACHE", str(tmp_path / "cache"))
    cfg = validate({"dataset": {"name": "mnist", "data_dir": str(mnist_dir)}}, "t")
    data = load_dataset(cfg.dataset)
    whole = validate({"dataset": {"name": "mnist", "data_dir": str(mnist_dir), "val_samples": 0}}, "t")
    full = load_dataset(whole.dataset)
    n = len(full.train_y)
    assert len(data.val_y) == n // 10 and len(data.train_y) == n - n // 10
    assert data.info["val_samples"] == n // 10


def test_runs_log_val_columns_and_final_val_metrics(runner, write_config, tmp_path):
    path = write_config(epochs=1, **{"dataset.val_samples": 64})
    assert runner.invoke(app, ["run", str(path), "--results-dir", str(tmp_path)]).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (row,) = rows(run_dir / "epochs.csv")
    assert 0 <= float(row["val_acc"]) <= 1 and float(row["val_loss"]) > 0
    meta = read_meta(run_dir)
    assert meta["final_val_acc"] == float(row["val_acc"]) and meta["data"]["train_samples"] == 256 - 64
    result = runner.invoke(app, ["eval", str(run_dir), "--split", "val"])
    assert result.exit_code == 0 and float(rows(run_dir / "eval.csv")[0]["acc"]) == meta["final_val_acc"]


def test_without_a_val_split_the_columns_are_empty(runner, write_config, tmp_path):
    assert runner.invoke(app, ["run", str(write_config(epochs=1)), "--results-dir", str(tmp_path)]).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (row,) = rows(run_dir / "epochs.csv")
    assert row["val_acc"] == "" and row["val_loss"] == ""
