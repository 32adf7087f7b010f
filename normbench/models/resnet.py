"""ResNet-20, He et al. 2016's CIFAR ResNet (Section 4.2): a 3x3 conv of 16 channels, three stages
of three basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 halves the map with
stride 2), global average pooling and one linear layer: 1 + 3*3*2 + 1 = 20 weighted layers.

A norm slot follows every conv, the shortcut's 1x1 conv included where the shortcut changes shape
(the paper's option B; CIFAR's option A pads with zeros instead, which has no norm to compare).
Norm layers are named `norm1`, `stageS.B.norm1`, `stageS.B.norm2` and `stageS.B.shortcut.norm`,
so `normbench.models.norm_layers` finds them all.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import nn

from normbench.errors import ConfigError

STAGE_CHANNELS = (16, 32, 64)
BLOCKS_PER_STAGE = 3
MIN_PIXELS = 8  # stage 3 sees H/4 x W/4; instance norm needs more than one pixel per map


def conv_with_norm(in_channels: int, out_channels: int, kernel: int, stride: int,
                   norm_factory: Callable[[int, int, str], nn.Module], norm_name: str) -> tuple[nn.Module, nn.Module]:
    """(conv, its norm slot): He-initialized, bias-free unless the slot leaves activations unnormalized
    (identity: none, weight_norm, spectral_norm), weight-reparametrized where the norm says so."""
    norm = norm_factory(out_channels, 2, norm_name)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                     bias=isinstance(norm, nn.Identity))  # a norm's beta makes a conv bias redundant
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # before any reparametrization
    if hasattr(norm, "wrap_layer"):
        conv = norm.wrap_layer(conv)
    return conv, norm


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU (He et al. 2016, Figure 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_factory, name: str):
        super().__init__()
        self.conv1, self.norm1 = conv_with_norm(in_channels, out_channels, 3, stride, norm_factory, f"{name}.norm1")
        self.act1 = nn.ReLU()
        self.conv2, self.norm2 = conv_with_norm(out_channels, out_channels, 3, 1, norm_factory, f"{name}.norm2")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # projection: 1x1 conv with stride, then its norm
            conv, norm = conv_with_norm(in_channels, out_channels, 1, stride, norm_factory, f"{name}.shortcut.norm")
            self.shortcut = nn.Sequential(OrderedDict([("conv", conv), ("norm", norm)]))
        self.act2 = nn.ReLU()

    def forward(self, x):
        out = self.act1(self.norm1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def build_resnet20(input_shape: tuple[int, int, int], num_classes: int, norm_factory, placement: str) -> nn.Module:
    """He et al. 2016's CIFAR ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels), a norm after every conv."""
    in_channels, height, width = input_shape
    if placement != "pre":
        raise ConfigError("model resnet20 places each norm between its conv and the residual sum or ReLU, as He et al. "
                          "2016 do; norm.placement post is for cnn, mlp and bn_mlp (set norm.placement: pre)")
    if height < MIN_PIXELS or width < MIN_PIXELS:
        raise ConfigError(f"model resnet20 needs inputs of at least {MIN_PIXELS}x{MIN_PIXELS} pixels, got {height}x{width}")
    conv1, norm1 = conv_with_norm(in_channels, STAGE_CHANNELS[0], 3, 1, norm_factory, "norm1")
    layers = [("conv1", conv1), ("norm1", norm1), ("act1", nn.ReLU())]  # (B, 16, H, W)
    channels = STAGE_CHANNELS[0]
    for stage, out_channels in enumerate(STAGE_CHANNELS, start=1):
        blocks = []
        for index in range(BLOCKS_PER_STAGE):
            stride = 2 if stage > 1 and index == 0 else 1
            blocks.append((str(index), BasicBlock(channels, out_channels, stride, norm_factory, f"stage{stage}.{index}")))
            channels = out_channels
        layers.append((f"stage{stage}", nn.Sequential(OrderedDict(blocks))))  # (B, C_s, H/2^(s-1), W/2^(s-1))
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, num_classes))]
    return nn.Sequential(OrderedDict(layers))
