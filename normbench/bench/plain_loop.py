"""The baseline normbench is measured against: a plain PyTorch training loop.

Written the way pytorch/examples (`mnist/main.py`) writes it: a torchvision dataset whose
samples pass through `ToTensor` + `Normalize` one at a time, a `DataLoader` that collates them,
and `model.train(); for data, target in loader: zero_grad, forward, loss, backward, step` with a
`loss.item()` every `log_interval` batches. It trains the same model (`train.build_for_config`)
with the same optimizer on the same normalized pixels, in fp32, so that `normbench bench`
compares two ways of doing the same work.

Two deliberate differences from the example, both so the work is identical: the loader drops a
trailing partial batch (normbench does), and the shuffle order can be fixed by a seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms

from normbench.config import Config
from normbench.data import DATASETS, load_dataset, user_data_dir
from normbench.errors import NormbenchError

LOG_INTERVAL = 10  # pytorch/examples' default: loss.item() every 10 batches


class UInt8ImageDataset(Dataset):
    """uint8 images held in memory, served one PIL image at a time through `transform`.

    The same per-sample work torchvision's MNIST/FashionMNIST/CIFAR `__getitem__` does
    (`Image.fromarray`, then the transform), for data that is not on disk (synthetic).
    images: (N, C, H, W) uint8; targets: (N,) int64.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), PIL's layout
        if self.images.shape[-1] == 1:
            self.images = self.images[..., 0]  # (N, H, W): PIL mode "L"
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = self.images[index], int(self.targets[index])
        img = self.transform(Image.fromarray(img))
        return img, target


def example_transform(mean: list[float], std: list[float]):
    """`ToTensor()` then `Normalize(mean, std)`, as in pytorch/examples."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))])


def _idx_root(cfg: Config, data_dir=None) -> Path:
    """The torchvision root holding cfg's MNIST-format idx files (the lookup normbench's loader uses)."""
    from normbench.data import DEBIAN_FASHION_MNIST, idx_dir, stage_idx

    info = DATASETS[cfg.dataset.name]
    user_dir = user_data_dir(cfg.dataset, data_dir)
    class_name = info.torchvision_class.__name__
    candidates = [user_dir / class_name / "raw", user_dir / class_name, user_dir] if user_dir else []
    if info.name == "fashion-mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        if idx_dir(folder):
            return stage_idx(folder, class_name)
    raise NormbenchError(f"{info.name}: no idx files in {', '.join(map(str, candidates)) or 'any folder'}; "
                         f"to get it: {info.how_to_get}")


def synthetic_u8(cfg: Config) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """normbench's synthetic splits as uint8 pixels ((N, C, H, W), labels), for both paths alike."""
    raw = load_dataset(cfg.dataset, seed=cfg.seed, device="cpu")
    return (quantize_u8(raw.train_x), raw.train_y), (quantize_u8(raw.test_x), raw.test_y)


def make_datasets(cfg: Config, stats: dict | None = None, data_dir=None) -> tuple[Dataset, Dataset, dict]:
    """(train, test, normalization) as the example builds them: torchvision's own class for MNIST-format
    data on disk, `UInt8ImageDataset` for synthetic. stats = {"mean": [...], "std": [...]} of the training
    split in [0, 1] units; computed from the pixels when not given."""
    if cfg.dataset.name == "synthetic":
        (train_u8, train_y), (test_u8, test_y) = synthetic_u8(cfg)
        stats = stats or u8_stats(train_u8)
        transform = example_transform(stats["mean"], stats["std"])
        return UInt8ImageDataset(train_u8, train_y, transform), UInt8ImageDataset(test_u8, test_y, transform), stats
    if cfg.dataset.name not in ("fashion-mnist", "mnist"):
        raise NormbenchError(f"the plain loop reads fashion-mnist, mnist and synthetic, not {cfg.dataset.name}")
    cls, root = DATASETS[cfg.dataset.name].torchvision_class, str(_idx_root(cfg, data_dir))
    train = cls(root, train=True, download=False)
    stats = stats or u8_stats(train.data.unsqueeze(1))
    transform = example_transform(stats["mean"], stats["std"])
    train.transform = transform
    return train, cls(root, train=False, download=False, transform=transform), stats


