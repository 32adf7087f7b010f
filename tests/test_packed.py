"""`pack: K`: K packed seeds give what K separate runs give, and write K ordinary run directories."""

import csv

import pytest
import torch
import yaml

from normbench.cli import app
from normbench.config import validate
from normbench.data import load_dataset
from normbench.errors import ConfigError, NormbenchError
from normbench.models.packed import pack_inputs, pack_models
from normbench.train.runner import run_packed
from normbench.results import EPOCH_COLUMNS, STEP_COLUMNS, read_meta
from normbench.train.build import build_for_config
from normbench.train.runner import run as run_config
from normbench.runtime import seed_everything

from conftest import rows, tiny_config

@pytest.fixture
def float64():
    """Train in float64 so packed and separate runs agree far below float32 rounding."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def data64(cfg):
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    data.train_x, data.test_x = data.train_x.double(), data.test_x.double()
    return data


def assert_close_rows(packed: list[dict], separate: list[dict], columns, rel: float) -> None:
    assert len(packed) == len(separate) > 0
    for p, s in zip(packed, separate):
        for column in columns:
            assert float(p[column]) == pytest.approx(float(s[column]), rel=rel, abs=1e-12), (column, p, s)


CASES = [
    ("cnn", "batch", "adam", 0.0),
    ("cnn", "group", "adamw", 0.05),  # decoupled weight decay is elementwise too
    ("mlp", "layer", "sgd", 1e-3),  # sgd momentum + L2 weight decay
]


@pytest.mark.parametrize("model,norm,optimizer,weight_decay", CASES)
def test_packed_seeds_equal_separate_runs_in_float64(tmp_path, float64, model, norm, optimizer, weight_decay):
    """3 packed seeds vs 3 `train.run` runs of seeds 0, 1, 2 on the same data, both float64 with the
    same (fused, elementwise) optimizer: every logged loss, accuracy and test metric agrees."""
    overrides = {"model": model, "norm.type": norm, "optimizer": {"name": optimizer, "lr": 0.01, "weight_decay": weight_decay},
                 "norm.groups": 4 if norm == "group" else None, "schedule": "cosine", "log_every": 3,
                 "dataset.train_samples": 128, "dataset.test_samples": 48, "eval_batch_size": 32}
    base = tiny_config(**overrides)
    data = data64(validate(base, "t"))
    separate = [run_config(validate({**base, "seed": s}, "t"), tmp_path / "separate", data=data) for s in range(3)]
    packed = run_packed(validate({**base, "pack": 3}, "t"), tmp_path / "packed", data=data)

    assert [o.status for o in separate + packed] == ["completed"] * 6
    for p, s in zip(packed, separate):
        assert yaml.safe_load((p.run_dir / "config.yaml").read_text()) == yaml.safe_load((s.run_dir / "config.yaml").read_text())
        steps_p, steps_s = rows(p.run_dir / "steps.csv"), rows(s.run_dir / "steps.csv")
        assert [r["step"] for r in steps_p] == [r["step"] for r in steps_s]
        assert_close_rows(steps_p, steps_s, ("train_loss", "lr"), rel=1e-9)
        epochs_p, epochs_s = rows(p.run_dir / "epochs.csv"), rows(s.run_dir / "epochs.csv")
        assert_close_rows(epochs_p, epochs_s, ("samples_seen", "train_loss", "train_acc", "test_acc"), rel=1e-9)
        # evaluate() scores float32-cast logits (as train.evaluate does), so test loss agrees to float32 rounding
        assert_close_rows(epochs_p, epochs_s, ("test_loss",), rel=1e-6)
    losses = [float(rows(o.run_dir / "steps.csv")[0]["train_loss"]) for o in packed]
    assert len(set(losses)) == 3  # three different seeds, not one seed three times


@pytest.mark.parametrize("model,norm", [("cnn", "instance"), ("cnn", "layer"), ("cnn", "none"), ("bn_mlp", "batch"),
                                        ("mlp", "instance"), ("mlp", "group")])
def test_packed_forward_equals_each_seeds_model(float64, model, norm):
    """One forward pass in train mode (batch statistics) for the other packable model x norm pairs."""
    cfg = validate(tiny_config(model=model, **{"norm.type": norm}), "t")
    models = []
    for seed in range(3):
        seed_everything(seed)
        models.append(build_for_config(cfg, (1, 12, 12), 4))
    packed = pack_models(models)
    xs = [torch.randn(8, 1, 12, 12) for _ in models]
    expected = torch.stack([m(x) for m, x in zip(models, xs)], dim=1)  # (B, K, classes)
    torch.testing.assert_close(packed(pack_inputs(xs)), expected, rtol=1e-12, atol=1e-12)


def test_cli_run_with_pack_writes_one_ordinary_run_dir_per_seed(runner, write_config, tmp_path):
    results = tmp_path / "results"
    result = runner.invoke(app, ["run", str(write_config(seed=5)), "--set", "pack=2", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert "tiny seed 5" in result.output and "tiny seed 6" in result.output
    dirs = sorted((results / "runs").iterdir())
    assert [d.name.split("-")[:2] for d in dirs] == [["tiny", "seed5"], ["tiny", "seed6"]]
    for index, run_dir in enumerate(dirs):
        assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "meta.json", "steps.csv", "epochs.csv", "model.pt"}
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["seed"] == 5 + index and saved["pack"] == 1  # re-running it trains that seed alone
        meta = read_meta(run_dir)
        assert meta["status"] == "completed"
        assert meta["pack"] == {"size": 2, "index": index, "seeds": [5, 6], "run_dirs": [d.name for d in dirs]}
        assert meta["data"]["generator_seed"] == 10_000 + 5 + index  # synthetic data is per seed, as separately
        with open(run_dir / "steps.csv") as f:
            assert tuple(next(csv.reader(f))) == STEP_COLUMNS
        with open(run_dir / "epochs.csv") as f:
            assert tuple(next(csv.reader(f))) == EPOCH_COLUMNS
        epochs = rows(run_dir / "epochs.csv")
        assert [int(r["epoch"]) for r in epochs] == [1, 2] and float(epochs[-1]["test_acc"]) > 0.4  # chance: 0.25


def test_cli_pack_matches_separate_cli_runs_in_float32(runner, write_config, tmp_path):
    """The user's view: `--set pack=2` gives the same numbers as two plain runs. float32: close, not bitwise
    (Adam divides tiny gradients by their tiny RMS, so last-bit differences grow; float64 is the exact test)."""
    config = write_config(**{"model": "mlp", "norm.type": "batch", "epochs": 1})
    assert runner.invoke(app, ["run", str(config), "--set", "pack=2", "--results-dir", str(tmp_path / "p")]).exit_code == 0
    for seed in (0, 1):
        assert runner.invoke(app, ["run", str(config), "--set", f"seed={seed}", "--results-dir", str(tmp_path / f"s{seed}")]).exit_code == 0
        packed = next((tmp_path / "p" / "runs").glob(f"tiny-seed{seed}-*"))
        separate = next((tmp_path / f"s{seed}" / "runs").iterdir())
        for p, s in zip(rows(packed / "epochs.csv"), rows(separate / "epochs.csv"), strict=True):
            assert float(p["train_loss"]) == pytest.approx(float(s["train_loss"]), rel=1e-3)
            assert float(p["test_loss"]) == pytest.approx(float(s["test_loss"]), rel=1e-3)
            assert float(p["test_acc"]) == pytest.approx(float(s["test_acc"]), abs=2 / 64)  # at most 2 of 64 flip


@pytest.mark.parametrize("setting,message", [
    (["pack=2", "precision=fp16"], "pack=2 is not supported with precision fp16"),
    (["pack=0"], "pack=0"),
])
def test_unsupported_pack_is_a_one_line_config_error(runner, write_config, tmp_path, setting, message):
    args = ["run", str(write_config())]
    for s in setting:
        args += ["--set", s]
    result = runner.invoke(app, args + ["--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_norm_not_known_to_pack_is_refused(monkeypatch):
    """A norm another branch registers later must be refused, not packed wrongly."""
    from normbench import config as config_module

    monkeypatch.setattr(config_module, "PACKABLE_NORMS", ("none", "batch"))
    with pytest.raises(ConfigError, match="pack=2 is not supported with norm group"):
        validate(tiny_config(pack=2, **{"norm.type": "group"}), "t")


def test_pack_layer_conversion_refuses_unknown_layers():
    from torch import nn

    models = [nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 2)) for _ in range(2)]
    with pytest.raises(ConfigError, match="pack is not supported with layer '1' \\(Dropout\\)"):
        pack_models(models)


def test_train_run_refuses_a_packed_config(tmp_path):
    with pytest.raises(NormbenchError, match="run_packed"):
        run_config(validate(tiny_config(pack=2), "t"), tmp_path)


def test_a_diverged_seed_is_recorded_and_the_others_are_unharmed(tmp_path, float64):
    """Seed 1 sees NaN pixels and diverges; seed 0 completes with its separate run's numbers."""
    base = tiny_config(**{"epochs": 1, "log_every": 2})
    cfg = validate(base, "t")
    clean, poisoned = data64(cfg), data64(cfg)
    poisoned.train_x[:] = float("nan")
    outcomes = run_packed(validate({**base, "pack": 2}, "t"), tmp_path / "p", data=[clean, poisoned])
    assert [o.status for o in outcomes] == ["completed", "diverged"]
    meta = read_meta(outcomes[1].run_dir)
    assert meta["status"] == "diverged" and "training loss became nan at step 2" in meta["reason"]
    assert len(rows(outcomes[1].run_dir / "steps.csv")) == 1 and rows(outcomes[1].run_dir / "epochs.csv") == []
    separate = run_config(cfg, tmp_path / "s", data=data64(cfg))
    assert_close_rows(rows(outcomes[0].run_dir / "steps.csv"), rows(separate.run_dir / "steps.csv"), ("train_loss",), rel=1e-9)
    assert_close_rows(rows(outcomes[0].run_dir / "epochs.csv"), rows(separate.run_dir / "epochs.csv"),
                      ("train_acc", "test_acc"), rel=1e-9)


