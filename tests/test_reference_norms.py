"""`norm.impl: reference` against torch.nn, modelled on PyTorch's own norm tests (test_nn.py /
common_modules): forward and backward on random inputs of several shapes and memory layouts,
float64 gradcheck, running statistics over several steps, eval vs train, state_dict round trips
and the error cases."""

import pytest
import torch

from normbench.errors import ConfigError
from normbench.norms import make_norm

# (norm, dims, input shape): batch 2 and a large batch, 1-D inputs (N, F) and (N, C, L) for batch norm
CASES = [
    ("batch", 1, (2, 6)),
    ("batch", 1, (128, 6)),
    ("batch", 1, (4, 6, 5)),
    ("batch", 2, (2, 6, 3, 4)),
    ("batch", 2, (64, 6, 5, 5)),
    ("layer", 1, (2, 6)),
    ("layer", 1, (128, 6)),
    ("layer", 2, (2, 6, 3, 4)),
    ("layer", 2, (64, 6, 5, 5)),
    ("group", 1, (2, 6)),
    ("group", 2, (2, 6, 3, 4)),
    ("group", 2, (64, 6, 5, 5)),
    ("instance", 2, (2, 6, 3, 4)),
    ("instance", 2, (64, 6, 5, 5)),
]
OPTION_SETS = [
    {},
    {"affine": False},
    {"momentum": None},
    {"momentum": 1.0},
    {"track_running_stats": False},
    {"affine": True, "track_running_stats": True},  # instance norm with both switched on
]


def _applies(name: str, options: dict) -> bool:
    uses_stats = name in ("batch", "instance")
    return uses_stats or not ({"momentum", "track_running_stats"} & set(options))


def pair(name, dims, channels, dtype=torch.float32, **options):
    """The torch module and the reference module with the same (random) parameters and buffers."""
    group_opts = {"groups": 3} if name == "group" else {}
    theirs = make_norm(name, channels, dims=dims, impl="torch", **group_opts, **options).to(dtype)
    ours = make_norm(name, channels, dims=dims, impl="reference", **group_opts, **options).to(dtype)
    assert type(ours).__module__ == "normbench.norms.reference"
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())  # strict: same names and shapes
    return theirs, ours


def layouts(x: torch.Tensor):
    """The input contiguous, channels_last (4-D) and as a non-contiguous view with the same values."""
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    wide = torch.cat([x, torch.zeros_like(x)], dim=-1)  # every other column: a strided view
    yield "non_contiguous", wide[..., : x.shape[-1]]


def run_steps(module, inputs, upstream):
    """Forward + backward over several inputs; returns outputs, input grads and param grads."""
    outs, grads = [], []
    for x, g in zip(inputs, upstream):
        x = x.detach().clone().requires_grad_(True) if x.is_contiguous() else x.detach().requires_grad_(True)
        out = module(x)
        out.backward(g)
        outs.append(out.detach())
        grads.append(x.grad)
    params = {n: p.grad.clone() for n, p in module.named_parameters()}
    return outs, grads, params


