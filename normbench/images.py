"""Image splits: scaling and per-channel standardization, and uint8 storage normalized per batch.

`normalize_u8` turns uint8 pixels into float32 `(x / 255 - mean) / std` with the training split's
per-channel statistics. `U8Images` keeps the pixels as uint8 and applies the same operations to
each gathered batch: every element goes through the same float32 ops (divide, subtract, divide,
each rounded once), so a batch equals the slice of the whole normalized split bit for bit, at a
quarter of the memory.
"""

from __future__ import annotations

import torch


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased std of x (N, C, H, W) in float64, a chunk of samples at a time
    (a float64 copy of a whole split would double the peak memory of loading it)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.split(4096):
        total += chunk.double().sum(dim=(0, 2, 3))
    n = x.numel() // x.shape[1]
    mean = total / n
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):  # two passes: sum of squared deviations, no cancellation
        squares += (chunk.double() - mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3))
    return mean, (squares / (n - 1)).sqrt()


def scale_u8(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1]: x / 255 (a new tensor, same memory format)."""
    return images_u8.float().div_(255.0)


def standardize_(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x -= mean; x /= std in place, per channel (mean, std: float32 (1, C, 1, 1))."""
    return x.sub_(mean).div_(std)


def stat_tensors(stats: dict, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`normalize_u8`'s statistics as float32 (1, C, 1, 1) tensors on `device`."""
    mean = torch.tensor(stats["mean"], dtype=torch.float64).float().view(1, -1, 1, 1)
    std = torch.tensor(stats["std"], dtype=torch.float64).float().view(1, -1, 1, 1)
    return mean.to(device), std.to(device)


def normalize_u8(train_u8: torch.Tensor, test_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Scale to [0, 1], then standardize each channel with the training split's mean and std (in place:
    one float32 copy of each split at the peak)."""
    train = scale_u8(train_u8)
    mean, std = channel_stats(train)  # (C,) float64
    stats = {"mean": mean.tolist(), "std": std.tolist()}
    m, s = stat_tensors(stats)
    return standardize_(train, m, s), standardize_(scale_u8(test_u8), m, s), stats


def normalize_like(images_u8: torch.Tensor, stats: dict) -> torch.Tensor:
    """uint8 images scaled and standardized with `normalize_u8`'s statistics, by the same operations."""
    return standardize_(scale_u8(images_u8), *stat_tensors(stats, images_u8.device))


class U8Images:
    """A (N, C, H, W) image split kept as uint8 pixels; indexing it returns normalized float32 batches
    equal, bit for bit, to indexing the split normalized whole by `normalize_u8`."""

    def __init__(self, pixels: torch.Tensor, stats: dict):
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(f"U8Images needs (N, C, H, W) uint8 pixels, got {tuple(pixels.shape)} {pixels.dtype}")
        self.pixels = pixels
        self.stats = stats
        self.mean, self.std = stat_tensors(stats, pixels.device)

    def __getitem__(self, index) -> torch.Tensor:
        return standardize_(scale_u8(self.pixels[index]), self.mean, self.std)

    def __len__(self) -> int:
        return len(self.pixels)

    def __repr__(self) -> str:
        return f"U8Images({tuple(self.pixels.shape)}, device={self.device})"

    @property
    def shape(self) -> torch.Size:
        return self.pixels.shape

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the batches it gives (float32); the storage is uint8."""
        return torch.float32

    def dim(self) -> int:
        return 4

    def to(self, device) -> U8Images:
        return U8Images(self.pixels.to(device), self.stats)

    def contiguous(self, memory_format=torch.contiguous_format) -> U8Images:
        """The pixels stored in `memory_format`; gathered batches keep it."""
        return U8Images(self.pixels.contiguous(memory_format=memory_format), self.stats)

    def normalized(self) -> torch.Tensor:
        """The whole split as one normalized float32 tensor."""
        return self[:]
