"""Datasets as device-resident tensors.

Each split is held whole on the run's device: as one normalized float32 tensor (N, C, H, W), or,
for a real dataset's training split on a GPU, as uint8 pixels normalized per batch
(`images.U8Images`: the same floats at a quarter of the memory). Training gathers batches from it
by a seeded permutation, with no per-sample loader.

Lookup for a real dataset: `data_dir` (config or --data-dir), else $NORMBENCH_DATA; then the
system copy (Debian's dataset-fashion-mnist for Fashion-MNIST); then torchvision's download.
If all fail, one error names every place tried. Other data is never substituted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv

from normbench.errors import NormbenchError
from normbench.formats import FormatError, check_idx, read_cifar_batch
from normbench.images import U8Images, normalize_like, normalize_u8

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


VAL_DEFAULT = 5000  # validation samples held out of a real dataset's training split by default
VAL_SPLIT_SEED = 20_261_204  # fixed: every run and seed holds out the same samples


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: sample shape (C, H, W), classes, torchvision class."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    torchvision_class: type | None
    how_to_get: str


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", (1, 28, 28), 10, tv.FashionMNIST,
        "install Debian's package (sudo apt-get install dataset-fashion-mnist) or put the four idx files "
        "(.gz or not) in DATA_DIR/FashionMNIST/raw/ and pass --data-dir DATA_DIR",
    ),
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, tv.MNIST,
        "put the four MNIST idx files (.gz or not) in DATA_DIR/MNIST/raw/ and pass --data-dir DATA_DIR",
    ),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, tv.CIFAR10,
        "unpack cifar-10-python.tar.gz into DATA_DIR (giving DATA_DIR/cifar-10-batches-py/) and pass --data-dir DATA_DIR",
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, tv.CIFAR100,
        "unpack cifar-100-python.tar.gz into DATA_DIR (giving DATA_DIR/cifar-100-python/) and pass --data-dir DATA_DIR",
    ),
}


@dataclass
class TensorData:
    """A dataset held as tensors: x (N, C, H, W) float32 normalized, y (N,) int64. train_x may be a
    `U8Images` (uint8 storage); indexing it gives the same float32 batches."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    info: dict = field(default_factory=dict)  # source, normalization, checksums: goes into meta.json
    val_x: torch.Tensor | None = None  # the validation split (held out of the training split), or None
    val_y: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


def dataset_shape(dataset_cfg) -> tuple[tuple[int, int, int], int]:
    """(sample shape (C, H, W), number of classes) for a dataset config, without loading it."""
    if dataset_cfg.name == "synthetic":
        return tuple(dataset_cfg.shape), dataset_cfg.num_classes
    info = DATASETS[dataset_cfg.name]
    return info.shape, info.num_classes


def user_data_dir(dataset_cfg, override: str | Path | None = None) -> Path | None:
    """The user's data folder: --data-dir, else config data_dir, else $NORMBENCH_DATA."""
    for candidate in (override, dataset_cfg.data_dir, os.environ.get("NORMBENCH_DATA")):
        if candidate:
            return Path(candidate).expanduser()
    return None


def cache_dir() -> Path:
    """Where normbench unpacks compressed dataset files ($NORMBENCH_CACHE or ~/.cache/normbench)."""
    return Path(os.environ.get("NORMBENCH_CACHE") or Path.home() / ".cache" / "normbench")


# ---------------------------------------------------------------------------------------------
# MNIST-format datasets (MNIST, Fashion-MNIST): four idx files, plain or gzipped.


def idx_dir(folder: Path) -> Path | None:
    """`folder` if it holds all four idx files (each plain or .gz), else None."""
    if all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in IDX_FILES):
        return folder
    return None


def source_digest(source: Path) -> str:
    """A key for the idx files in `source`: its path and each file's name, size, mtime and SHA-1,
    so that replacing a file (new labels, a good copy of a corrupt one) is always noticed."""
    digest = hashlib.sha1(str(source.resolve()).encode())
    for name in IDX_FILES:
        path = source / name if (source / name).is_file() else source / f"{name}.gz"
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def stage_idx(source: Path, class_name: str) -> Path:
    """A torchvision root whose <class_name>/raw/ holds the plain idx files of `source`, unpacked
    once per content of the source files (docs/data.md)."""
    if source.name == "raw" and source.parent.name == class_name and all((source / f).is_file() for f in IDX_FILES):
        return source.parent.parent  # already torchvision's own layout
    root = cache_dir() / "data" / source_digest(source)
    raw = root / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw / name
        if target.is_file():
            continue
        plain, packed = source / name, source / f"{name}.gz"
        tmp = raw / f".{name}.tmp-{os.getpid()}"
        if plain.is_file():
            shutil.copyfile(plain, tmp)
        else:
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.replace(target)  # atomic: a killed unpack leaves no half file under the real name
    return root


