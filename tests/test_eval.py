"""`normbench eval`: a run's saved model evaluated again."""

from __future__ import annotations

import pytest

from conftest import rows
from normbench.cli import app
from normbench.results import read_meta


@pytest.fixture
def trained(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(epochs=1)), "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_eval_reproduces_the_runs_test_accuracy_and_appends_eval_csv(runner, trained):
    result = runner.invoke(app, ["eval", str(trained)])
    assert result.exit_code == 0, result.output
    (row,) = rows(trained / "eval.csv")
    meta = read_meta(trained)
    assert float(row["acc"]) == meta["final_test_acc"] and float(row["loss"]) == meta["final_test_loss"]
    assert f"acc {meta['final_test_acc']:.4f}" in result.output


def test_eval_with_batch_statistics_at_several_batch_sizes(runner, trained):
    for size in (2, 8, 64):
        result = runner.invoke(app, ["eval", str(trained), "--batch-stats", "--batch-size", str(size)])
        assert result.exit_code == 0, result.output
    table = rows(trained / "eval.csv")
    assert [(r["statistics"], r["batch_size"], r["samples"]) for r in table] == [
        ("batch", "2", "64"), ("batch", "8", "64"), ("batch", "64", "64")]
    accs = [float(r["acc"]) for r in table]
    assert all(0 <= a <= 1 for a in accs) and len(set(accs)) > 1  # batch size changes what the model sees


def test_eval_after_precise_bn_and_on_the_training_split(runner, trained):
    assert runner.invoke(app, ["eval", str(trained), "--precise-bn", "4"]).exit_code == 0
    assert runner.invoke(app, ["eval", str(trained), "--split", "train"]).exit_code == 0
    table = rows(trained / "eval.csv")
    assert [r["statistics"] for r in table] == ["precise_bn 4", "running"] and table[1]["samples"] == "256"


def test_eval_errors_are_one_line(runner, trained, tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "has no model.pt" in result.output
    result = runner.invoke(app, ["eval", str(trained), "--split", "dev"])
    assert result.exit_code == 2 and "choose one of test, val, train" in result.output
    result = runner.invoke(app, ["eval", str(trained), "--split", "val"])
    assert result.exit_code == 2 and "has no validation split" in result.output
    assert "Traceback" not in result.output


@pytest.mark.gpu
def test_eval_of_a_captured_cuda_run_reproduces_its_test_accuracy(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(epochs=1, device="cuda")), "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_meta(run_dir)["cuda_graph"]["used"]
    assert runner.invoke(app, ["eval", str(run_dir)]).exit_code == 0
    assert float(rows(run_dir / "eval.csv")[0]["acc"]) == read_meta(run_dir)["final_test_acc"]
