"""The processes a run trains in. `LocalWorld` is one process; `distributed.DistContext` is one
rank of a data-parallel run. Both offer the same methods, so the training loop never asks which
one it has."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class LocalWorld:
    """A run in this one process: every batch is this process's, every sum is already global."""

    rank = 0
    world_size = 1
    is_main = True
    data_parallel = False

    def __init__(self, device: torch.device):
        self.device = device

    def meta(self, batch_size: int) -> dict:
        """What meta.json records about the process layout."""
        return {"world_size": 1}

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch index: all of it."""
        return index

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the step calls: the model itself."""
        return model

    def reduce(self, tensor: torch.Tensor, mean: bool = False) -> list:
        """The tensor's values as a list (the one host sync of a logged step)."""
        return tensor.tolist()

    def evaluate(self, model: nn.Module, evaluate: Callable, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """evaluate(x, y) -> (mean loss, accuracy) of `model` over all of x."""
        return evaluate(x, y)
