"""Data-parallel runs on CPU with 2 processes: DDP steps against a one-process reference,
`normbench run --nproc 2` end to end, torchrun, failing and hanging ranks, config errors."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from normbench.train import distributed, lanes, launch
from normbench.train.build import build_for_config
from normbench.cli import app
from normbench.config import validate
from normbench.results import EPOCH_COLUMNS, STEP_COLUMNS, read_meta

from conftest import REPO, rows, tiny_config

STEPS, LR = 2, 0.1


def model_cfg(sync: bool):
    return validate(tiny_config(**{"norm.sync": sync, "dataset.shape": [1, 8, 8]}), "t")


def global_batches(n_steps=STEPS, batch=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64) * 2 + 1, torch.randint(0, 4, (batch,), generator=g))
            for _ in range(n_steps)]


def fresh_model(cfg):
    torch.manual_seed(0)
    return build_for_config(cfg, (1, 8, 8), 4).double()


def ddp_steps_worker(ctx):
    """SGD steps under DDP on this rank's shard of each global batch; the state after, per sync setting."""
    states = {}
    for sync in (True, False):
        model = fresh_model(model_cfg(sync))
        net = ctx.wrap(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        for x, y in global_batches():
            idx = ctx.shard(torch.arange(len(x)))
            optimizer.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            optimizer.step()
        states[sync] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return states


def replica_steps(n_replicas: int):
    """The reference without torch.distributed: one plain-BN replica per shard, gradients averaged."""
    replicas = [fresh_model(model_cfg(False)) for _ in range(n_replicas)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR) for m in replicas]
    for x, y in global_batches():
        per = len(x) // n_replicas
        grads = []
        for r, model in enumerate(replicas):
            model.zero_grad()
            F.cross_entropy(model(x[r * per : (r + 1) * per]), y[r * per : (r + 1) * per]).backward()
            grads.append([p.grad for p in model.parameters()])
        for model, opt in zip(replicas, optimizers):
            for p, *gs in zip(model.parameters(), *grads):
                p.grad = sum(gs) / n_replicas
            opt.step()
    return [m.state_dict() for m in replicas]


def assert_states_close(actual, expected):
    assert actual.keys() == expected.keys()
    for key in actual:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-9, atol=1e-11, msg=key)


def test_ddp_steps_match_one_process():
    reports = distributed.spawn(ddp_steps_worker, 2)
    assert all(r.ok for r in reports), distributed.describe_failures(reports)
    whole = replica_steps(1)[0]  # plain batch norm on the concatenated batch
    per_shard = replica_steps(2)  # plain batch norm on each shard (the GN paper's per-GPU statistics)
    for report in reports:
        # sync: true == one process on the whole batch: weights and running statistics.
        assert_states_close(report.value[True], whole)
    # sync: false == each rank normalizing with its own shard's statistics.
    assert_states_close(reports[0].value[False], per_shard[0])
    assert_states_close(reports[1].value[False], per_shard[1])
    assert not torch.allclose(reports[0].value[False]["norm1.running_mean"], whole["norm1.running_mean"])


def test_cli_nproc_2_writes_a_normal_run_directory(runner, write_config, tmp_path):
    config = write_config(**{"norm.sync": True})
    result = runner.invoke(app, ["run", str(config), "--nproc", "2", "--results-dir", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    assert "completed tiny" in result.output
    (run_dir,) = (tmp_path / "r2" / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "meta.json", "steps.csv", "epochs.csv", "model.pt"}
    meta = read_meta(run_dir)
    assert meta["status"] == "completed"
    assert (meta["world_size"], meta["backend"], meta["per_process_batch_size"]) == (2, "gloo", 8)
    with open(run_dir / "steps.csv") as f:
        assert tuple(next(csv.reader(f))) == STEP_COLUMNS
    steps, epochs = rows(run_dir / "steps.csv"), rows(run_dir / "epochs.csv")
    assert tuple(epochs[0]) == EPOCH_COLUMNS and len(epochs) == 2
    assert [int(r["samples_seen"]) for r in steps] == [64 * k for k in range(1, 9)]  # global batches of 16
    assert float(epochs[-1]["test_acc"]) > 0.4  # 4 classes: chance is 0.25

    # The same config in one process follows the same trajectory (float32: up to reduction order).
    one = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "r1")])
    assert one.exit_code == 0, one.output
    (single_dir,) = (tmp_path / "r1" / "runs").iterdir()
    assert read_meta(single_dir)["world_size"] == 1
    single = rows(single_dir / "steps.csv")
    for mine, theirs in zip(steps, single):
        assert float(mine["train_loss"]) == pytest.approx(float(theirs["train_loss"]), rel=2e-3)


def failing_rank_worker(ctx, *args):
    """Rank 1 breaks at its first evaluation; rank 0 is then waiting for it in a collective."""
    if ctx.rank == 1:
        def broken_evaluate(*a, **k):
            raise RuntimeError("rank one broke")
        lanes.evaluate = broken_evaluate
    return launch.run_rank(ctx, *args)


def test_a_failing_rank_fails_the_run_and_is_reported(tmp_path):
    cfg = validate(tiny_config(epochs=1), "t")
    outcome = launch.launch_run(cfg, 2, tmp_path, show_progress=False, worker=failing_rank_worker)
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert "rank 1: RuntimeError: rank one broke" in outcome.reason and "rank 0:" in outcome.reason
    assert "\n" not in outcome.reason
    meta = read_meta(outcome.run_dir)
    assert meta["status"] == "failed" and meta["end_time"]
    assert [e["rank"] for e in meta["rank_errors"]] == [0, 1]
    # Rank 0 ended on its own (its collective failed once rank 1 was gone), not by the launcher.
    assert "terminated" not in meta["rank_errors"][0]["error"]
    log = (outcome.run_dir / "error.log").read_text()  # rank 0's traceback, then the other ranks'
    assert "--- rank 1 ---" in log and "rank one broke" in log


def hanging_rank_worker(ctx):
    """Rank 1 never reaches the collective rank 0 waits in."""
    if ctx.rank == 1:
        time.sleep(600)
    torch.distributed.all_reduce(torch.ones(1))


def test_a_hanging_rank_times_out_and_is_terminated(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "3")
    reports = distributed.spawn(hanging_rank_worker, 2, grace_s=1)
    assert not reports[0].ok and not reports[1].ok
    assert "terminated 1 s after another rank failed" in reports[1].error
    assert distributed.describe_failures(reports).startswith("rank 0: ")


@pytest.mark.parametrize("overrides, nproc, message", [
    ({}, 3, "batch_size=16 (the global batch) is not divisible by 3 processes"),
    ({"batch_size": 2}, 2, "unsynced batch norm needs >= 2 per process"),
    ({"norm.type": "group", "norm.sync": True}, 2, "norm.sync=true applies to batch norm"),
])
def test_config_errors_before_any_process_starts(runner, write_config, tmp_path, overrides, nproc, message):
    result = runner.invoke(app, ["run", str(write_config(**overrides)), "--nproc", str(nproc), "--results-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_torchrun_runs_the_same_command(write_config, tmp_path):
    config = write_config(**{"norm.sync": True, "epochs": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "normbench", "run", str(config), "--results-dir", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("completed tiny") == 1  # only rank 0 reports
    (run_dir,) = (tmp_path / "r" / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 2
