"""The training split kept as uint8 pixels (`images.U8Images`, the default on CUDA) gives the same
float32 batches, bit for bit, as the split normalized whole, and so the same training run."""

import functools

import pytest
import torch

from normbench.config import validate
from normbench.data import load_dataset
from normbench.images import U8Images, normalize_u8
from normbench.train import runner

from conftest import rows, tiny_config, write_tiny_cifar, write_tiny_mnist


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NORMBENCH_DATA", raising=False)


def _pixels(n=97, c=3, h=9, w=7, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_batches_equal_the_split_normalized_whole():
    train_u8, test_u8 = _pixels(), _pixels(seed=1)
    whole, _, stats = normalize_u8(train_u8, test_u8)
    images = U8Images(train_u8, stats)
    idx = torch.randperm(97, generator=torch.Generator().manual_seed(3))[:31]
    assert torch.equal(images[idx], whole[idx])
    assert torch.equal(images[5:40], whole[5:40])
    assert torch.equal(images.normalized(), whole)
    assert images.shape == whole.shape and len(images) == 97 and images.dtype == torch.float32
    assert images.pixels.element_size() * images.pixels.nelement() * 4 == whole.element_size() * whole.nelement()


def test_channels_last_storage_gives_channels_last_batches_with_the_same_values():
    train_u8 = _pixels()
    whole, _, stats = normalize_u8(train_u8, _pixels(seed=1))
    images = U8Images(train_u8, stats).contiguous(memory_format=torch.channels_last)
    batch = images[torch.tensor([4, 0, 96, 4])]
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, whole[torch.tensor([4, 0, 96, 4])])


def test_non_uint8_pixels_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        U8Images(torch.zeros(2, 1, 3, 3), {"mean": [0.0], "std": [1.0]})


def _dataset_cfg(name, data_dir, val_samples):
    return validate({"dataset": {"name": name, "data_dir": str(data_dir), "val_samples": val_samples}}, "t").dataset


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_loading_with_uint8_storage_gives_the_same_splits(tmp_path, name):
    if name == "mnist":
        write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=60, n_test=20)
    else:
        write_tiny_cifar(tmp_path / "d", n_train=60, n_test=20)
    cfg = _dataset_cfg(name, tmp_path / "d", val_samples=6)
    as_float = load_dataset(cfg)
    as_u8 = load_dataset(cfg, u8_train=True)
    assert isinstance(as_u8.train_x, U8Images) and not isinstance(as_float.train_x, U8Images)
    assert torch.equal(as_u8.train_x.normalized(), as_float.train_x)
    for split in ("train_y", "test_x", "test_y", "val_x", "val_y"):
        assert torch.equal(getattr(as_u8, split), getattr(as_float, split)), split
    assert as_u8.info["train_storage"] == "uint8, normalized per batch"
    assert as_float.info["train_storage"] == "float32"
    assert as_u8.shape == as_float.shape


@pytest.mark.parametrize("pack", [1, 2])
def test_a_run_on_uint8_storage_matches_the_float_run(tmp_path, monkeypatch, write_config, pack):
    write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=96, n_test=32)
    cfg = validate(tiny_config(**{"dataset": {"name": "mnist", "data_dir": str(tmp_path / "d"), "val_samples": 16},
                                  "pack": pack, **({"precise_bn.batches": 2} if pack == 1 else {})}), "t")
    losses = {}
    for u8 in (False, True):
        monkeypatch.setattr(runner, "load_dataset", functools.partial(load_dataset, u8_train=u8))
        outcomes = runner.run_packed(cfg, tmp_path / f"r{u8}") if pack > 1 else [runner.run(cfg, tmp_path / f"r{u8}")]
        losses[u8] = [[r["train_loss"] for r in rows(o.run_dir / "steps.csv")] for o in outcomes]
        losses[u8] += [[r["test_acc"] for r in rows(o.run_dir / "epochs.csv")] for o in outcomes]
    assert losses[True] == losses[False] and len(losses[True][0]) >= 4


@pytest.mark.gpu
def test_cuda_keeps_the_training_split_as_uint8_with_the_cpu_floats(tmp_path):
    write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=60, n_test=20)
    cfg = _dataset_cfg("mnist", tmp_path / "d", val_samples=6)
    on_gpu, on_cpu = load_dataset(cfg, device="cuda"), load_dataset(cfg)
    assert isinstance(on_gpu.train_x, U8Images) and on_gpu.train_x.pixels.dtype == torch.uint8
    idx = torch.arange(0, 54, 3)
    assert torch.equal(on_gpu.train_x[idx.cuda()].cpu(), on_cpu.train_x[idx])
