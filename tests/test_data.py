"""Dataset loading from the real on-disk formats, lookup order, and the missing-data error."""

import pytest
import torch

from normbench.config import validate
from normbench.data import DEBIAN_FASHION_MNIST, load_dataset
from normbench.errors import NormbenchError

from conftest import write_tiny_cifar, write_tiny_mnist


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NORMBENCH_DATA", raising=False)


def _cfg(name, data_dir=None):
    """The dataset config, every training sample kept (the validation split is tested in test_validation.py)."""
    return validate({"dataset": {"name": name, "data_dir": str(data_dir) if data_dir else None, "val_samples": 0}},
                    "t").dataset


@pytest.mark.parametrize("layout", ["torchvision", "flat-gz"])
def test_mnist_idx_files_load_and_are_standardized(tmp_path, layout):
    if layout == "torchvision":
        write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=50, n_test=20)
    else:
        write_tiny_mnist(tmp_path / "d", n_train=50, n_test=20, compress=True)
    data = load_dataset(_cfg("mnist", tmp_path / "d"))
    assert data.train_x.shape == (50, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3
    assert set(data.train_y.tolist()) <= {0, 1, 2, 3}
    assert data.info["train_samples"] == 50 and "normalization" in data.info


def test_labels_and_pixels_survive_loading(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d" / "FashionMNIST" / "raw", n_train=10, n_test=5)
    data = load_dataset(_cfg("fashion-mnist", tmp_path / "d"))
    raw_labels = (folder / "train-labels-idx1-ubyte").read_bytes()[8:]
    assert data.train_y.tolist() == list(raw_labels)
    raw = torch.frombuffer(bytearray((folder / "train-images-idx3-ubyte").read_bytes()[16:]), dtype=torch.uint8)
    raw = raw.float().view(10, 1, 28, 28) / 255
    mean, std = data.info["normalization"]["mean"][0], data.info["normalization"]["std"][0]
    torch.testing.assert_close(data.train_x, ((raw - mean) / std).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_batches_load_channels_first(tmp_path, hundred):
    write_tiny_cifar(tmp_path / "d", n_train=40, n_test=20, hundred=hundred)
    data = load_dataset(_cfg("cifar100" if hundred else "cifar10", tmp_path / "d"))
    assert data.train_x.shape == (40, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert data.num_classes == (100 if hundred else 10)
    assert len(data.info["normalization"]["mean"]) == 3
    assert data.info["checksums_match_official"] is False  # tiny files are not the official release


def test_cifar_pixel_layout_is_rgb_planes(tmp_path):
    folder = write_tiny_cifar(tmp_path / "d", n_train=5, n_test=5)
    import pickle

    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]  # (3072,) = R plane, G plane, B plane
    data = load_dataset(_cfg("cifar10", tmp_path / "d"))
    stats = data.info["normalization"]
    pixels = data.train_x[0] * torch.tensor(stats["std"]).view(3, 1, 1) + torch.tensor(stats["mean"]).view(3, 1, 1)
    expected = torch.tensor(first, dtype=torch.float32).view(3, 32, 32) / 255
    torch.testing.assert_close(pixels, expected, atol=1e-4, rtol=1e-4)


def test_environment_variable_is_used_when_no_data_dir_is_given(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path / "env" / "MNIST" / "raw", n_train=8, n_test=4)
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "env"))
    assert len(load_dataset(_cfg("mnist")).train_y) == 8


def test_explicit_data_dir_wins_over_the_config_and_environment(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path / "a" / "MNIST" / "raw", n_train=8, n_test=4)
    write_tiny_mnist(tmp_path / "b" / "MNIST" / "raw", n_train=12, n_test=4)
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "a"))
    assert len(load_dataset(_cfg("mnist", tmp_path / "a"), data_dir=tmp_path / "b").train_y) == 12


def test_missing_dataset_names_the_places_tried_and_how_to_get_it(tmp_path):
    with pytest.raises(NormbenchError) as info:
        load_dataset(_cfg("mnist", tmp_path / "empty"))
    message = info.value.message
    assert "dataset mnist not found" in message and str(tmp_path / "empty") in message
    assert "to get it" in message and "\n" not in message


def test_truncated_file_is_a_clear_error(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=8, n_test=4)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(NormbenchError, match="dataset mnist could not be read"):
        load_dataset(_cfg("mnist", tmp_path / "d"))


def test_synthetic_is_seeded_and_shaped():
    cfg = validate({"dataset": {"name": "synthetic", "shape": [3, 8, 8], "num_classes": 5,
                                "train_samples": 30, "test_samples": 10}}, "t").dataset
    a, b, c = load_dataset(cfg, seed=1), load_dataset(cfg, seed=1), load_dataset(cfg, seed=2)
    assert a.train_x.shape == (30, 3, 8, 8) and a.num_classes == 5
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_the_offline_default():
    data = load_dataset(_cfg("fashion-mnist"))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.info["source"] == str(DEBIAN_FASHION_MNIST)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
