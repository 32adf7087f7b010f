"""The one training engine: every kind of run writes the same meta.json keys; the CUDA-graph
step's decisions (CPU-testable) and its exactness against the eager step (on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from conftest import rows, tiny_config
from normbench.cli import app
from normbench.config import validate
from normbench.data import load_dataset
from normbench.results import NullRunDir, read_meta
from normbench.train.build import build_for_config
from normbench.train.graph import GraphStep, graph_reason
from normbench.train.lanes import Lane, PackedSeeds, SingleModel
from normbench.train.runner import run as run_config
from normbench.train.runner import run_packed, seed_configs

PACK_AND_WORLD_KEYS = {"pack", "backend", "per_process_batch_size"}
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode, before CUDA starts


@pytest.fixture
def deterministic():
    """Deterministic cuDNN/cuBLAS kernels for the duration of a test. cuDNN's channels_last
    kernels are not run-to-run deterministic: two eager runs of the same seed were measured to
    differ from step 8 on an H200; with deterministic kernels an eager and a captured run agree
    bitwise."""
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = benchmark


def test_plain_packed_and_data_parallel_runs_write_the_same_meta_keys(runner, write_config, tmp_path):
    path = write_config(epochs=1)
    for name, extra in (("plain", []), ("packed", ["--set", "pack=2"]), ("ranks", ["--nproc", "2"])):
        result = runner.invoke(app, ["run", str(path), "--results-dir", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    keys = {name: [set(read_meta(d)) for d in sorted((tmp_path / name / "runs").iterdir())]
            for name in ("plain", "packed", "ranks")}
    assert len(keys["packed"]) == 2 and len(keys["ranks"]) == 1
    plain = keys["plain"][0]
    assert "norm_momentum_torch" in plain and "cuda_graph" in plain and "world_size" in plain
    for name in ("packed", "ranks"):
        for found in keys[name]:
            assert found - PACK_AND_WORLD_KEYS == plain, name
    assert "pack" in keys["packed"][0] and "backend" in keys["ranks"][0]


def meta_model(**overrides) -> tuple:
    cfg = validate(tiny_config(**overrides), "t")
    with torch.device("meta"):
        return cfg, build_for_config(cfg, (1, 12, 12), 4)


@pytest.mark.parametrize("overrides, data_parallel, device, reason", [
    ({}, False, "cpu", "CUDA graphs need device cuda, this run trains on cpu"),
    ({"probe": {"layer": "act1"}}, False, "cuda", "the probe's hook reads activations"),
    ({}, True, "cuda", "a data-parallel rank all-reduces gradients"),
    ({"precision": "fp16"}, False, "cuda", "fp16's loss scaler"),
    ({"norm.momentum": None}, False, "cuda", "layer norm1: PyTorch's BatchNorm2d with momentum null"),
    ({"norm.momentum": None, "norm.impl": "reference"}, False, "cuda", ""),
    ({"norm.type": "batch_renorm"}, False, "cuda", ""),
    ({"norm.type": "group", "optimizer": {"name": "sgd"}, "schedule": "cosine"}, False, "cuda", ""),
])
def test_graph_reason_names_what_stands_in_the_way(overrides, data_parallel, device, reason):
    cfg, model = meta_model(**overrides)
    found = graph_reason(cfg, model, torch.device(device), data_parallel)
    assert found.startswith(reason) and bool(found) == bool(reason)


def test_a_cpu_run_records_why_it_was_not_captured(tmp_path):
    outcome = run_config(validate(tiny_config(epochs=1), "t"), tmp_path)
    assert read_meta(outcome.run_dir)["cuda_graph"] == {
        "used": False, "reason": "CUDA graphs need device cuda, this run trains on cpu"}


def test_cuda_graph_true_where_it_cannot_be_captured_is_a_config_error(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(cuda_graph=True)), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "cuda_graph: true, but this run cannot be captured: CUDA graphs need device cuda" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r" / "runs").exists()


def test_cuda_graph_accepts_only_auto_true_false():
    with pytest.raises(Exception, match="cuda_graph"):
        validate(tiny_config(cuda_graph="yes"), "t")


def lane_losses(trainer, steps: int) -> list[list[float]]:
    """Per-step, per-lane training losses of `steps` steps through the trainer's step."""
    perms = [torch.randperm(len(trainer.lanes[0].data.train_y), generator=g).to(trainer.device) for g in trainer.orders]
    losses, before = [], trainer.step.loss_sum.clone()
    per_epoch = len(perms[0]) // trainer.cfg.batch_size
    for i in range(steps):
        trainer.step(*trainer.batch(perms, i % per_epoch))
        now = trainer.step.loss_sum.clone()
        losses.append((now - before).tolist())
        before = now
    return losses


def buffers(model: nn.Module) -> dict:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@pytest.mark.gpu
@pytest.mark.parametrize("norm, packed", [(norm, False) for norm in ("batch", "group", "layer", "none", "batch_renorm")]
                         + [(norm, True) for norm in ("batch", "group", "layer", "none")])  # batch_renorm does not pack
def test_captured_step_trains_like_the_eager_step(tmp_path, deterministic, norm, packed):
    results = {}
    for capture in (False, True):
        cfg = validate(tiny_config(**{"device": "cuda", "norm.type": norm, "cuda_graph": capture,
                                      "dataset.train_samples": 512, "pack": 2 if packed else 1}), "t")
        data = load_dataset(cfg.dataset, seed=0, device="cuda")
        if packed:
            lanes = [Lane(c, data, NullRunDir(tmp_path)) for c in seed_configs(cfg)]
            trainer = PackedSeeds(lanes, torch.device("cuda"))
        else:
            trainer = SingleModel(Lane(cfg, data, NullRunDir(tmp_path)), torch.device("cuda"))
        assert isinstance(trainer.step, GraphStep) == capture
        results[capture] = (lane_losses(trainer, 200), buffers(trainer.model))
    (eager, eager_buffers), (graphed, graphed_buffers) = results[False], results[True]
    for step, (a, b) in enumerate(zip(eager, graphed)):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-7), f"step {step + 1}"
    for name, value in eager_buffers.items():
        torch.testing.assert_close(graphed_buffers[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.gpu
def test_a_cuda_run_is_captured_by_default_and_says_so(tmp_path):
    outcome = run_config(validate(tiny_config(device="cuda"), "t"), tmp_path)
    assert outcome.status == "completed"
    assert read_meta(outcome.run_dir)["cuda_graph"] == {"used": True, "reason": ""}


@pytest.mark.gpu
def test_a_captured_run_with_a_schedule_follows_the_eager_learning_rates(tmp_path):
    lrs = {}
    for capture in (False, True):
        cfg = validate(tiny_config(device="cuda", schedule="cosine", cuda_graph=capture, log_every=1), "t")
        outcome = run_config(cfg, tmp_path / str(capture))
        lrs[capture] = [float(r["lr"]) for r in rows(outcome.run_dir / "steps.csv")]
    assert lrs[True] == pytest.approx(lrs[False], rel=1e-6)


@pytest.mark.gpu
def test_packed_cuda_run_is_captured(tmp_path):
    outcomes = run_packed(validate(tiny_config(device="cuda", pack=2), "t"), tmp_path)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    assert all(read_meta(o.run_dir)["cuda_graph"]["used"] for o in outcomes)