def _check_idx_files(raw: Path) -> None:
    """Every idx file in `raw` well-formed, with as many labels as images (FormatError if not)."""
    for split in ("train", "t10k"):
        images = check_idx(raw / f"{split}-images-idx3-ubyte", 3)
        labels = check_idx(raw / f"{split}-labels-idx1-ubyte", 1)
        if images != labels:
            raise FormatError(f"{split}-images-idx3-ubyte holds {images} images but {split}-labels-idx1-ubyte "
                              f"{labels} labels")


def _load_idx(info: DatasetInfo, user_dir: Path | None) -> tuple[tuple, tuple, dict]:
    class_name = info.torchvision_class.__name__
    candidates = []
    if user_dir is not None:
        candidates += [user_dir / class_name / "raw", user_dir / class_name, user_dir]
    if info.name == "fashion-mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        if idx_dir(folder):
            root = stage_idx(folder, class_name)
            _check_idx_files(root / class_name / "raw")
            splits = [info.torchvision_class(str(root), train=train, download=False) for train in (True, False)]
            xs = [s.data.unsqueeze(1) for s in splits]  # (N, 1, 28, 28) uint8
            ys = [s.targets.long() for s in splits]
            return (xs[0], ys[0]), (xs[1], ys[1]), {"source": str(folder)}
    tried = [str(c) for c in candidates]
    return _download(info, user_dir, tried)


# ---------------------------------------------------------------------------------------------
# CIFAR: python pickles, unpickled by normbench.formats (never by pickle.load: a tampered file
# could run code). Files that differ from the official release load, recorded in meta.json.


def _cifar_checksums_ok(cls: type, root: Path) -> bool:
    from torchvision.datasets.utils import check_integrity

    files = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return all(check_integrity(str(root / cls.base_folder / f), md5) for f, md5 in files)


def _read_cifar_split(folder: Path, files: list, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches `files` of a CIFAR folder as (x (N, 3, 32, 32) uint8, y (N,) int64)."""
    parts = [read_cifar_batch(folder / name) for name, _ in files]
    labels = [label for _, batch_labels in parts for label in batch_labels]
    if labels and not 0 <= min(labels) <= max(labels) < num_classes:
        raise FormatError(f"labels outside 0..{num_classes - 1} in {', '.join(name for name, _ in files)}")
    x = torch.from_numpy(np.concatenate([data for data, _ in parts]))
    return x, torch.tensor(labels, dtype=torch.long)


def _load_cifar(info: DatasetInfo, user_dir: Path | None) -> tuple[tuple, tuple, dict]:
    cls = info.torchvision_class
    candidates = [user_dir] if user_dir is not None else []
    for root in candidates:
        folder = root / cls.base_folder
        if (folder / cls.meta["filename"]).is_file():
            train = _read_cifar_split(folder, cls.train_list, info.num_classes)
            test = _read_cifar_split(folder, cls.test_list, info.num_classes)
            extra = {"source": str(folder), "checksums_match_official": _cifar_checksums_ok(cls, root)}
            return train, test, extra
    return _download(info, user_dir, [str(c / cls.base_folder) for c in candidates])


def _download(info: DatasetInfo, user_dir: Path | None, tried: list[str]) -> tuple[tuple, tuple, dict]:
    """Last resort: torchvision's own download; on failure, one error naming every place tried
    (and what the failed download made in the data folder removed again)."""
    root = user_dir if user_dir is not None else cache_dir() / "data" / "downloads"
    cls = info.torchvision_class
    made_by_download = [root / name for name in (cls.__name__, getattr(cls, "base_folder", ""), getattr(cls, "filename", ""))
                        if name and not (root / name).exists()]
    try:
        splits = [cls(str(root), train=train, download=True) for train in (True, False)]
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError...
        for path in made_by_download:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        places = ", ".join(tried) if tried else "no data folder given"
        raise NormbenchError(
            f"dataset {info.name} not found (tried: {places}; torchvision download into {root} failed: {reason}); "
            f"to get it: {info.how_to_get}"
        ) from None
    if isinstance(splits[0].data, torch.Tensor):
        xs = [s.data.unsqueeze(1) for s in splits]
        ys = [s.targets.long() for s in splits]
    else:
        xs = [torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in splits]
        ys = [torch.tensor(s.targets, dtype=torch.long) for s in splits]
    return (xs[0], ys[0]), (xs[1], ys[1]), {"source": f"torchvision download into {root}"}


# ---------------------------------------------------------------------------------------------


def _synthetic(dataset_cfg, seed: int) -> TensorData:
    """A learnable random task: class prototypes of L2 norm 3 in unit Gaussian noise, seeded.

    Any two prototypes are about 4.2 apart, so the task is learnable but, for any input size,
    not trivial: the Bayes-optimal classifier errs on a few per cent of samples."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    shape, classes = tuple(dataset_cfg.shape), dataset_cfg.num_classes
    prototypes = torch.randn((classes, *shape), generator=gen)  # (K, C, H, W)
    prototypes *= 3.0 / prototypes.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))

    def split(n: int):
        y = torch.randint(0, classes, (n,), generator=gen)
        x = prototypes[y] + torch.randn((n, *shape), generator=gen)
        return x, y

    train_x, train_y = split(dataset_cfg.train_samples)
    test_x, test_y = split(dataset_cfg.test_samples)
    info = {"source": "synthetic (class prototype of norm 3 + N(0, 1) noise)", "generator_seed": 10_000 + seed}
    return TensorData(train_x, train_y, test_x, test_y, classes, info)


