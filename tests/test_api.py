"""normbench.api.load_results: the runs, epochs and steps of real runs as DataFrames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import normbench
from normbench.api import load_results
from normbench.cli import app
from normbench.errors import NormbenchError


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny real runs (batch and group norm) under one results root."""
    from typer.testing import CliRunner

    import yaml

    from conftest import tiny_config

    root = tmp_path_factory.mktemp("api")
    for norm in ("batch", "group"):
        path = root / f"{norm}.yaml"
        path.write_text(yaml.safe_dump(tiny_config(name=norm, **{"norm.type": norm})), encoding="utf-8")
        result = CliRunner().invoke(app, ["run", str(path), "--results-dir", str(root / "results")])
        assert result.exit_code == 0, result.output
    return root / "results"


def test_runs_frame_has_config_status_and_final_metrics(two_runs):
    res = load_results(two_runs)
    runs = res.runs.sort_values("norm.type").reset_index(drop=True)
    assert list(runs["norm.type"]) == ["batch", "group"]
    for column in ("run_dir", "status", "reason", "name", "seed", "batch_size", "optimizer.lr", "dataset.shape",
                   "final_test_acc", "best_test_acc", "samples_seen", "train_s", "device", "env.device", "env.normbench"):
        assert column in runs.columns, column
    assert list(runs["status"]) == ["completed", "completed"]
    assert list(runs["batch_size"]) == [16, 16] and list(runs["samples_seen"]) == [512, 512]
    assert runs["dataset.shape"][0] == "[1, 12, 12]"
    assert runs["env.normbench"][0] == normbench.__version__
    assert runs["device"][0] == "cpu" and runs["env.device"][0] == "cpu"  # the config's and the one used
    assert "norm.type" in res.config_columns and "final_test_acc" not in res.config_columns
    assert res.skipped == []


def test_epochs_and_steps_join_on_run_dir(two_runs):
    res = load_results(two_runs)
    assert res.epochs.columns[0] == "run_dir" and res.steps.columns[0] == "run_dir"
    assert len(res.epochs) == 2 * 2  # 2 runs x 2 epochs
    assert len(res.steps) == 2 * 2 * 4  # 16 steps an epoch, a row every 4
    assert pd.api.types.is_float_dtype(res.epochs["test_acc"]) and pd.api.types.is_integer_dtype(res.steps["step"])
    last = res.epochs.groupby("run_dir").tail(1).merge(res.runs, on="run_dir")
    assert (last["test_acc"] == last["final_test_acc"]).all()
    assert set(res.steps.merge(res.runs[["run_dir", "norm.type"]], on="run_dir")["norm.type"]) == {"batch", "group"}


def test_a_truncated_completed_run_is_skipped_with_the_reason(two_runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_runs, copy)
    broken = sorted((copy / "runs").iterdir())[0]
    lines = (broken / "epochs.csv").read_text().splitlines()
    (broken / "epochs.csv").write_text("\n".join(lines[:2]) + "\n")  # header and epoch 1 of 2
    res = load_results(copy)
    assert len(res.runs) == 1
    assert res.skipped == [(str(broken.resolve()), "epochs.csv truncated (ends at 256 of 512 samples)")]


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(NormbenchError, match="no runs found"):
        load_results(tmp_path)


def test_train_accuracy_in_eval_mode_on_a_fixed_subset(two_runs):
    import json

    from normbench.train.evaluate import TrainSubset

    res = load_results(two_runs)
    assert res.runs["final_train_eval_acc"].between(0, 1).all()
    for run_dir in res.runs["run_dir"]:
        assert "final_train_eval_acc" in json.loads((Path(run_dir) / "meta.json").read_text())
    a, b = TrainSubset(10_000, "cpu").index, TrainSubset(10_000, "cpu").index
    assert len(a) == 5000 and (a == b).all() and len(TrainSubset(256, "cpu").index) == 256
