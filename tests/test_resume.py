"""Runs that survive: a run killed (SIGKILL) or stopped (SIGTERM) mid-training and resumed from
its checkpoint writes the same steps.csv and epochs.csv as a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TIMING, rows, tiny_config
from normbench.cli import app
from normbench.config import validate
from normbench.data import load_dataset
from normbench.results import NullRunDir, read_meta
from normbench.train.checkpoint import Checkpointer, load
from normbench.train.lanes import Lane, SingleModel

SLOW_TINY = {"dataset.train_samples": 2048, "epochs": 3, "log_every": 8}  # about a second an epoch


def start(config: Path, results: Path, *extra: str) -> subprocess.Popen:
    """`normbench run` in its own process group (so its worker processes can be killed with it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "normbench", "run", str(config), "--results-dir", str(results), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_checkpoint(results: Path, proc: subprocess.Popen, timeout: float = 240) -> list[Path]:
    """Run directories once every one records a checkpoint (epoch 1 done), polling meta.json."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = sorted((results / "runs").glob("*")) if (results / "runs").exists() else []
        metas = [read_meta(r) or {} for r in runs]
        if runs and all("checkpoint" in m for m in metas):
            return runs
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll steps.csv until it has a row past `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(int(r["step"]) > step for r in rows(run_dir / "steps.csv")):
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    raise AssertionError(f"no step past {step}")


def same_rows(a: Path, b: Path, name: str) -> None:
    left, right = rows(a / name), rows(b / name)
    assert len(left) == len(right), name
    for x, y in zip(left, right):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}, name


def killed_and_resumed(runner, write_config, tmp_path, extra: list[str], sig=signal.SIGKILL) -> tuple[list, list]:
    config = write_config(**SLOW_TINY)
    whole = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "whole"), *extra])
    assert whole.exit_code == 0, whole.output
    proc = start(config, tmp_path / "cut", *extra)
    runs = wait_for_checkpoint(tmp_path / "cut", proc)
    if sig == signal.SIGTERM:  # into epoch 2, so that the stop lands mid-epoch
        wait_for_step(runs[0], 128, proc)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert all(read_meta(r)["status"] == "running" for r in runs)  # killed: nothing recorded the ending
    resumed = runner.invoke(app, ["run", "--resume", str(runs[-1]), *extra])
    assert resumed.exit_code == 0, resumed.output
    return sorted((tmp_path / "whole" / "runs").iterdir()), runs


def test_a_killed_run_resumes_to_the_uninterrupted_result(runner, write_config, tmp_path):
    (whole,), (cut,) = killed_and_resumed(runner, write_config, tmp_path, [])
    same_rows(whole, cut, "steps.csv")
    same_rows(whole, cut, "epochs.csv")
    meta = read_meta(cut)
    assert meta["status"] == "completed" and meta["resumes"][0]["from_step"] == 128  # the end of epoch 1
    assert (cut / "model.pt").exists() and not (cut / "checkpoint.pt").exists()
    assert meta["final_test_acc"] == read_meta(whole)["final_test_acc"]


def test_a_stopped_run_checkpoints_mid_epoch_and_resumes_exactly(runner, write_config, tmp_path):
    (whole,), (cut,) = killed_and_resumed(runner, write_config, tmp_path, [], sig=signal.SIGTERM)
    same_rows(whole, cut, "steps.csv")
    same_rows(whole, cut, "epochs.csv")
    resumes = read_meta(cut)["resumes"]
    assert resumes[0]["after_status"] == "interrupted" and resumes[0]["from_step"] > 128  # mid-epoch 2


def test_a_killed_packed_run_resumes_every_seed(runner, write_config, tmp_path):
    wholes, cuts = killed_and_resumed(runner, write_config, tmp_path, ["--set", "pack=2"])
    assert len(wholes) == len(cuts) == 2
    for whole, cut in zip(wholes, cuts):
        same_rows(whole, cut, "steps.csv")
        same_rows(whole, cut, "epochs.csv")
        assert read_meta(cut)["status"] == "completed" and (cut / "model.pt").exists()


def test_a_killed_data_parallel_run_resumes_over_the_same_processes(runner, write_config, tmp_path):
    wholes, cuts = killed_and_resumed(runner, write_config, tmp_path, ["--nproc", "2"])
    same_rows(wholes[0], cuts[0], "steps.csv")
    same_rows(wholes[0], cuts[0], "epochs.csv")


def test_what_cannot_be_resumed_is_refused_with_a_reason(runner, write_config, tmp_path):
    config = write_config(epochs=1)
    runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path)])
    (done,) = (tmp_path / "runs").iterdir()
    result = runner.invoke(app, ["run", "--resume", str(done)])
    assert result.exit_code == 2 and "completed; only failed, interrupted or killed runs are resumed" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "is not a run directory" in result.output
    assert "Traceback" not in result.output


def test_a_differing_config_is_refused(runner, write_config, tmp_path):
    config = write_config(**SLOW_TINY)
    proc = start(config, tmp_path / "cut")
    (run_dir,) = wait_for_checkpoint(tmp_path / "cut", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    result = runner.invoke(app, ["run", str(config), "--set", "batch_size=8", "--resume", str(run_dir)])
    assert result.exit_code == 2
    assert "trained with another config: batch_size (16 in the run, 8 given)" in result.output


def test_checkpoint_every_0_leaves_nothing_to_resume(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(checkpoint_every=0)), "--results-dir", str(tmp_path)])
    assert result.exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "checkpoint" not in read_meta(run_dir) and not (run_dir / "checkpoint.pt").exists()


def test_a_checkpoint_of_the_seed_cnn_with_adam_is_under_10_mb(tmp_path):
    cfg = validate(tiny_config(**{"dataset.shape": [1, 28, 28], "dataset.num_classes": 10}), "t")
    data = load_dataset(cfg.dataset, seed=0)
    trainer = SingleModel(Lane(cfg, data, NullRunDir(tmp_path)), torch.device("cpu"))
    perms = [torch.randperm(len(data.train_y))]
    trainer.step(*trainer.batch(perms, 0))  # Adam's state exists after a step
    trainer.lanes[0].run_dir.path = tmp_path
    checkpointer = Checkpointer(trainer, every=1)
    checkpointer.save({"epoch": 1, "in_epoch": 1, "steps_done": 1})
    size = (tmp_path / "checkpoint.pt").stat().st_size
    assert 3e6 < size < 10e6  # 422k parameters, Adam's two moments: about 5 MB
    assert load(tmp_path / "checkpoint.pt")["position"]["steps_done"] == 1


def test_a_killed_sweep_continues_its_point_from_the_checkpoint(runner, write_config, tmp_path):
    config = write_config(**SLOW_TINY)
    args = ["sweep", str(config), "--norms", "batch", "--batch-sizes", "16", "--jobs", "1",
            "--results-dir", str(tmp_path), "--name", "s"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "normbench", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    point = tmp_path / "sweeps" / "s" / "runs" / "norm=batch_bs=16_seed=0"
    deadline = time.monotonic() + 240
    while "checkpoint" not in (read_meta(point) or {}) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_meta(point)
    assert meta["status"] == "completed" and meta["resumes"][0]["from_step"] == 128  # not from step 0
    assert len(rows(point / "epochs.csv")) == 3