def test_bench_pack_reports_the_packed_speedup(runner, tmp_path):
    from normbench.bench.pack import PACK_COLUMNS

    tiny = ["--set", "dataset.name=synthetic", "--set", "dataset.shape=[1,12,12]", "--set", "dataset.num_classes=4",
            "--set", "dataset.train_samples=256", "--set", "dataset.test_samples=64", "--set", "num_threads=1",
            "--set", "eval_batch_size=64"]
    result = runner.invoke(app, ["bench", *tiny, "--pack", "2", "--batch-sizes", "4", "--norms", "batch,layer",
                                 "--steps", "3", "--repeats", "2", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "packed" in result.output and "speedup" in result.output
    assert not list(tmp_path.glob("runs"))  # bench runs leave no run directories behind
    path = next((tmp_path / "bench").glob("pack-*.csv"))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == PACK_COLUMNS
        bench_rows = list(reader)
    assert [(r["norm"], r["pack"]) for r in bench_rows] == [("batch", "2"), ("layer", "2")]
    for r in bench_rows:
        assert float(r["sequential_min"]) <= float(r["sequential_samples_per_s"]) <= float(r["sequential_max"])
        assert float(r["packed_min"]) <= float(r["packed_samples_per_s"]) <= float(r["packed_max"])
        assert float(r["speedup"]) == pytest.approx(float(r["packed_samples_per_s"]) / float(r["sequential_samples_per_s"]))


def test_bench_pack_refuses_a_config_pack_cannot_train(runner, tmp_path):
    result = runner.invoke(app, ["bench", "--set", "dataset.name=synthetic", "--pack", "2", "--precision", "fp16",
                                 "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not supported with precision fp16" in result.output
    assert not (tmp_path / "bench").exists()


def test_pack_refuses_probe_precise_bn_and_sync():
    from normbench.config import validate as check
    from normbench.errors import ConfigError

    for extra in ({"probe": {"layer": "act1"}}, {"precise_bn": {"batches": 2}}, {"norm": {"type": "batch", "sync": True}}):
        with pytest.raises(ConfigError, match="pack=2 is not supported with"):
            check({**tiny_config(pack=2), **extra}, "t")


def test_packed_epochs_csv_has_the_full_schema(tmp_path):
    import csv

    from normbench.config import validate as check
    from normbench.train.runner import run_packed
    from normbench.results import EPOCH_COLUMNS

    outcomes = run_packed(check(tiny_config(pack=2, epochs=1), "t"), tmp_path)
    for outcome in outcomes:
        with open(outcome.run_dir / "epochs.csv") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == EPOCH_COLUMNS and rows[0]["test_acc_batch_stats"] == ""
