"""Each registered norm, 1-D and 2-D, against an independent float64 computation and PyTorch's modules."""

import pytest
import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.norms import NORMS, default_groups, get_spec, make_norm


def reference(name: str, x: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Normalized output (no affine) computed in float64 from the definitions, biased variance."""
    x = x.double()
    eps = 1e-5
    if name == "none":
        return x
    if x.dim() == 2:  # (N, F)
        if name == "batch":
            dims, view = (0,), x
        elif name in ("layer", "instance"):  # instance on features is the documented layer substitute
            dims, view = (1,), x
        elif name == "group":
            n, f = x.shape
            view, dims = x.view(n, groups, f // groups), (2,)
    else:  # (N, C, H, W)
        n, c, h, w = x.shape
        if name == "batch":
            dims, view = (0, 2, 3), x
        elif name == "layer":
            dims, view = (1, 2, 3), x
        elif name == "instance":
            dims, view = (2, 3), x
        elif name == "group":
            view, dims = x.view(n, groups, -1), (2,)
    mean = view.mean(dim=dims, keepdim=True)
    var = view.var(dim=dims, unbiased=False, keepdim=True)
    return ((view - mean) / torch.sqrt(var + eps)).view_as(x)


SHAPES = {1: (8, 64), 2: (6, 32, 5, 7)}


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", ["none", "batch", "layer", "group", "instance"])  # the rest: test_schemes.py
def test_train_mode_output_matches_float64_definition(name, dims):
    torch.manual_seed(0)
    x = torch.randn(SHAPES[dims]) * 3 + 1.5
    channels = x.shape[1]
    groups = 8 if name == "group" else None
    layer = make_norm(name, channels, dims=dims, groups=groups)
    layer.train()
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), reference(name, x, groups), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name, dims, torch_module",
    [
        ("batch", 1, lambda c: nn.BatchNorm1d(c)),
        ("batch", 2, lambda c: nn.BatchNorm2d(c)),
        ("group", 1, lambda c: nn.GroupNorm(8, c)),
        ("group", 2, lambda c: nn.GroupNorm(8, c)),
        ("layer", 1, lambda c: nn.LayerNorm(c)),
        ("layer", 2, lambda c: nn.GroupNorm(1, c)),
        ("instance", 2, lambda c: nn.InstanceNorm2d(c)),
        ("instance", 1, lambda c: nn.LayerNorm(c)),
    ],
)
def test_matches_pytorch_module_with_the_same_parameters_in_train_and_eval(name, dims, torch_module):
    torch.manual_seed(1)
    x = torch.randn(SHAPES[dims])
    ours = make_norm(name, x.shape[1], dims=dims, groups=8 if name == "group" else None)
    theirs = torch_module(x.shape[1])
    theirs.load_state_dict(ours.state_dict())
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        for _ in range(3):  # running statistics evolve identically
            torch.testing.assert_close(ours(x * 2 + 1), theirs(x * 2 + 1))
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_layer_on_maps_is_pytorch_layernorm_over_chw_without_affine():
    x = torch.randn(4, 6, 3, 3)
    ours = make_norm("layer", 6, dims=2, affine=False)
    torch.testing.assert_close(ours(x), nn.LayerNorm([6, 3, 3], elementwise_affine=False)(x))


def test_batch_norm_running_statistics_follow_momentum_and_unbiased_variance():
    torch.manual_seed(2)
    x = torch.randn(16, 3, 4, 4) * 2 + 5
    layer = make_norm("batch", 3, dims=2, momentum=0.3)
    layer.train()
    layer(x)
    batch_mean = x.double().mean(dim=(0, 2, 3))
    batch_var = x.double().var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean.double(), 0.3 * batch_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), 0.7 + 0.3 * batch_var, rtol=1e-5, atol=1e-6)
    layer.eval()  # eval mode normalizes with the running statistics, not the batch's
    expected = (x.double() - layer.running_mean.double().view(1, 3, 1, 1)) / torch.sqrt(
        layer.running_var.double().view(1, 3, 1, 1) + 1e-5
    )
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_options_are_honoured():
    layer = make_norm("batch", 4, dims=1, eps=1e-3, momentum=None, affine=False, track_running_stats=False)
    assert (layer.eps, layer.momentum, layer.affine, layer.track_running_stats) == (1e-3, None, False, False)
    inst = make_norm("instance", 4, dims=2)
    assert (inst.affine, inst.track_running_stats) == (False, False)  # PyTorch's InstanceNorm defaults
    inst = make_norm("instance", 4, dims=2, affine=True, track_running_stats=True)
    assert (inst.affine, inst.track_running_stats) == (True, True)
    assert make_norm("group", 64, dims=2, eps=1e-3).eps == 1e-3
    assert isinstance(make_norm("none", 4), nn.Identity)


@pytest.mark.parametrize(
    "channels, groups",
    [(32, 8), (64, 16), (16, 4), (6, 1), (4, 1), (128, 32), (48, 12), (100, 25), (96, 24), (8, 2), (7, 1), (1, 1), (256, 32)],
)
def test_default_groups_on_maps_is_the_largest_divisor_up_to_32_with_4_channels_per_group(channels, groups):
    assert default_groups(channels, dims=2) == groups
    assert make_norm("group", channels, dims=2).num_groups == groups


@pytest.mark.parametrize(
    "features, groups",
    [(128, 8), (64, 4), (256, 16), (512, 32), (1024, 32), (100, 5), (96, 6), (48, 3), (32, 2), (31, 1), (16, 1), (8, 1)],
)
def test_default_groups_on_vectors_is_the_largest_divisor_up_to_32_with_16_features_per_group(features, groups):
    assert default_groups(features, dims=1) == groups
    for name in ("group", "ws_group", "evonorm_s0"):
        assert make_norm(name, features, dims=1).num_groups == groups, name


def test_explicit_groups_override_the_default_even_at_one_channel_per_group():
    assert make_norm("group", 32, groups=32).num_groups == 32
    assert make_norm("ws_group", 32, groups=32).num_groups == 32
    assert make_norm("evonorm_s0", 32, dims=2, groups=2).num_groups == 2


def test_default_groups_apply_to_every_group_style_norm():
    for name in ("group", "ws_group", "evonorm_s0"):
        assert make_norm(name, 64, dims=2).num_groups == 16, name


def test_groups_not_dividing_channels_is_a_config_error_naming_the_layer():
    with pytest.raises(ConfigError, match="norm.groups=3 does not divide the 32 channels of layer 'conv9'.*1, 2, 4, 8, 16, 32"):
        make_norm("group", 32, groups=3, layer="conv9")


def test_unknown_norm_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown norm 'bn'; valid norms: none, batch, layer, group, instance"):
        get_spec("bn")


def test_only_norms_with_batch_statistics_are_batch_dependent():
    assert [n for n, s in NORMS.items() if s.batch_dependent] == ["batch", "batch_renorm", "ghost_batch", "evonorm_b0"]
