"""batch_renorm, frn, weight_norm and spectral_norm: against float64 definitions and torch, and
training end to end in the cnn and mlp models."""

import csv

import pytest
import torch
from torch import nn

from normbench.cli import app
from normbench.norms import NORMS, make_norm
from normbench.results import read_meta

from conftest import write_tiny_mnist

NEW = ["batch_renorm", "frn", "weight_norm", "spectral_norm"]


def renorm_float64(x, running_mean, running_var, r_max, d_max, eps=1e-5):
    """Batch renorm's training output from the paper's equations, in float64, r and d constant."""
    x = x.double()
    reduce = [d for d in range(x.dim()) if d != 1]
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = x.mean(dim=reduce), x.var(dim=reduce, unbiased=False)
    sigma_batch = torch.sqrt(var + eps)
    sigma = torch.sqrt(running_var.double() + eps)
    r = (sigma_batch / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mean - running_mean.double()) / sigma).clamp(-d_max, d_max).detach()
    return (x - mean.view(view)) / sigma_batch.view(view) * r.view(view) + d.view(view)


@pytest.mark.parametrize("dims, shape", [(1, (16, 5)), (2, (8, 5, 3, 3))])
def test_batch_renorm_is_batch_norm_during_warm_up(dims, shape):
    torch.manual_seed(0)
    ours = make_norm("batch_renorm", 5, dims=dims, renorm_warmup_steps=3)
    theirs = make_norm("batch", 5, dims=dims)
    for step in range(3):
        x = (torch.randn(shape) * (step + 2) + step).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        g = torch.randn(shape)
        out, expected = ours(x), theirs(x2)
        out.backward(g)
        expected.backward(g)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key])
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))  # inference: moving statistics, as batch norm


@pytest.mark.parametrize("dims, shape", [(1, (16, 5)), (2, (8, 5, 3, 3))])
def test_batch_renorm_after_relaxing_matches_the_paper_with_r_d_constant_in_backprop(dims, shape):
    torch.manual_seed(1)
    layer = make_norm("batch_renorm", 5, dims=dims, r_max=1.5, d_max=0.5, renorm_warmup_steps=0, renorm_relax_steps=0)
    with torch.no_grad():  # stale moving statistics, far from the batch's: r and d clip
        layer.running_mean.copy_(torch.tensor([-3.0, 0.0, 0.1, 2.0, 0.0]))
        layer.running_var.copy_(torch.tensor([0.1, 1.0, 1.2, 30.0, 4.0]))
        layer.num_batches_tracked.fill_(10)
    before_mean, before_var = layer.running_mean.clone(), layer.running_var.clone()
    x = (torch.randn(shape) * 2 + 0.5).requires_grad_(True)
    xd = x.detach().double().requires_grad_(True)
    g = torch.randn(shape)
    out = layer(x)
    out.backward(g)
    expected = renorm_float64(xd, before_mean, before_var, 1.5, 0.5)
    expected.backward(g.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)
    # r != 1 somewhere, or this test would not tell renorm from batch norm
    assert not torch.allclose(out.double(), renorm_float64(xd, before_mean, before_var, 1.0, 0.0))
    reduce = [d for d in range(x.dim()) if d != 1]
    torch.testing.assert_close(layer.running_mean, 0.9 * before_mean + 0.1 * x.detach().mean(dim=reduce))


def test_batch_renorm_schedule_warms_up_then_relaxes_linearly():
    layer = make_norm("batch_renorm", 2, r_max=3.0, d_max=5.0, renorm_warmup_steps=100, renorm_relax_steps=200)
    for step, (r, d) in {0: (1, 0), 100: (1, 0), 200: (2, 2.5), 300: (3, 5), 1000: (3, 5)}.items():
        layer.num_batches_tracked.fill_(step)
        r_max, d_max = layer.limits()
        assert (float(r_max), float(d_max)) == pytest.approx((r, d))


