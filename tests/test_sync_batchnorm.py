"""Cross-process batch norm, checked against nn.BatchNorm in float64.

Two processes (gloo on CPU) with `sync: true` must give what one process gives on the
concatenated batch: outputs, input gradients, gamma/beta gradients (summed over ranks, as DDP
does up to its 1/N) and running statistics.
"""

import pytest
import torch
from torch import nn

from normbench.train import distributed
from normbench.norms.sync_batchnorm import AllReduceBatchNorm

TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64

# (name, global input shape, layer options)
CASES = [
    ("maps", (8, 3, 5, 4), {}),
    ("features", (10, 6), {}),
    ("cumulative", (8, 3, 5, 4), {"momentum": None}),
    ("no-affine", (6, 4, 3, 3), {"affine": False}),
]


def reference_bn(shape, options) -> nn.Module:
    cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    return cls(shape[1], **options).double()


def case_tensors(shape, seed):
    """Input (shifted and scaled, so the statistics matter), upstream gradient, gamma, beta."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)  # loss = sum(y * upstream)
    gamma = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(shape[1], generator=g, dtype=torch.float64)
    return x, upstream, gamma, beta


def steps(layer: nn.Module, shape, seed, shard=slice(None), n_steps=3):
    """Train-mode steps on (a shard of) fresh batches, then one eval step; what the test compares."""
    out = []
    if layer.affine:
        with torch.no_grad():
            _, _, gamma, beta = case_tensors(shape, seed)
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
    for step in range(n_steps):
        x, upstream, _, _ = case_tensors(shape, seed + 1 + step)
        x = x[shard].clone().requires_grad_(True)
        layer.train()
        layer.zero_grad()
        y = layer(x)
        (y * upstream[shard]).sum().backward()
        out.append({
            "y": y.detach(), "grad_x": x.grad,
            "grad_weight": layer.weight.grad.clone() if layer.affine else None,
            "grad_bias": layer.bias.grad.clone() if layer.affine else None,
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "batches": int(layer.num_batches_tracked),
        })
    layer.eval()
    x, _, _, _ = case_tensors(shape, seed + 100)
    out.append({"eval_y": layer(x[shard]).detach()})
    return out


def sync_bn_worker(ctx, cases):
    """Each rank runs every case on its contiguous half of the global batch."""
    results = {}
    for name, shape, options in cases:
        per = shape[0] // ctx.world_size
        shard = slice(ctx.rank * per, (ctx.rank + 1) * per)
        layer = AllReduceBatchNorm(shape[1], **options).double()
        results[name] = steps(layer, shape, seed=len(name), shard=shard)
    return results


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, **TIGHT)


@pytest.mark.parametrize("name, shape, options", CASES)
def test_one_process_equals_plain_batch_norm(name, shape, options):
    ours = steps(AllReduceBatchNorm(shape[1], **options).double(), shape, seed=len(name))
    ref = steps(reference_bn(shape, options), shape, seed=len(name))
    for mine, theirs in zip(ours, ref):
        assert mine.keys() == theirs.keys()
        for key in mine:
            if mine[key] is None or isinstance(mine[key], int):
                assert mine[key] == theirs[key]
            else:
                assert_close(mine[key], theirs[key])


def test_one_process_float32_and_autocast_match_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(16, 8, 6, 6) * 2 + 1
    ours, ref = AllReduceBatchNorm(8), nn.BatchNorm2d(8)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_rejects_one_value_per_channel_like_batch_norm():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        AllReduceBatchNorm(3)(torch.randn(1, 3))


def test_two_processes_equal_one_process_on_the_concatenated_batch():
    reports = distributed.spawn(sync_bn_worker, 2, (CASES,))
    assert all(r.ok for r in reports), distributed.describe_failures(reports)
    for name, shape, options in CASES:
        ref = steps(reference_bn(shape, options), shape, seed=len(name))
        rank0, rank1 = reports[0].value[name], reports[1].value[name]
        for mine0, mine1, theirs in zip(rank0[:-1], rank1[:-1], ref[:-1]):
            assert_close(torch.cat([mine0["y"], mine1["y"]]), theirs["y"])
            assert_close(torch.cat([mine0["grad_x"], mine1["grad_x"]]), theirs["grad_x"])
            if options.get("affine", True):
                # Each rank holds its shard's share; DDP sums them (and divides by N).
                assert_close(mine0["grad_weight"] + mine1["grad_weight"], theirs["grad_weight"])
                assert_close(mine0["grad_bias"] + mine1["grad_bias"], theirs["grad_bias"])
            for mine in (mine0, mine1):
                assert_close(mine["running_mean"], theirs["running_mean"])
                assert_close(mine["running_var"], theirs["running_var"])
                assert mine["batches"] == theirs["batches"]
        # Eval uses the running statistics, so each shard's output is that rows of the reference.
        assert_close(torch.cat([rank0[-1]["eval_y"], rank1[-1]["eval_y"]]), ref[-1]["eval_y"])


def test_shard_statistics_differ_from_global_ones():
    # The check above can fail: batch norm on one shard is not batch norm on the whole batch.
    name, shape, options = CASES[0]
    whole = steps(reference_bn(shape, options), shape, seed=len(name), n_steps=1)
    half = steps(reference_bn(shape, options), shape, seed=len(name), shard=slice(0, shape[0] // 2), n_steps=1)
    assert not torch.allclose(half[0]["y"], whole[0]["y"][: shape[0] // 2])


@pytest.mark.gpu
def test_one_process_on_cuda_equals_plain_batch_norm():
    name, shape, options = CASES[0]
    ours = AllReduceBatchNorm(shape[1], **options).double().cuda()
    ref = reference_bn(shape, options).cuda()
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1.5).cuda().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(shape, dtype=torch.float64).cuda()
    (ours(x) * upstream).sum().backward()
    (ref(x_ref) * upstream).sum().backward()
    assert_close(x.grad, x_ref.grad)
    assert_close(ours.running_var, ref.running_var)
    assert_close(ours.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_float32_statistics_survive_a_large_mean(offset):
    """A channel whose mean is far larger than its spread: one-pass E[x^2] - E[x]^2 in float32 loses
    the variance (relative error ~1e-2 at mean/std 100, ~1 at 1000); the two-pass form must not."""
    torch.manual_seed(0)
    x = torch.randn(64, 4, 6, 6) + offset
    ours = AllReduceBatchNorm(4, momentum=1.0)
    out = ours(x)
    exact = x.double()
    var = exact.var(dim=(0, 2, 3), unbiased=False)
    expected = (exact - exact.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(var.view(1, 4, 1, 1) + 1e-5)
    # float32 holds x to about offset * 6e-8, so that is the output's own precision limit
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=offset * 1e-6)
    torch.testing.assert_close(ours.running_var.double(), exact.var(dim=(0, 2, 3)), rtol=1e-3, atol=0)
