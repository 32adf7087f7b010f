"""`normbench export mlflow`: runs and a report written into a local MLflow store, read back with MlflowClient."""

from __future__ import annotations

import pytest

from normbench.cli import app

from conftest import rows
from test_cli_errors import check_one_line_error

mlflow = pytest.importorskip("mlflow")  # in the dev extra: runs in CI


@pytest.fixture
def exported(runner, write_config, tmp_path, monkeypatch):
    """A tiny run and its report under tmp_path/r, exported into tmp_path/store; (client, run dir, CLI output)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    root = tmp_path / "r"
    assert runner.invoke(app, ["run", str(write_config()), "--results-dir", str(root)]).exit_code == 0
    assert runner.invoke(app, ["report", str(root)]).exit_code == 0
    result = runner.invoke(app, ["export", "mlflow", str(root), "--tracking-uri", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    (run_dir,) = (root / "runs").iterdir()
    return client, run_dir, result.output


def runs_of(client):
    experiment = client.get_experiment_by_name("normbench")
    return client.search_runs([experiment.experiment_id])


def test_params_metrics_and_artifacts_read_back(exported):
    client, run_dir, output = exported
    assert "exported 1 run(s) and 1 report(s)" in output
    (run,) = [r for r in runs_of(client) if r.data.tags.get("normbench.run_dir") == str(run_dir.resolve())]
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["norm.type"] == "batch" and run.data.params["batch_size"] == "16"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    steps = rows(run_dir / "steps.csv")
    assert [m.step for m in history] == [int(r["step"]) for r in steps]
    assert [m.value for m in history] == pytest.approx([float(r["train_loss"]) for r in steps])
    test_acc = client.get_metric_history(run.info.run_id, "epoch/test_acc")
    assert [m.step for m in test_acc] == [16, 32]  # the global step at each epoch's end
    assert [m.value for m in test_acc] == pytest.approx([float(r["test_acc"]) for r in rows(run_dir / "epochs.csv")])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "meta.json"}
    (report,) = [r for r in runs_of(client) if r.info.run_name == "report"]
    files = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"report.md", "summary.csv"} <= files and any(f.endswith(".png") for f in files)


def test_a_second_export_adds_nothing(exported, runner, tmp_path):
    client, run_dir, _ = exported
    again = runner.invoke(app, ["export", "mlflow", str(tmp_path / "r"), "--tracking-uri", str(tmp_path / "store")])
    assert again.exit_code == 0, again.output
    assert "exported 0 run(s) and 0 report(s)" in again.output and "1 already there" in again.output
    assert len(runs_of(client)) == 2  # the run and the report, once each


def test_without_mlflow_the_error_names_the_extra(runner, tmp_path, write_config, monkeypatch):
    import sys

    root = tmp_path / "r"
    assert runner.invoke(app, ["run", str(write_config(epochs=1)), "--results-dir", str(root)]).exit_code == 0
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    result = runner.invoke(app, ["export", "mlflow", str(root), "--tracking-uri", str(tmp_path / "store")])
    check_one_line_error(result, 1, "pip install 'normbench[mlflow]'")
