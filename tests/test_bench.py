"""`normbench bench` and the fast path: the baseline does the same work, the fast path the same math.

No timing is asserted here (speed is what `normbench bench` prints); these tests check that the
bench runs, writes its documented CSV, and that both compared paths compute the same thing.
"""

import csv
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from normbench.bench import harness
from normbench.train import fastpath
from normbench.bench import plain_loop
from normbench.bench.vs_plain import BENCH_COLUMNS, time_plain_sequential
from normbench.cli import app
from normbench.config import validate
from normbench.results import STEP_COLUMNS
from normbench.train.build import build_for_config
from normbench.train.runner import run as run_config

from conftest import tiny_config

TINY_SET = ["--set", "dataset.name=synthetic", "--set", "dataset.shape=[1,12,12]", "--set", "dataset.num_classes=4",
            "--set", "dataset.train_samples=256", "--set", "dataset.test_samples=64", "--set", "num_threads=1",
            "--set", "eval_batch_size=64"]


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_bench_writes_the_table_and_csv(runner, tmp_path):
    result = runner.invoke(app, ["bench", *TINY_SET, "--batch-sizes", "4,8", "--norms", "batch,group",
                                 "--steps", "3", "--repeats", "2", "--no-memory", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "threads" in result.output  # the environment header
    files = list((tmp_path / "bench").glob("*.csv"))
    assert len(files) == 1
    columns, rows = read_rows(files[0])
    assert tuple(columns) == BENCH_COLUMNS
    assert [(r["batch_size"], r["norm"]) for r in rows] == [("4", "batch"), ("4", "group"), ("8", "batch"), ("8", "group")]
    for r in rows:
        ours, plain = float(r["normbench_samples_per_s"]), float(r["plain_samples_per_s"])
        assert float(r["normbench_min"]) <= ours <= float(r["normbench_max"])
        assert float(r["plain_min"]) <= plain <= float(r["plain_max"])
        assert float(r["ratio"]) == pytest.approx(ours / plain)
        assert r["memory_kind"] == "not measured" and r["precision"] == "fp32" and r["steps"] == "3"


def test_bench_measures_peak_memory_in_fresh_processes(runner, tmp_path):
    result = runner.invoke(app, ["bench", *TINY_SET, "--batch-sizes", "4", "--steps", "2", "--repeats", "1",
                                 "--precision", "bf16", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    _, rows = read_rows(next((tmp_path / "bench").glob("*.csv")))
    row = rows[0]
    assert row["memory_kind"] == "process peak RSS" and row["precision"] == "bf16"
    ours, plain = float(row["normbench_peak_mib"]), float(row["plain_peak_mib"])
    assert ours > 50 and plain > 50  # a process holding torch is never this small
    assert float(row["memory_ratio"]) == pytest.approx(ours / plain)


@pytest.mark.parametrize("args, fragment", [
    (["--batch-sizes", "2,x"], "--batch-sizes"),
    (["--norms", "nope"], "unknown norm"),
    (["--batch-sizes", "1"], "batch statistics need at least 2"),
])
def test_bench_rejects_bad_options_in_one_line(runner, tmp_path, args, fragment):
    result = runner.invoke(app, ["bench", *TINY_SET, *args, "--results-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "bench").exists()


def test_plain_loop_and_normbench_do_the_same_work(tmp_path):
    """Same init, same batches in the same order, same optimizer: the same loss at every step."""
    cfg = validate(tiny_config(log_every=1, epochs=1, channels_last=False), "t")
    data = harness.load_bench_data(cfg, torch.device("cpu"))
    outcome = run_config(cfg, tmp_path, data=data.tensors)
    run_steps = read_rows(outcome.run_dir / "steps.csv")
    assert tuple(run_steps[0]) == STEP_COLUMNS
    ours = [float(r["train_loss"]) for r in run_steps[1]]

    model, optimizer = plain_loop.build_plain(cfg, data.shape, data.num_classes, torch.device("cpu"))
    loader = plain_loop.make_loader(data.plain_dataset, cfg.batch_size, torch.device("cpu"), order_seed=cfg.seed)
    plain = plain_loop.train_plain(model, optimizer, loader, torch.device("cpu"), len(ours), log_interval=1).losses
    assert len(ours) == len(plain) == 256 // 16
    # fused (normbench) and for-loop (plain) Adam round differently in the last bits, nothing more
    assert ours == pytest.approx(plain, rel=1e-4)
    assert ours[-1] < ours[0]


def test_the_plain_dataset_gives_normbenchs_pixels():
    cfg = validate(tiny_config(), "t")
    data = harness.load_bench_data(cfg, torch.device("cpu"))
    for i in (0, 17, 255):
        x, y = data.plain_dataset[i]  # ToTensor + Normalize of one uint8 image
        assert torch.equal(x, data.tensors.train_x[i]) and y == int(data.tensors.train_y[i])


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer"])
def test_channels_last_computes_what_contiguous_computes(norm):
    cfg = validate(tiny_config(**{"norm.type": norm}), "t")
    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    y = torch.randint(0, 4, (8,))
    outputs = []
    for channels_last in (False, True):
        torch.manual_seed(1)
        model = fastpath.prepare_model(build_for_config(cfg, (1, 12, 12), 4), channels_last)
        xb = fastpath.to_channels_last(x) if channels_last else x
        logits = model(xb)
        F.cross_entropy(logits, y).backward()
        outputs.append((logits.detach(), [p.grad for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = outputs
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


def test_channels_last_auto_and_the_run_records_it(tmp_path):
    assert fastpath.channels_last_on("auto", "cnn", (1, 28, 28), torch.device("cpu"))
    assert not fastpath.channels_last_on("auto", "mlp", (1, 28, 28), torch.device("cpu"))
    assert not fastpath.channels_last_on(False, "cnn", (1, 28, 28), torch.device("cpu"))
    losses = []
    for setting in (True, False):
        outcome = run_config(validate(tiny_config(channels_last=setting), "t"), tmp_path / str(setting))
        assert outcome.status == "completed"
        import json

        meta = json.loads((outcome.run_dir / "meta.json").read_text())
        assert meta["channels_last"] is setting and meta["optimizer_impl"] == "fused"
        losses.append(outcome.final["final_train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_bf16_autocast_keeps_batch_norm_state_in_fp32():
    """Under bf16 autocast the convs run in bf16; BN's parameters and running statistics stay fp32."""
    cfg = validate(tiny_config(), "t")
    model = build_for_config(cfg, (1, 12, 12), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(8, 1, 12, 12))
        assert model.conv1(torch.randn(2, 1, 12, 12)).dtype == torch.bfloat16
    F.cross_entropy(logits.float(), torch.randint(0, 4, (8,))).backward()
    for name in ("norm1", "norm2", "norm3"):
        bn = getattr(model, name)
        assert bn.running_mean.dtype == bn.running_var.dtype == bn.weight.dtype == torch.float32
        assert bn.weight.grad.dtype == torch.float32 and torch.isfinite(bn.running_var).all()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_plain_loop_runs_a_whole_config_for_the_sweep_baseline():
    cfg = validate(tiny_config(), "t")
    seconds = time_plain_sequential([cfg, cfg])
    result = plain_loop.run_plain(cfg, torch.device("cpu"))
    assert seconds > 0 and result["steps"] == 2 * (256 // 16)
    assert 0.5 < result["test_acc"] <= 1.0 and math.isfinite(result["test_loss"])


def test_u8_stats_match_a_float64_computation():
    images = torch.randint(0, 256, (5000, 2, 3, 3), dtype=torch.uint8)
    stats = plain_loop.u8_stats(images)
    scaled = images.double() / 255
    assert stats["mean"] == pytest.approx(scaled.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert stats["std"] == pytest.approx(scaled.std(dim=(0, 2, 3)).tolist(), rel=1e-9)
    assert statistics.mean(stats["mean"]) == pytest.approx(0.5, abs=0.02)
