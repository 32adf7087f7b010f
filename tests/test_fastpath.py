"""The fast path's model rewrites compute exactly what the model as built computes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.train import fastpath
from normbench.config import validate
from normbench.train.build import build_for_config
from normbench.train.runner import run as run_config

from conftest import tiny_config


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _tie_heavy_input(n: int = 8, size: int = 12) -> torch.Tensor:
    """float64 images with many exact ties: a few distinct values, half of them negative."""
    torch.manual_seed(0)
    return torch.randint(-3, 3, (n, 1, size, size)).double()


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rewritten_cnn_gives_the_same_outputs_and_gradients(norm, channels_last):
    cfg = validate(tiny_config(**{"norm.type": norm}), "t")
    x, y = _tie_heavy_input(), torch.randint(0, 4, (8,))
    torch.manual_seed(1)
    built = build_for_config(cfg, (1, 12, 12), 4).double()
    fast = fastpath.prepare_model(build_for_config(cfg, (1, 12, 12), 4).double(), channels_last)
    fast.load_state_dict(built.state_dict())  # the rewrite keeps every parameter name
    assert [n for n, _ in fast.named_children()] != [n for n, _ in built.named_children()]
    xb = fastpath.to_channels_last(x) if channels_last else x
    (a, grads_a), (b, grads_b) = _outputs_and_grads(built, x, y), _outputs_and_grads(fast, xb, y)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-12, atol=1e-12, msg=name)


def test_pool_moves_before_relu_only_where_they_are_adjacent():
    pre = build_for_config(validate(tiny_config(), "t"), (1, 12, 12), 4)
    post = build_for_config(validate(tiny_config(**{"norm.placement": "post"}), "t"), (1, 12, 12), 4)
    assert fastpath.pool_before_relu(pre) == ["pool1 before act1", "pool2 before act2"]
    assert [n for n, _ in pre.named_children()][:5] == ["conv1", "norm1", "pool1", "act1", "conv2"]
    # post: conv -> ReLU -> norm -> pool; the norm between them is not monotone (gamma < 0 flips it)
    order = [n for n, _ in post.named_children()]
    assert fastpath.pool_before_relu(post) == [] and [n for n, _ in post.named_children()] == order


def test_the_swap_would_be_wrong_for_an_activation_that_is_not_monotone():
    """Why only ReLU moves: for a non-monotone function pool(f(x)) != f(pool(x))."""
    x = torch.tensor([[[[-3.0, 1.0], [0.5, 0.0]]]])
    assert torch.equal(F.max_pool2d(F.relu(x), 2), F.relu(F.max_pool2d(x, 2)))
    assert not torch.equal(F.max_pool2d(x.abs(), 2), F.max_pool2d(x, 2).abs())
    seq = nn.Sequential(nn.Tanh(), nn.MaxPool2d(2), nn.GELU(), nn.MaxPool2d(2))
    assert fastpath.pool_before_relu(seq) == [] and [type(m) for m in seq] == [nn.Tanh, nn.MaxPool2d, nn.GELU, nn.MaxPool2d]


def test_channels_last_flatten_hands_backward_a_channels_last_gradient():
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    flat = fastpath.ChannelsLastFlatten()(x)
    assert torch.equal(flat, x.detach().flatten(1))  # (C, H, W) order, as nn.Flatten
    flat.backward(torch.arange(flat.numel(), dtype=torch.float32).view_as(flat))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.grad, torch.arange(flat.numel(), dtype=torch.float32).view(4, 8, 6, 6))
    assert torch.equal(nn.Flatten()(x), flat)


def test_the_run_records_its_rewrites_and_the_probe_keeps_the_built_order(tmp_path):
    outcome = run_config(validate(tiny_config(), "t"), tmp_path / "fast")
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    assert meta["fast_path_rewrites"] == [
        "flatten keeps a channels_last gradient",
        "batch norm + max-pool + ReLU in one CPU kernel: norm1+pool1+act1, norm2+pool2+act2"]
    probed = validate(tiny_config(probe={"layer": "act1", "every": 2}), "t")
    outcome = run_config(probed, tmp_path / "probe")
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    assert meta["fast_path_rewrites"] == ["flatten keeps a channels_last gradient"]


def test_the_packed_model_gets_the_same_rewrites():
    from normbench.models.packed import pack_models

    cfg = validate(tiny_config(), "t")
    packed = pack_models([build_for_config(cfg, (1, 12, 12), 4) for _ in range(2)])
    packed = fastpath.prepare_model(packed, channels_last=True, fuse=False)
    assert fastpath.rewrites(packed) == [
        "flatten keeps a channels_last gradient", "max-pool before ReLU (exact): pool1 before act1, pool2 before act2"]
    fastpath.fuse_norm_pool_relu(packed)
    assert fastpath.rewrites(packed)[1] == "batch norm + max-pool + ReLU in one CPU kernel: norm1+pool1+act1, norm2+pool2+act2"
