"""The fused batch-norm + max-pool + ReLU CPU kernel against PyTorch's three modules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.train import fastpath
from normbench.kernels import fused_bn_pool
from normbench.config import validate
from normbench.kernels.fused_bn_pool import BatchNormMaxPoolReLU
from normbench.train.build import build_for_config

from conftest import tiny_config

CL = torch.channels_last
# float32: PyTorch and the kernel round differently at the last bit; bfloat16: one bf16 unit
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
SUM_TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _pair(affine: bool = True, momentum: float | None = 0.1, channels: int = 6, seed: int = 0):
    """A BatchNorm2d with non-trivial affine parameters and its fused copy."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(-1.5, 1.5)  # negative scales flip which element is the window's max
            bn.bias.uniform_(-0.5, 0.5)
    return bn, BatchNormMaxPoolReLU.from_batch_norm(copy.deepcopy(bn))


def _reference(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.max_pool2d(bn(x), 2))


def _compare_steps(bn, fused, inputs, dtype):
    for x0 in inputs:
        xa = x0.to(dtype).contiguous(memory_format=CL).requires_grad_()
        xb = xa.detach().clone().contiguous(memory_format=CL).requires_grad_()
        ya, yb = _reference(bn, xa), fused(xb)
        assert fused._uses_kernel(xb)
        torch.testing.assert_close(yb, ya, **TOLERANCE[dtype])
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(xb.grad, xa.grad, **TOLERANCE[dtype])
    if bn.affine:
        torch.testing.assert_close(fused.weight.grad, bn.weight.grad, **SUM_TOLERANCE[dtype])
        torch.testing.assert_close(fused.bias.grad, bn.bias.grad, **SUM_TOLERANCE[dtype])
    torch.testing.assert_close(fused.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(fused.num_batches_tracked) == int(bn.num_batches_tracked) == len(inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 6, 10, 14), (4, 6, 7, 9)])  # 7x9: the pool drops a row and a column
@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, 0.1), (True, None)])
def test_values_gradients_and_running_statistics_match_pytorch(dtype, shape, affine, momentum):
    bn, fused = _pair(affine, momentum, channels=shape[1])
    torch.manual_seed(1)
    inputs = [torch.randn(shape) * 3 + 1 for _ in range(3)]
    _compare_steps(bn, fused, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_resolve_as_pytorch_resolves_them(dtype):
    """Integer-valued inputs: many windows hold equal maxima; the gradient must go where PyTorch's
    max-pool sends it (the first maximum in row-major order)."""
    bn, fused = _pair(channels=4)
    torch.manual_seed(2)
    _compare_steps(bn, fused, [torch.randint(-2, 3, (6, 4, 8, 8)).float()], dtype)


def test_eval_mode_and_other_inputs_take_pytorchs_own_path():
    bn, fused = _pair()
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=CL)
    bn.train()(x)
    fused.train()(x)
    bn.eval()
    fused.eval()
    assert not fused._uses_kernel(x)
    assert torch.equal(fused(x), _reference(bn, x))  # running statistics: PyTorch's functions
    fused.train()
    for other in (x.contiguous(), x.double().contiguous(memory_format=CL)):
        assert not fused._uses_kernel(other)


def test_batch_statistics_without_update_as_the_diagnostics_ask():
    """diagnostics.batch_statistics: train mode with track_running_stats off, nothing updated."""
    bn, fused = _pair()
    for module in (bn, fused):
        module.track_running_stats = False
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=CL)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    assert fused._uses_kernel(x)
    torch.testing.assert_close(fused(x), _reference(bn, x), **TOLERANCE[torch.float32])
    for key, value in fused.state_dict().items():
        assert torch.equal(value, before[key]), key


def sgd_losses(cfg, fuse: bool, fused_class, steps: int = 10) -> list[float]:
    """The losses of `steps` SGD steps of the CNN of cfg on fixed random data, with or without the
    fused kernels (asserting that the model holds a `fused_class` module exactly when fused)."""
    torch.manual_seed(3)
    x = torch.randn(8 * steps, 1, 12, 12).contiguous(memory_format=CL)
    y = torch.randint(0, 4, (8 * steps,))
    torch.manual_seed(4)
    model = fastpath.prepare_model(build_for_config(cfg, (1, 12, 12), 4), channels_last=True, fuse=fuse)
    assert any(isinstance(m, fused_class) for m in model.modules()) is fuse
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(steps):
        loss = F.cross_entropy(model(x[step * 8 : (step + 1) * 8]), y[step * 8 : (step + 1) * 8])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_run_with_the_kernel_trains_like_one_without():
    """The CNN on CPU in fp32: ten steps with and without the kernel give the same losses."""
    cfg = validate(tiny_config(), "t")
    fused = sgd_losses(cfg, True, BatchNormMaxPoolReLU)
    assert fused == pytest.approx(sgd_losses(cfg, False, BatchNormMaxPoolReLU), rel=1e-4)


def test_without_a_compiler_the_model_stays_as_built_and_says_why(monkeypatch):
    monkeypatch.setattr(fused_bn_pool, "kernel_error", lambda: "no C++ compiler found")
    cfg = validate(tiny_config(), "t")
    model = fastpath.prepare_model(build_for_config(cfg, (1, 12, 12), 4), channels_last=True)
    assert not any(isinstance(m, BatchNormMaxPoolReLU) for m in model.modules())
    assert fastpath.rewrites(model)[-1] == (
        "batch norm + max-pool + ReLU not fused: the CPU kernel cannot be built here (no C++ compiler found)")


def test_only_pytorchs_norms_with_a_plain_2x2_pool_and_relu_are_fused():
    pool, relu = nn.MaxPool2d(2), nn.ReLU()
    assert fused_bn_pool.pool_and_relu(pool, relu)
    for other in (nn.MaxPool2d(3), nn.MaxPool2d(2, stride=1), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                  nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2, return_indices=True)):
        assert not fused_bn_pool.pool_and_relu(other, relu), other
    assert not fused_bn_pool.pool_and_relu(pool, nn.Sigmoid())
    assert isinstance(fastpath.fused_copy(nn.BatchNorm2d(4)), BatchNormMaxPoolReLU)
    assert fastpath.fused_copy(nn.GroupNorm(2, 4)) is not None
    assert fastpath.fused_copy(nn.InstanceNorm2d(4)) is not None
    for uncovered in (nn.BatchNorm1d(4), nn.SyncBatchNorm(4), nn.InstanceNorm2d(4, track_running_stats=True), nn.Identity()):
        assert fastpath.fused_copy(uncovered) is None, uncovered
