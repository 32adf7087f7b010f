"""`normbench export mlflow`: runs read with normbench.api.load_results into an MLflow tracking store.

Each normbench run becomes one MLflow run in experiment `experiment`: params = the resolved config
(dotted keys), metrics = steps.csv and epochs.csv columns at their global step, tags = status and
run directory, artifacts = config.yaml, meta.json and error.log. The files of a report folder
(`<PATH>/report/`, what `normbench report` writes) go into one more MLflow run named `report`.
Runs are matched by the tag `normbench.run_dir`, so exporting again adds only new runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from normbench import results
from normbench.api import Results, load_results
from normbench.errors import NormbenchError

RUN_DIR_TAG, REPORT_TAG = "normbench.run_dir", "normbench.report"
STEP_METRICS = ("train_loss", "lr", "samples_per_s")
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}
REPORT_FILES = ("*.png", "*.md", "*.csv")
BATCH = 500  # entities per log_batch call (MLflow allows 1000 in all, 100 params)


def client_for(tracking_uri: str):
    """An MlflowClient on `tracking_uri` (a folder is a local file store); a NormbenchError naming the
    extra when mlflow is missing."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise NormbenchError("normbench export mlflow needs MLflow; pip install 'normbench[mlflow]'") from None
    if "://" not in tracking_uri:
        # MLflow 3 keeps its file store for reading and writing but asks for this opt-in (docs/mlflow.md)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking_uri = Path(tracking_uri).resolve().as_uri()
    return MlflowClient(tracking_uri=tracking_uri)


def exported(client, experiment_id: str, tag: str) -> set[str]:
    """The values of tag `tag` on the experiment's runs: what an earlier export wrote."""
    found, token = set(), None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found.update(run.data.tags[tag] for run in page if tag in run.data.tags)
        token = page.token
        if not token:
            return found


def metrics_of(run_dir: str, res: Results) -> list:
    """Every steps.csv and epochs.csv value of one run as MLflow metrics at the global step."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    steps = res.steps[res.steps["run_dir"] == run_dir] if len(res.steps) else pd.DataFrame()
    epochs = res.epochs[res.epochs["run_dir"] == run_dir] if len(res.epochs) else pd.DataFrame()
    out = [Metric(column, float(row[column]), now, int(row["step"]))
           for _, row in steps.iterrows() for column in STEP_METRICS if column in row and pd.notna(row[column])]
    epoch_end = steps.groupby("epoch")["step"].max().to_dict() if len(steps) else {}  # epoch -> its last step
    for _, row in epochs.iterrows():
        step = int(epoch_end.get(row["epoch"], row["epoch"]))
        out += [Metric(f"epoch/{column}", float(row[column]), now, step) for column in epochs.columns
                if column not in ("run_dir", "epoch") and pd.notna(row[column])]
    return out


def export_run(client, experiment_id: str, run: dict, res: Results) -> None:
    """One normbench run as one MLflow run: params, metrics, tags, files."""
    from mlflow.entities import Param, RunTag

    path = Path(run["run_dir"])
    tags = {RUN_DIR_TAG: run["run_dir"], "normbench.status": run["status"], "mlflow.runName": path.name}
    created = client.create_run(experiment_id, run_name=path.name, tags=tags)
    run_id = created.info.run_id
    params = [Param(key, str(run[key])[:6000]) for key in res.config_columns if key in run]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    if run["reason"]:
        client.log_batch(run_id, tags=[RunTag("normbench.reason", str(run["reason"])[:5000])])
    metrics = metrics_of(run["run_dir"], res)
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    for name in (results.CONFIG_FILE, results.META_FILE, results.ERROR_FILE):
        if (path / name).is_file():
            client.log_artifact(run_id, str(path / name))
    client.set_terminated(run_id, STATUS.get(run["status"], "RUNNING" if run["status"] == "running" else "KILLED"))


def export_report(client, experiment_id: str, folder: Path) -> bool:
    """The report's figures, report.md and summary.csv as one MLflow run; False when it has no files."""
    files = sorted(f for pattern in REPORT_FILES for f in folder.glob(pattern))
    if not files:
        return False
    created = client.create_run(experiment_id, run_name="report", tags={REPORT_TAG: str(folder.resolve())})
    for file in files:
        client.log_artifact(created.info.run_id, str(file))
    client.set_terminated(created.info.run_id, "FINISHED")
    return True


def export_mlflow(paths: list[Path], tracking_uri: str, experiment: str = "normbench") -> dict:
    """Export every run under `paths` (and `<PATH>/report/`); counts of what was written and skipped."""
    res = load_results(*paths)
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    done = exported(client, experiment_id, RUN_DIR_TAG)
    counts = {"exported": 0, "already": 0, "reports": 0, "skipped": len(res.skipped)}
    for run in res.runs.to_dict("records"):
        if run["run_dir"] in done:
            counts["already"] += 1
            continue
        export_run(client, experiment_id, run, res)
        counts["exported"] += 1
    reports = exported(client, experiment_id, REPORT_TAG)
    for folder in (Path(p) / "report" for p in paths):
        if folder.is_dir() and str(folder.resolve()) not in reports:
            counts["reports"] += export_report(client, experiment_id, folder)
    return counts
