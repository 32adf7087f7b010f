"""Packed seeds: K seeds of one config trained as one model whose K blocks never interact.

`pack_models` turns K per-seed models (each built exactly as its separate run builds it) into
one `PackedModel` over inputs (B, K*C, H, W), seed k's batch in channel block k:

- Conv2d(C_in, C_out)      -> Conv2d(K*C_in, K*C_out, groups=K): seed k's filters see only block k;
- Linear(F_in, F_out)      -> PackedLinear: one batched matmul over (K, B, F_in) (no block-diagonal
                              dense matrix: its zero blocks would be K times the work, and 0 * NaN
                              would let one diverged seed poison the others);
- BatchNorm/InstanceNorm(C) -> the same class over K*C channels: statistics are per channel;
- GroupNorm(G, C)          -> GroupNorm(K*G, K*C): groups are contiguous channel blocks, so seed
                              k's groups are exactly groups k*G..(k+1)*G-1 of each sample row;
- LayerNorm(F)             -> GroupNorm(K, K*F): one group per seed = per sample over its F;
- ReLU, Sigmoid, MaxPool2d, Flatten, Identity: elementwise or per channel, unchanged (Flatten of
  (B, K*C, H, W) keeps each seed's (C, H, W) features contiguous and in its own order).

Any other layer is a ConfigError: packing must be exact or refused. The loss is the sum over
seeds of each seed's mean cross-entropy, so each seed's gradients are its separate run's; Adam,
AdamW and SGD (weight decay included) update each element on its own, so one optimizer over
the packed parameters is K optimizers.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from normbench.errors import ConfigError

PASS_THROUGH = (nn.ReLU, nn.Sigmoid, nn.MaxPool2d, nn.Flatten, nn.Identity)


class PackedLinear(nn.Module):
    """K independent linear layers on K feature blocks: (B, K*F_in) -> (B, K*F_out)."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))  # (K, F_out, F_in), as nn.Linear per seed
        self.bias = nn.Parameter(torch.empty(k, out_features)) if bias else None  # (K, F_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        xk = x.reshape(batch, self.k, self.in_features).transpose(0, 1)  # (K, B, F_in)
        wt = self.weight.transpose(1, 2)  # (K, F_in, F_out)
        out = torch.bmm(xk, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, wt)  # (K, B, F_out)
        return out.transpose(0, 1).reshape(batch, self.k * self.out_features)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedModel(nn.Module):
    """The packed body; forward maps (B, K*C, H, W) to per-seed logits (B, K, classes)."""

    def __init__(self, body: nn.Sequential, k: int):
        super().__init__()
        self.body, self.k = body, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, K*classes)
        return out.view(out.shape[0], self.k, -1)


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])


@torch.no_grad()
def _fill(target: nn.Module, sources: list[nn.Module], names=("weight", "bias", "running_mean", "running_var")) -> nn.Module:
    """Copy each named parameter/buffer of the K sources, concatenated along dim 0, into target."""
    for name in names:
        dest = getattr(target, name, None)
        values = [getattr(s, name, None) for s in sources]
        if dest is None and values[0] is None:
            continue
        if dest is None or values[0] is None:
            raise ConfigError(f"cannot pack {type(sources[0]).__name__}: '{name}' present in one layout only")
        dest.copy_(_cat(values))
    return target


def _pack_layer(name: str, layers: list[nn.Module]) -> nn.Module:
    """The packed equivalent of K same-shaped layers (one per seed), or a ConfigError."""
    first, k = layers[0], len(layers)
    kind = type(first)
    if any(type(m) is not kind for m in layers):
        raise ConfigError(f"cannot pack layer '{name}': the seeds' models differ in layer type")
    if kind in PASS_THROUGH:
        return copy.deepcopy(first)
    if kind is nn.Conv2d:
        packed = nn.Conv2d(
            k * first.in_channels, k * first.out_channels, first.kernel_size, stride=first.stride,
            padding=first.padding, dilation=first.dilation, groups=k * first.groups,
            bias=first.bias is not None, padding_mode=first.padding_mode,
        )
        return _fill(packed, layers, ("weight", "bias"))
    if kind is nn.Linear:
        packed = PackedLinear(k, first.in_features, first.out_features, bias=first.bias is not None)
        with torch.no_grad():
            packed.weight.copy_(torch.stack([m.weight for m in layers]))
            if first.bias is not None:
                packed.bias.copy_(torch.stack([m.bias for m in layers]))
        return packed
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d):
        packed = kind(k * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                      track_running_stats=first.track_running_stats)
        _fill(packed, layers)
        if first.track_running_stats:  # one counter: every seed has taken the same number of steps
            packed.num_batches_tracked.copy_(first.num_batches_tracked)
        return packed
    if kind is nn.GroupNorm:
        packed = nn.GroupNorm(k * first.num_groups, k * first.num_channels, eps=first.eps, affine=first.affine)
        return _fill(packed, layers, ("weight", "bias"))
    if kind is nn.LayerNorm and len(first.normalized_shape) == 1:
        features = first.normalized_shape[0]
        affine = first.elementwise_affine
        if affine and first.bias is None:
            raise ConfigError(f"cannot pack layer '{name}': LayerNorm without bias")
        packed = nn.GroupNorm(k, k * features, eps=first.eps, affine=affine)
        return _fill(packed, layers, ("weight", "bias"))
    raise ConfigError(f"pack is not supported with layer '{name}' ({kind.__name__}); set pack: 1")


def pack_models(models: list[nn.Module]) -> PackedModel:
    """One PackedModel computing what the K nn.Sequential models compute, seed k in block k."""
    if not models or not all(isinstance(m, nn.Sequential) for m in models):
        raise ConfigError("pack needs the models normbench builds (nn.Sequential); set pack: 1")
    names = list(models[0]._modules)
    if any(list(m._modules) != names for m in models):
        raise ConfigError("cannot pack: the seeds' models differ in their layers")
    body = OrderedDict((name, _pack_layer(name, [m._modules[name] for m in models])) for name in names)
    return PackedModel(nn.Sequential(body), len(models))


def pack_inputs(parts: list[torch.Tensor]) -> torch.Tensor:
    """K per-seed batches (B, C, ...) -> the packed input (B, K*C, ...)."""
    return torch.cat(parts, dim=1)


def per_seed_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, K, classes) against targets (B, K): (K,) means or sums over B."""
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, K)
    return losses.mean(0) if reduction == "mean" else losses.sum(0)


def unpack_state(packed: dict, template: dict, k: int, index: int) -> dict:
    """Seed `index`'s state_dict out of a K-seed PackedModel's state_dict. `template` is a
    state_dict of the seed's own model (its keys and shapes); each packed tensor holds the K seeds'
    tensors stacked (K, ...) or concatenated along dim 0, or one shared value (the step counter)."""
    state = {}
    for key, like in template.items():
        value = packed[f"body.{key}"].detach().cpu()
        if value.shape == like.shape:
            state[key] = value.clone()
        elif value.dim() == like.dim() + 1 and value.shape[0] == k:
            state[key] = value[index].clone()
        elif value.dim() == like.dim() and value.shape[0] == k * like.shape[0]:
            state[key] = value.chunk(k)[index].clone()
        else:
            raise ValueError(f"cannot unpack '{key}': packed {tuple(value.shape)} vs seed {tuple(like.shape)}")
    return state
