"""`tensorboard: true`: the run's scalars, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import importlib.util

import pytest

from normbench.cli import app

from conftest import rows
from test_cli_errors import check_one_line_error


def run_dir_of(root):
    (path,) = (root / "runs").iterdir()
    return path


def test_scalars_match_the_csv_rows(runner, write_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["run", str(write_config(tensorboard=True)), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    run = run_dir_of(tmp_path / "r")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "lr", "samples_per_s", "train/acc", "train/eval_acc", "test/loss", "test/acc", "train/epoch_loss"} <= tags
    steps, epochs = rows(run / "steps.csv"), rows(run / "epochs.csv")
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in steps] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert [e.value for e in loss] == pytest.approx([float(r["train_loss"]) for r in steps], rel=1e-6)
    test_acc = events.Scalars("test/acc")
    assert [e.step for e in test_acc] == [16, 32]  # global step at each epoch's end
    assert [e.value for e in test_acc] == pytest.approx([float(r["test_acc"]) for r in epochs], rel=1e-6)
    assert "val/acc" not in tags  # synthetic data has no validation split: empty cells are not logged


def test_off_by_default(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(epochs=1)), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert not (run_dir_of(tmp_path / "r") / "tensorboard").exists()


def test_missing_package_is_a_config_error_before_training(runner, write_config, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    result = runner.invoke(app, ["run", str(write_config(tensorboard=True)), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "tensorboard: true needs the tensorboard package", "pip install 'normbench[tensorboard]'")
    assert not (tmp_path / "r").exists()
