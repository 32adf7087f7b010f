"""The models normbench trains. Every norm layer comes from `norms.make_norm`.

`placement: pre` puts the norm between the linear/conv layer and its nonlinearity (the BN
paper's choice); `post` puts it after the nonlinearity (the Keras seed's order).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.models.resnet import build_resnet20
from normbench.norms import NORMS

# norms whose layers split channels into norm.groups groups (their registry options name `groups`)
GROUPED_NORMS = frozenset(name for name, spec in NORMS.items() if "groups" in spec.options.split(", "))

# (channels, dims, layer_name) -> norm module
NormFactory = Callable[[int, int, str], nn.Module]


def _block(
    index: int,
    layer: nn.Module,
    channels: int,
    dims: int,
    activation: nn.Module,
    norm_factory: NormFactory,
    placement: str,
) -> list[tuple[str, nn.Module]]:
    """layer -> norm -> activation (pre) or layer -> activation -> norm (post), named by index."""
    kind = "conv" if dims == 2 else "fc"
    norm = norm_factory(channels, dims, f"norm{index}")
    # weight_norm / spectral_norm (the slot is identity) and ws_group (the slot is group norm)
    # reparametrize the block's layer: its weight is computed from the original on each use
    if hasattr(norm, "wrap_layer"):
        layer = norm.wrap_layer(layer)
    parts = [(f"{kind}{index}", layer)]
    if placement == "pre":
        parts += [(f"norm{index}", norm), (f"act{index}", activation)]
    else:
        parts += [(f"act{index}", activation), (f"norm{index}", norm)]
    return parts


def build_cnn(input_shape: tuple[int, int, int], num_classes: int, norm_factory: NormFactory, placement: str):
    """conv3x3(32)-norm-ReLU-pool2, conv3x3(64)-norm-ReLU-pool2, fc(128)-norm-ReLU, fc(classes)."""
    in_channels, height, width = input_shape
    if height < 4 or width < 4:
        raise ConfigError(f"model cnn needs inputs of at least 4x4 pixels, got {height}x{width}")
    flat = 64 * (height // 2 // 2) * (width // 2 // 2)  # two 2x2 max-pools; 3x3 convs keep size (padding 1)
    layers = []
    layers += _block(1, nn.Conv2d(in_channels, 32, 3, padding=1), 32, 2, nn.ReLU(), norm_factory, placement)
    layers += [("pool1", nn.MaxPool2d(2))]  # (B, 32, H/2, W/2)
    layers += _block(2, nn.Conv2d(32, 64, 3, padding=1), 64, 2, nn.ReLU(), norm_factory, placement)
    layers += [("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten())]  # (B, 64 * H/4 * W/4)
    layers += _block(3, nn.Linear(flat, 128), 128, 1, nn.ReLU(), norm_factory, placement)
    layers += [("fc4", nn.Linear(128, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def build_mlp(input_shape: tuple[int, int, int], num_classes: int, norm_factory: NormFactory, placement: str):
    """The Keras seed: Dense 64 + ReLU, norm, Dense 64 + ReLU, norm, Dense classes."""
    flat = input_shape[0] * input_shape[1] * input_shape[2]
    layers = [("flatten", nn.Flatten())]
    layers += _block(1, nn.Linear(flat, 64), 64, 1, nn.ReLU(), norm_factory, placement)
    layers += _block(2, nn.Linear(64, 64), 64, 1, nn.ReLU(), norm_factory, placement)
    layers += [("fc3", nn.Linear(64, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def build_bn_mlp(input_shape: tuple[int, int, int], num_classes: int, norm_factory: NormFactory, placement: str):
    """The BN paper's MNIST net: 3 fully connected hidden layers of 100 sigmoid units."""
    flat = input_shape[0] * input_shape[1] * input_shape[2]
    layers = [("flatten", nn.Flatten())]
    width = flat
    for index in (1, 2, 3):
        layers += _block(index, nn.Linear(width, 100), 100, 1, nn.Sigmoid(), norm_factory, placement)
        width = 100
    layers += [("fc4", nn.Linear(100, num_classes))]
    return nn.Sequential(OrderedDict(layers))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "mlp": build_mlp,
    "bn_mlp": build_bn_mlp,
    "resnet20": build_resnet20,
}


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    norm_factory: NormFactory,
    placement: str = "pre",
) -> nn.Module:
    """Build model `name` for inputs of shape (C, H, W); unknown names list the valid ones."""
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    if placement not in ("pre", "post"):
        raise ConfigError(f"norm.placement must be pre or post, got '{placement}'")
    return MODELS[name](tuple(input_shape), num_classes, norm_factory, placement)


def norm_layers(model: nn.Module) -> list[dict]:
    """One dict per norm layer, for meta.json: layer, class, repr; with `type` and `channels` where
    `make_norm` built it, and `groups` and `channels_per_group` for norms that take `norm.groups`."""
    rows = []
    for name, module in model.named_modules():
        if name.startswith("norm") or ".norm" in name:
            row = {"layer": name, "class": type(module).__name__, "repr": repr(module)}
            norm_type, channels = getattr(module, "norm_type", None), getattr(module, "norm_channels", None)
            if norm_type is not None:
                row.update(type=norm_type, channels=channels)
                if norm_type in GROUPED_NORMS and hasattr(module, "num_groups"):
                    row.update(groups=module.num_groups, channels_per_group=channels // module.num_groups)
            rows.append(row)
    return rows