def test_batch_renorm_gradcheck_float64():
    torch.manual_seed(2)
    layer = make_norm("batch_renorm", 3, dims=1, renorm_warmup_steps=0, renorm_relax_steps=0).double()
    layer.momentum = 0.0  # keep the moving statistics still across gradcheck's calls
    # Backprop treats r and d as constants, which is the true derivative only where they are:
    # clipped (stale moving statistics far from the batch's), or during warm-up (r = 1, d = 0).
    with torch.no_grad():
        layer.running_var.fill_(1e-3)
        layer.running_mean.fill_(-50.0)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)
    warm = make_norm("batch_renorm", 3, dims=1, renorm_warmup_steps=10**6).double()
    warm.momentum = 0.0
    assert torch.autograd.gradcheck(warm, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dims, shape", [(1, (4, 6)), (2, (4, 6, 5, 5))])
def test_frn_matches_the_float64_definition_and_is_the_same_in_eval(dims, shape):
    torch.manual_seed(3)
    layer = make_norm("frn", 6, dims=dims, eps=1e-6)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        layer.tau.uniform_(-0.2, 0.2)
    x = torch.randn(shape) * 3
    xd = x.double()
    nu2 = xd.pow(2).mean(dim=(2, 3), keepdim=True) if dims == 2 else xd.pow(2)
    eps = 1e-6 + (abs(layer.eps_learned.item()) if dims == 1 else 0.0)  # learnable on features by default
    view = (1, -1) + (1,) * (len(shape) - 2)
    y = xd / torch.sqrt(nu2 + eps) * layer.weight.double().view(view) + layer.bias.double().view(view)
    expected = torch.maximum(y, layer.tau.double().view(view))
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert (layer.eps_learned is not None) == (dims == 1)
    x64 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer.double(), (x64,), eps=1e-6, atol=1e-5)


def test_weight_norm_and_spectral_norm_reparametrize_the_layer_and_leave_activations_alone(write_config):
    from normbench.config import validate
    from normbench.train.build import build_for_config

    from conftest import tiny_config

    for scheme in ("weight_norm", "spectral_norm"):
        cfg = validate(tiny_config(**{"norm.type": scheme}), "t")
        model = build_for_config(cfg, (1, 12, 12), 4)
        for name in ("conv1", "conv2", "fc3"):
            layer = getattr(model, name)
            assert nn.utils.parametrize.is_parametrized(layer, "weight"), name
            assert type(getattr(model, name.replace("conv", "norm").replace("fc", "norm"))).__name__ == "LayerReparam"
        assert not nn.utils.parametrize.is_parametrized(model.fc4)  # the classifier stays plain
        conv = model.conv2
        if scheme == "weight_norm":
            g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
            expected = g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            torch.testing.assert_close(conv.weight, expected)
        else:
            torch.manual_seed(0)
            model.train()
            with torch.no_grad():
                model(torch.randn(2, 1, 12, 12))
                for _ in range(200):  # one power iteration per weight computation in training mode
                    conv.weight
            original = conv.parametrizations.weight.original.detach().flatten(1)
            sigma_original = torch.linalg.matrix_norm(original, ord=2)
            torch.testing.assert_close(conv.weight.detach().flatten(1), original / sigma_original, rtol=1e-3, atol=1e-4)
            model.eval()
            w = conv.weight.detach().clone()
            model(torch.randn(4, 1, 12, 12))
            torch.testing.assert_close(conv.weight, w)  # eval: the estimate is frozen


def test_every_new_scheme_has_a_readme_row():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    for name in NEW:
        assert name in NORMS
        assert f"| `{name}` |" in readme, name


@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize("scheme", NEW)
def test_new_schemes_train_in_cnn_and_mlp(runner, write_config, tmp_path, scheme, model):
    # tiny MNIST-format data whose label is the brightest quadrant: learnable by every scheme
    data = write_tiny_mnist(tmp_path / "mnist", n_train=256, n_test=64)
    path = write_config(**{"norm.type": scheme, "model": model, "epochs": 3, "dataset": {"name": "mnist", "data_dir": str(data)},
                           "norm.renorm_warmup_steps": 10, "norm.renorm_relax_steps": 10})
    results = tmp_path / "results"
    result = runner.invoke(app, ["run", str(path), "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    run_dir = next((results / "runs").iterdir())
    meta = read_meta(run_dir)
    assert meta["status"] == "completed"
    with open(run_dir / "epochs.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in epochs]
    assert losses[-1] < losses[0]  # it learns
    assert float(epochs[-1]["test_acc"]) > 0.6  # 4 classes: chance is 0.25