@pytest.mark.parametrize(
    "name, dims, shape, options",
    [(*case, options) for case in CASES for options in OPTION_SETS if _applies(case[0], options)],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults" if isinstance(c, dict) else str(c),
)
def test_forward_backward_and_running_stats_match_torch(name, dims, shape, options):
    torch.manual_seed(0)
    base = [torch.randn(shape) * (1 + i) + i for i in range(3)]  # three training steps, shifting statistics
    upstream = [torch.randn(shape) for _ in range(3)]
    for layout, _ in layouts(base[0]):
        theirs, ours = pair(name, dims, shape[1], **options)
        inputs = [dict(layouts(x))[layout] for x in base]
        for module in (theirs, ours):
            module.train()
        t_out, t_grads, t_params = run_steps(theirs, inputs, upstream)
        o_out, o_grads, o_params = run_steps(ours, inputs, upstream)
        for a, b in zip(o_out + o_grads, t_out + t_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{layout}")
        assert o_params.keys() == t_params.keys()
        for key in t_params:
            torch.testing.assert_close(o_params[key], t_params[key], atol=1e-4, rtol=1e-5, msg=f"{layout} {key}")
        for key, value in theirs.state_dict().items():  # running_mean, running_var, num_batches_tracked
            torch.testing.assert_close(ours.state_dict()[key], value, atol=1e-5, rtol=1e-5, msg=f"{layout} {key}")
        theirs.eval()
        ours.eval()
        with torch.no_grad():
            probe = inputs[0] * 0.5 - 1
            torch.testing.assert_close(ours(probe), theirs(probe), atol=1e-5, rtol=1e-5, msg=f"{layout} eval")
        if layout == "channels_last":  # the layout survives, as with torch's kernels
            assert o_out[0].is_contiguous(memory_format=torch.channels_last) or name in ("group", "layer")


@pytest.mark.parametrize("name, dims, shape", [c for c in CASES if c[2][0] <= 4], ids=lambda c: str(c))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float64_gradcheck(name, dims, shape, training):
    torch.manual_seed(1)
    for options in ({}, {"affine": False}):
        _, ours = pair(name, dims, shape[1], dtype=torch.float64, **options)
        if training:
            ours.train()
        else:
            # eval with non-trivial running statistics where the norm keeps them
            ours.train()
            with torch.no_grad():
                ours(torch.randn(shape, dtype=torch.float64) * 2 + 1)
            ours.eval()
        if getattr(ours, "momentum", None) is not None:
            ours.momentum = 0.0  # gradcheck calls forward many times; keep the statistics still
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        params = tuple(p for p in ours.parameters())
        func = torch.func.functional_call
        names = [n for n, _ in ours.named_parameters()]

        def f(inp, *ps):
            return func(ours, dict(zip(names, ps)), (inp,))

        assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name, dims", [("batch", 1), ("batch", 2), ("instance", 2)])
@pytest.mark.parametrize("momentum", [0.1, 1.0, None])
def test_running_statistics_after_several_steps_against_float64_formula(name, dims, momentum):
    torch.manual_seed(2)
    shape = (8, 3) if dims == 1 else (8, 3, 4, 4)
    options = {"track_running_stats": True} if name == "instance" else {}
    _, ours = pair(name, dims, 3, momentum=momentum, **options)
    ours.train()
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for k in range(1, 6):
        x = torch.randn(shape) * k + k
        ours(x)
        xd = x.double()
        if name == "batch":
            reduce = [d for d in range(xd.dim()) if d != 1]
            batch_mean, batch_var = xd.mean(dim=reduce), xd.var(dim=reduce, unbiased=True)
            factor = 1 / k if momentum is None else momentum
        else:  # mean over the batch of per-instance statistics; momentum None leaves them alone (torch)
            batch_mean, batch_var = xd.mean(dim=(2, 3)).mean(0), xd.var(dim=(2, 3), unbiased=True).mean(0)
            factor = 0.0 if momentum is None else momentum
        mean = (1 - factor) * mean + factor * batch_mean
        var = (1 - factor) * var + factor * batch_var
    torch.testing.assert_close(ours.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var.double(), var, rtol=1e-5, atol=1e-5)
    expected_count = 5 if name == "batch" else 0  # torch's InstanceNorm never counts batches
    assert int(ours.num_batches_tracked) == expected_count


def test_eval_uses_running_statistics_and_untracked_batch_norm_uses_batch_statistics():
    torch.manual_seed(3)
    x = torch.randn(16, 4) * 3 + 2
    tracked = make_norm("batch", 4, dims=1, impl="reference", affine=False)
    tracked.eval()  # fresh running statistics: mean 0, var 1 -> output x / sqrt(1 + eps)
    torch.testing.assert_close(tracked(x), x / (1 + 1e-5) ** 0.5)
    untracked = make_norm("batch", 4, dims=1, impl="reference", affine=False, track_running_stats=False)
    untracked.eval()
    out = untracked(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert untracked.running_mean is None and "running_mean" not in untracked.state_dict()


@pytest.mark.parametrize("name, dims", [("batch", 1), ("batch", 2), ("layer", 1), ("layer", 2), ("group", 2), ("instance", 2)])
def test_state_dict_round_trip_both_ways(name, dims):
    theirs, ours = pair(name, dims, 6, **({"affine": True, "track_running_stats": True} if name == "instance" else {}))
    shape = (8, 6) if dims == 1 else (8, 6, 3, 3)
    theirs.train()
    theirs(torch.randn(shape) * 2 + 3)  # non-trivial running statistics
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fresh = make_norm(name, 6, dims=dims, impl="torch", **({"groups": 3} if name == "group" else {}),
                      **({"affine": True, "track_running_stats": True} if name == "instance" else {}))
    fresh.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_too_few_values_per_channel_is_an_error_in_training(impl):
    layer = make_norm("batch", 4, dims=1, impl=impl)
    layer.train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(torch.randn(1, 4))
    layer.eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)  # eval with running statistics is fine
    inst = make_norm("instance", 4, dims=2, impl=impl)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        inst(torch.randn(2, 4, 1, 1))


def test_groups_not_dividing_channels_is_an_error_for_both_impls():
    from normbench.norms.reference import ReferenceGroupNorm

    for impl in ("torch", "reference"):
        with pytest.raises(ConfigError, match="norm.groups=5 does not divide the 12 channels"):
            make_norm("group", 12, groups=5, impl=impl)
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        ReferenceGroupNorm(5, 12)


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown norm implementation 'numpy'; valid: torch, reference"):
        make_norm("batch", 4, impl="numpy")