def val_count(dataset_cfg, n_train: int) -> int:
    """How many training samples the validation split holds out: `dataset.val_samples`, or when it
    is null, 5,000 for a real dataset (at most a tenth of its training split) and 0 for synthetic."""
    if dataset_cfg.val_samples is not None:
        if dataset_cfg.val_samples >= n_train:
            raise NormbenchError(f"dataset.val_samples={dataset_cfg.val_samples} leaves no training samples "
                                 f"(the training split has {n_train}); use fewer, or 0 for no validation split")
        return dataset_cfg.val_samples
    return 0 if dataset_cfg.name == "synthetic" else min(VAL_DEFAULT, n_train // 10)


def validation_split(n_train: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices), each ascending: `count` samples drawn with a fixed
    seed, so every run and every seed holds out the same ones."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return order[count:].sort().values, order[:count].sort().values


def hold_out(x: torch.Tensor, y: torch.Tensor, count: int) -> tuple[tuple, tuple | None]:
    """((train x, train y), (val x, val y) or None) with `count` samples held out for validation."""
    if count == 0:
        return (x, y), None
    train, val = validation_split(len(y), count)
    return (x[train], y[train]), (x[val], y[val])


def load_dataset(dataset_cfg, seed: int = 0, device: torch.device | str = "cpu", data_dir=None,
                 u8_train: bool | None = None) -> TensorData:
    """Load a dataset config into tensors on `device`, or raise NormbenchError saying how to get it.
    u8_train: keep a real dataset's training split as uint8 pixels normalized per batch
    (`images.U8Images`); None means on CUDA devices only."""
    if u8_train is None:
        u8_train = torch.device(device).type == "cuda"
    if dataset_cfg.name == "synthetic":
        data = _synthetic(dataset_cfg, seed)
    else:
        info = DATASETS[dataset_cfg.name]
        user_dir = user_data_dir(dataset_cfg, data_dir)
        if user_dir is not None and not user_dir.is_dir():  # a typo: nothing is created there
            raise NormbenchError(f"dataset {info.name} not found: data folder '{user_dir}' (--data-dir, dataset.data_dir "
                                 f"or $NORMBENCH_DATA) does not exist; check the path; to get it: {info.how_to_get}")
        loader = _load_cifar if info.name.startswith("cifar") else _load_idx
        try:
            (train_x, train_y), (test_x, test_y), extra = loader(info, user_dir)
        except NormbenchError:
            raise
        except FormatError as exc:
            raise NormbenchError(f"dataset {info.name} could not be read: {exc}; check the files or get them again: "
                                 f"{info.how_to_get}") from None
        except Exception as exc:  # a truncated or malformed file
            raise NormbenchError(f"dataset {info.name} could not be read ({type(exc).__name__}: {exc}); "
                                 f"check the files or get them again: {info.how_to_get}") from None
        if tuple(train_x.shape[1:]) != info.shape:
            raise NormbenchError(f"dataset {info.name}: expected samples of shape {info.shape}, "
                                 f"found {tuple(train_x.shape[1:])} in {extra['source']}")
        (train_x, train_y), val = hold_out(train_x, train_y, val_count(dataset_cfg, len(train_y)))
        train_u8 = train_x
        train_x, test_x, stats = normalize_u8(train_u8, test_x)  # statistics of the training part alone
        if u8_train:
            train_x = U8Images(train_u8, stats)
        extra.update(normalization=stats)
        data = TensorData(train_x, train_y, test_x, test_y, info.num_classes, extra)
        if val is not None:
            data.val_x, data.val_y = normalize_like(val[0], stats), val[1]
    if dataset_cfg.name == "synthetic" and (count := val_count(dataset_cfg, len(data.train_y))):
        (data.train_x, data.train_y), (data.val_x, data.val_y) = hold_out(data.train_x, data.train_y, count)
    val_samples = 0 if data.val_y is None else len(data.val_y)
    storage = "uint8, normalized per batch" if isinstance(data.train_x, U8Images) else "float32"
    data.info.update(train_storage=storage, train_samples=len(data.train_y), val_samples=val_samples,
                     val_split_seed=VAL_SPLIT_SEED, test_samples=len(data.test_y), name=dataset_cfg.name)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        if getattr(data, name) is not None:
            setattr(data, name, getattr(data, name).to(device))
    return data
