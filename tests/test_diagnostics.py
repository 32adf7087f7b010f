"""BN diagnostics (batch-statistics and PreciseBN evaluation), the activation probe and its plots,
and the momentum convention: through the CLI and against direct computations."""

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn

from normbench.cli import app
from normbench.config import validate
from normbench.norms.diagnostics import DIAGNOSTIC_COLUMNS, batch_norm_modules, evaluate_batch_stats, precise_bn_statistics
from normbench.norms import make_norm
from normbench.report.probe_plots import plot_accuracy_vs_steps, plot_probe
from normbench.train.probe import PROBE_COLUMNS, Probe
from normbench.results import read_meta

from conftest import rows, tiny_config


def run_cli(runner, path, results):
    result = runner.invoke(app, ["run", str(path), "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    return next((results / "runs").iterdir())


def small_bn_model(impl):
    torch.manual_seed(0)
    return nn.Sequential(
        make_norm("batch", 3, dims=1, impl=impl), nn.Linear(3, 4), make_norm("batch", 4, dims=1, impl=impl), nn.ReLU(), nn.Linear(4, 2)
    )


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_batch_statistics_evaluation_matches_train_mode_and_changes_no_state(impl):
    model = small_bn_model(impl)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3) * 2 + 1)  # non-trivial running statistics
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    loss, acc = evaluate_batch_stats(model, x, y, batch_size=16, autocast_ctx=contextlib.nullcontext)  # 2 full batches
    # the same thing by hand: a throw-away copy in train mode, batch by batch
    scratch = copy.deepcopy(model).train()
    with torch.no_grad():
        logits = torch.cat([scratch(x[:16]), scratch(x[16:32])])
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y[:32]).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y[:32]).float().mean().item())
    for key, value in model.state_dict().items():  # running stats and num_batches_tracked unchanged
        assert torch.equal(value, before[key]), key
    assert not model.training and all(m.track_running_stats for m in batch_norm_modules(model))


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_precise_bn_averages_training_batches_and_leaves_the_model_alone(impl):
    model = small_bn_model(impl)
    model.train()
    model(torch.randn(8, 3))
    before = copy.deepcopy(model.state_dict())
    train_x = torch.randn(500, 3) * 3 + 2
    with precise_bn_statistics(model, train_x, batches=5, batch_size=20, seed=7, autocast_ctx=contextlib.nullcontext):
        # the first layer sees the data itself: its statistics are the plain average of the 5 batches'
        generator = torch.Generator().manual_seed(7)
        batches = [train_x[torch.randint(500, (20,), generator=generator)].double() for _ in range(5)]
        mean = torch.stack([b.mean(0) for b in batches]).mean(0)
        var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
        torch.testing.assert_close(model[0].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model[0].running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert int(model[0].num_batches_tracked) == 5 and not model.training
    for key, value in model.state_dict().items():  # weights, running statistics, counts: all restored
        assert torch.equal(value, before[key]), key
    assert model.training and model[0].momentum == 0.1


def test_bn_run_records_batch_stats_precise_bn_and_the_probe(runner, write_config, tmp_path):
    path = write_config(**{"precise_bn": {"batches": 4}, "probe": {"layer": "act1", "every": 8, "test_acc": True}})
    run_dir = run_cli(runner, path, tmp_path / "results")
    epochs = rows(run_dir / "epochs.csv")
    for row in epochs:
        for column in DIAGNOSTIC_COLUMNS:
            assert 0 <= float(row[column]) < 10, (column, row[column])
    probe = rows(run_dir / "probe.csv")
    assert list(probe[0]) == list(PROBE_COLUMNS)
    steps = [int(r["step"]) for r in probe]
    assert steps == [1, 8, 16, 24, 32]  # 256 / 16 = 16 steps per epoch, 2 epochs
    for r in probe:
        assert float(r["p15"]) <= float(r["p50"]) <= float(r["p85"]) and r["unit"] == "all" and r["layer"] == "act1"
        assert 0 <= float(r["test_acc"]) <= 1
    assert float(probe[-1]["test_acc"]) == pytest.approx(float(epochs[-1]["test_acc"]))  # the last step is the epoch's end
    png = plot_probe(run_dir, tmp_path / "probe.png")
    assert png.stat().st_size > 5000
    png = plot_accuracy_vs_steps([run_dir], tmp_path / "acc.png")
    assert png.stat().st_size > 5000


def test_other_norms_leave_the_diagnostic_columns_empty(runner, write_config, tmp_path):
    run_dir = run_cli(runner, write_config(**{"norm.type": "group", "epochs": 1}), tmp_path / "results")
    for row in rows(run_dir / "epochs.csv"):
        assert all(row[column] == "" for column in DIAGNOSTIC_COLUMNS)
    assert not (run_dir / "probe.csv").exists()


def test_probe_records_the_percentiles_of_the_layer_input():
    cfg = validate(tiny_config(probe={"layer": "act2", "every": 1, "unit": 3}, model="mlp"), "t")
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(5, 8))
    model.add_module("act2", nn.ReLU())
    seen = []
    model.act2.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        probe = Probe(model, cfg.probe, Path(tmp))
        probe.before_step(1)
        model(torch.randn(64, 5))
        probe.after_step(1, 1)
        probe.close()
        row = rows(Path(tmp) / "probe.csv")[0]
    expected = np.percentile(seen[0][:, 3].double().numpy(), [15, 50, 85])
    assert [float(row[k]) for k in ("p15", "p50", "p85")] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert row["unit"] == "3" and row["test_acc"] == ""


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"probe": {"layer": "act7"}}, "probe.layer='act7' is not a layer of model cnn; valid layers: conv1, norm1, act1"),
        ({"probe": {"layer": "act3", "unit": 128}}, "probe.unit=128: the input of layer 'act3' has 128 units; use 0..127"),
        ({"probe": {"layer": "act1", "evry": 3}}, "unknown key 'probe.evry' (allowed: layer, every, unit, test_acc)"),
        ({"precise_bn": {"batches": 3}, "norm.type": "layer"}, "precise_bn applies to batch norm only"),
        ({"precise_bn": {"batches": 0}}, "precise_bn.batches=0"),
        ({"norm.momentum_convention": "tf"}, "norm.momentum_convention='tf'"),
    ],
)
def test_bad_diagnostic_config_is_one_line_exit_2_and_writes_nothing(runner, write_config, tmp_path, overrides, message):
    results = tmp_path / "results"
    result = runner.invoke(app, ["run", str(write_config(**overrides)), "--results-dir", str(results)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (results / "runs").exists()


def test_keras_momentum_convention_is_resolved_and_saved(runner, write_config, tmp_path):
    path = write_config(**{"norm.momentum": 0.99, "norm.momentum_convention": "keras", "epochs": 1})
    run_dir = run_cli(runner, path, tmp_path / "results")
    meta = read_meta(run_dir)
    assert meta["norm_momentum_torch"] == 0.01
    assert "momentum=0.01," in meta["norm_layers"][0]["repr"]
    cfg = validate(tiny_config(**{"norm.momentum": 0.99, "norm.momentum_convention": "keras"}), "t")
    assert make_norm("batch", 4, **cfg.norm.options()).momentum == 0.01


@pytest.mark.parametrize("name", ["bn_paper_fig1", "gn_batch_sizes"])
def test_shipped_reproduction_configs_validate_and_build(runner, name):
    from conftest import REPO

    result = runner.invoke(app, ["run", str(REPO / "configs" / "repro" / f"{name}.yaml"), "--dry-run", "--set", "device=cpu"])
    assert result.exit_code == 0, result.output
    assert f"name: {name}" in result.output
