"""The fused group-norm + max-pool + ReLU CPU kernel against PyTorch's modules: nn.GroupNorm (group
norm, and normbench's layer norm on maps: GroupNorm(1, C)) and nn.InstanceNorm2d, each followed by
F.max_pool2d(2) and F.relu."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.config import validate
from normbench.kernels import fused_bn_pool, fused_gn_pool
from normbench.kernels.fused_gn_pool import GroupNormMaxPoolReLU, InstanceNormMaxPoolReLU
from normbench.norms import make_norm
from normbench.train import fastpath
from normbench.train.build import build_for_config

from conftest import tiny_config
from test_fused_bn_pool import sgd_losses

CL = torch.channels_last
# float32: PyTorch and the kernel round differently at the last bit; bfloat16: one bf16 unit
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
SUM_TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _affine(norm: nn.Module, seed: int = 0) -> nn.Module:
    """`norm` with non-trivial affine parameters (negative scales flip which element is the max)."""
    torch.manual_seed(seed)
    if getattr(norm, "weight", None) is not None:
        with torch.no_grad():
            norm.weight.uniform_(-1.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return norm


def _reference(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.max_pool2d(norm(x), 2))


def _compare(norm: nn.Module, x0: torch.Tensor, dtype) -> None:
    """Values and input/weight/bias gradients of the fused copy of `norm` against norm -> pool -> ReLU."""
    fused = fused_gn_pool.fuse(copy.deepcopy(norm))
    xa = x0.to(dtype).contiguous(memory_format=CL).requires_grad_()
    xb = xa.detach().clone().contiguous(memory_format=CL).requires_grad_()
    assert fused._uses_kernel(xb)
    ya, yb = _reference(norm, xa), fused(xb)
    assert yb.dtype == ya.dtype and yb.is_contiguous(memory_format=CL)
    torch.testing.assert_close(yb, ya, **TOLERANCE[dtype])
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xb.grad, xa.grad, **TOLERANCE[dtype])
    if norm.weight is not None:
        torch.testing.assert_close(fused.weight.grad, norm.weight.grad, **SUM_TOLERANCE[dtype])
        torch.testing.assert_close(fused.bias.grad, norm.bias.grad, **SUM_TOLERANCE[dtype])


DTYPES = [torch.float32, torch.bfloat16]
# (N, C, H, W): odd H/W (the pool drops a row and a column), batch 1, C not a multiple of 8 or 16
SHAPES = [(8, 6, 10, 14), (4, 6, 7, 9), (1, 6, 5, 5), (3, 18, 6, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups", ["one", "half", "all"])  # groups of C, 2 and 1 channels
def test_group_norm_values_and_gradients_match_pytorch(dtype, shape, groups):
    channels = shape[1]
    num_groups = {"one": 1, "half": channels // 2, "all": channels}[groups]
    torch.manual_seed(1)
    _compare(_affine(nn.GroupNorm(num_groups, channels)), torch.randn(shape) * 3 + 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_values_and_gradients_match_pytorch(dtype, shape, affine):
    torch.manual_seed(2)
    _compare(_affine(nn.InstanceNorm2d(shape[1], affine=affine)), torch.randn(shape) * 2 - 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", ["layer", "group", "instance"])
def test_normbenchs_layer_group_and_instance_norms_on_maps_are_fused_and_match(dtype, norm_type):
    norm = _affine(make_norm(norm_type, 16, dims=2, layer="norm1"))
    assert fused_gn_pool.fuse(norm) is not None
    torch.manual_seed(3)
    _compare(norm, torch.randn(4, 16, 9, 8) * 2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_groups", [1, 2, 4])
def test_ties_resolve_as_pytorch_resolves_them(dtype, num_groups):
    """Integer-valued inputs: many windows hold equal maxima; the gradient must go where PyTorch's
    max-pool sends it (the first maximum in row-major order)."""
    torch.manual_seed(4)
    _compare(_affine(nn.GroupNorm(num_groups, 4)), torch.randint(-2, 3, (6, 4, 8, 8)).float(), dtype)


def test_a_float64_reference_agrees():
    """The kernel's float32 result is as close to a float64 computation as PyTorch's float32 is."""
    norm = _affine(nn.GroupNorm(3, 12))
    torch.manual_seed(5)
    x = torch.randn(5, 12, 11, 10) * 4 + 2
    fused = fused_gn_pool.fuse(copy.deepcopy(norm))
    exact = _reference(copy.deepcopy(norm).double(), x.double())
    ours = fused(x.contiguous(memory_format=CL))
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-6)


def test_other_inputs_take_pytorchs_own_path():
    norm = _affine(nn.GroupNorm(2, 6))
    fused = fused_gn_pool.fuse(copy.deepcopy(norm))
    x = torch.randn(4, 6, 8, 8)
    for other in (x, x.double().contiguous(memory_format=CL), x[:, :, :1].contiguous(memory_format=CL)):
        assert not fused._uses_kernel(other)
    assert torch.equal(fused(x), _reference(norm, x))  # contiguous: PyTorch's functions, bit for bit
    assert fused_gn_pool.fuse(nn.InstanceNorm2d(6, track_running_stats=True)) is None
    assert fused_gn_pool.fuse(nn.BatchNorm2d(6)) is None and fused_gn_pool.fuse(nn.LayerNorm(6)) is None


def test_the_fused_modules_keep_class_parameters_and_state_dict():
    gn, inorm = _affine(nn.GroupNorm(2, 6)), _affine(nn.InstanceNorm2d(6, affine=True))
    fused_gn, fused_in = fused_gn_pool.fuse(gn), fused_gn_pool.fuse(inorm)
    assert isinstance(fused_gn, nn.GroupNorm) and isinstance(fused_in, nn.InstanceNorm2d)
    assert isinstance(fused_gn, GroupNormMaxPoolReLU) and isinstance(fused_in, InstanceNormMaxPoolReLU)
    for built, fused in ((gn, fused_gn), (inorm, fused_in)):
        assert built.state_dict().keys() == fused.state_dict().keys()
        for key, value in built.state_dict().items():
            assert torch.equal(fused.state_dict()[key], value)


@pytest.mark.parametrize("norm_type", ["group", "layer", "instance"])
def test_a_run_with_the_kernel_trains_like_one_without(norm_type):
    """The CNN on CPU in fp32: ten SGD steps with and without the kernel give the same losses."""
    cfg = validate(tiny_config(**{"norm.type": norm_type}), "t")
    fused_class = InstanceNormMaxPoolReLU if norm_type == "instance" else GroupNormMaxPoolReLU
    fused = sgd_losses(cfg, True, fused_class)
    assert fused == pytest.approx(sgd_losses(cfg, False, fused_class), rel=1e-4)


def test_the_run_records_the_fused_norm(tmp_path):
    from normbench.train.runner import run as run_config

    outcome = run_config(validate(tiny_config(**{"norm.type": "group", "epochs": 1}), "t"), tmp_path)
    meta = json.loads((outcome.run_dir / "meta.json").read_text())
    assert "group norm + max-pool + ReLU in one CPU kernel: norm1+pool1+act1, norm2+pool2+act2" in meta["fast_path_rewrites"]


def test_without_a_compiler_the_model_stays_as_built_and_says_why(monkeypatch):
    monkeypatch.setattr(fused_bn_pool, "kernel_error", lambda: "no C++ compiler found")
    cfg = validate(tiny_config(**{"norm.type": "instance"}), "t")
    model = fastpath.prepare_model(build_for_config(cfg, (1, 12, 12), 4), channels_last=True)
    assert not any(isinstance(m, InstanceNormMaxPoolReLU) for m in model.modules())
    assert fastpath.rewrites(model)[-1] == (
        "instance norm + max-pool + ReLU not fused: the CPU kernel cannot be built here (no C++ compiler found)")
