"""Every norm x model builds, trains a step and evaluates, on 1x28x28 and 3x32x32 inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.config import validate
from normbench.models import MODELS, build_model
from normbench.norms import NORMS, make_norm
from normbench.train.build import build_for_config
from normbench.train.evaluate import evaluate

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("norm", list(NORMS))
def test_every_norm_and_model_trains_a_step_and_evaluates(norm, model, shape):
    torch.manual_seed(0)
    cfg = validate({"model": model, "norm": norm}, "t")
    net = build_for_config(cfg, shape, 10)
    x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    test_loss, test_acc = evaluate(net, x, y, batch_size=3)
    assert 0.0 <= test_acc <= 1.0 and test_loss > 0
    assert net.training  # evaluate restores the mode


def _layer_names(net: nn.Module) -> list[str]:
    return [name for name, _ in net.named_children()]


def test_cnn_layout_and_computed_flatten_size():
    factory = lambda c, d, name: make_norm("batch", c, d, layer=name)  # noqa: E731
    net = build_model("cnn", (3, 32, 32), 10, factory)
    assert _layer_names(net) == ["conv1", "norm1", "act1", "pool1", "conv2", "norm2", "act2", "pool2",
                                 "flatten", "fc3", "norm3", "act3", "fc4"]
    assert net.fc3.in_features == 64 * 8 * 8  # 32 -> 16 -> 8 after two pools
    assert isinstance(net.norm1, nn.BatchNorm2d) and isinstance(net.norm3, nn.BatchNorm1d)
    assert build_model("cnn", (1, 28, 28), 10, factory).fc3.in_features == 64 * 7 * 7
    assert build_model("cnn", (1, 12, 20), 10, factory).fc3.in_features == 64 * 3 * 5


def test_post_placement_moves_the_norm_after_the_activation():
    factory = lambda c, d, name: make_norm("layer", c, d, layer=name)  # noqa: E731
    net = build_model("mlp", (1, 28, 28), 10, factory, placement="post")
    assert _layer_names(net) == ["flatten", "fc1", "act1", "norm1", "fc2", "act2", "norm2", "fc3"]
    net = build_model("bn_mlp", (1, 28, 28), 10, factory, placement="pre")
    assert _layer_names(net)[:4] == ["flatten", "fc1", "norm1", "act1"]
    assert isinstance(net.act1, nn.Sigmoid) and net.fc1.out_features == 100 and net.fc4.in_features == 100


def test_no_norm_means_identity_layers():
    cfg = validate({"norm": "none"}, "t")
    net = build_for_config(cfg, (1, 28, 28), 10)
    assert all(isinstance(getattr(net, f"norm{i}"), nn.Identity) for i in (1, 2, 3))