def make_loader(dataset: Dataset, batch_size: int, device: torch.device, order_seed: int | None = None) -> DataLoader:
    """The example's DataLoader: shuffled; on CUDA one worker and pinned memory, as the example sets."""
    generator = torch.Generator().manual_seed(order_seed) if order_seed is not None else None
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    sampler = RandomSampler(dataset, generator=generator)  # = shuffle=True; the seed fixes the order
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)


@dataclass
class PlainResult:
    """What a plain-loop training session did: steps of batch_size, seconds of training, logged losses."""

    steps: int
    batch_size: int
    seconds: float
    losses: list[float]

    @property
    def samples_per_s(self) -> float:
        """Training throughput of the timed loop."""
        return 0.0 if self.seconds <= 0 else self.steps * self.batch_size / self.seconds


def train_plain(model, optimizer, loader: DataLoader, device: torch.device, steps: int, log_interval: int = LOG_INTERVAL) -> PlainResult:
    """`steps` optimizer steps of the example's `train()` (new epochs as needed); times the loop only."""
    model.train()
    losses: list[float] = []
    done = 0
    start = time.perf_counter()
    while done < steps:
        for batch_idx, (data, target) in enumerate(loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % log_interval == 0:
                losses.append(loss.item())  # the example prints this
            done += 1
            if done == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PlainResult(done, loader.batch_size, time.perf_counter() - start, losses)


def build_plain(cfg: Config, input_shape, num_classes: int, device: torch.device):
    """The same model and optimizer normbench builds for `cfg`, from the same seed, in fp32."""
    from normbench.train.build import build_for_config
    from normbench.runtime import seed_everything

    seed_everything(cfg.seed)
    model = build_for_config(cfg, input_shape, num_classes).to(device)
    lr, wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
    if cfg.optimizer.name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optimizer.momentum, weight_decay=wd)
    elif cfg.optimizer.name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return model, optimizer


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """Float samples (synthetic data, about N(0, 1)) as uint8 pixels: 128 + 32·x, clamped."""
    return (x * 32.0 + 128.0).round().clamp(0, 255).to(torch.uint8)


def u8_stats(images: torch.Tensor) -> dict:
    """Per-channel mean and (unbiased) std of uint8 images (N, C, H, W) scaled to [0, 1], in float64,
    summed in chunks so no float copy of the whole split is made."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(4096):
        scaled = chunk.double() / 255.0
        total += scaled.sum(dim=(0, 2, 3))
        squares += scaled.square().sum(dim=(0, 2, 3))
    n = images.numel() // channels
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).sqrt()
    return {"mean": mean.tolist(), "std": std.tolist()}


@torch.no_grad()
def test_plain(model, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """The example's `test()`: (mean cross-entropy, accuracy) over the test loader in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        output = model(data)
        loss_sum += F.cross_entropy(output, target, reduction="sum").item()
        correct += output.argmax(dim=1).eq(target).sum().item()
    n = len(loader.dataset)
    return loss_sum / n, correct / n


def run_plain(cfg: Config, device: torch.device, data_dir=None) -> dict:
    """A whole run the example's way: per epoch train() then test(); cfg's budget, no files written."""
    from normbench.train.build import plan_steps

    train_set, test_set, _ = make_datasets(cfg, data_dir=data_dir)
    first = train_set[0][0]  # (C, H, W)
    model, optimizer = build_plain(cfg, tuple(first.shape), _num_classes(cfg), device)
    train_loader = make_loader(train_set, cfg.batch_size, device, order_seed=cfg.seed)
    test_loader = DataLoader(test_set, batch_size=cfg.eval_batch_size)
    steps_per_epoch, total, epochs = plan_steps(cfg, len(train_set))
    done, test_loss, test_acc = 0, float("nan"), float("nan")
    for _ in range(epochs):
        steps = min(steps_per_epoch, total - done)
        train_plain(model, optimizer, train_loader, device, steps)
        done += steps
        test_loss, test_acc = test_plain(model, test_loader, device)
    return {"steps": done, "test_loss": test_loss, "test_acc": test_acc}


def _num_classes(cfg: Config) -> int:
    return cfg.dataset.num_classes if cfg.dataset.name == "synthetic" else DATASETS[cfg.dataset.name].num_classes
