"""The 2017-2025 norms (docs/norm_zoo.md): each against its paper's formula written out in float64,
float64 gradcheck (input and parameters), running statistics and eval where they exist, timm's
implementation where timm has one, and in use: configs, models, packing, data-parallel checks,
`normbench norms` and an end-to-end run."""

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from normbench.cli import app
from normbench.config import NormConfig, validate
from normbench.errors import ConfigError
from normbench.norms import NORMS, NormOptions, make_norm
from normbench.results import read_meta

from conftest import REPO, tiny_config, write_tiny_mnist
from test_engine import buffers, deterministic, lane_losses  # noqa: F401 (deterministic: a fixture)

ZOO = ["ghost_batch", "ws_group", "evonorm_b0", "evonorm_s0", "rms", "grn", "dyt"]
SHAPES = {1: (12, 8), 2: (12, 8, 5, 4)}
VIEW = {1: (1, -1), 2: (1, -1, 1, 1)}


def randomize(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter set to random values, so gamma, beta, v, alpha all matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5)
    return layer


def params64(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().double() for name, p in layer.named_parameters()}


# ---- the papers' formulas, in float64, written out independently of normbench.norms ----

def ghost_batch_formula(x, ghost, gamma, beta, eps=1e-5):
    """Hoffer et al. Algorithm 1: each ghost batch of `ghost` consecutive samples normalized by its own statistics."""
    out = []
    for chunk in x.double().split(ghost):
        dims = [0] + list(range(2, x.dim()))
        mean = chunk.mean(dim=dims, keepdim=True)
        var = chunk.var(dim=dims, unbiased=False, keepdim=True)
        out.append((chunk - mean) / torch.sqrt(var + eps))
    view = VIEW[2] if x.dim() == 4 else VIEW[1]
    return torch.cat(out) * gamma.view(view) + beta.view(view)


def ghost_running_stats(batches, ghost, momentum, mean=None, var=None):
    """Batch norm's running update applied once per ghost batch, in order (a plain loop)."""
    for x in batches:
        for chunk in x.double().split(ghost):
            dims = [0] + list(range(2, x.dim()))
            if mean is None:
                mean, var = torch.zeros(x.shape[1], dtype=torch.float64), torch.ones(x.shape[1], dtype=torch.float64)
            mean = (1 - momentum) * mean + momentum * chunk.mean(dim=dims)
            var = (1 - momentum) * var + momentum * chunk.var(dim=dims, unbiased=True)
    return mean, var


def evonorm_b0_formula(x, v, gamma, beta, batch_var=None, eps=1e-5):
    """Liu et al. 2020, EvoNorm-B0: x / max(sqrt(s2_b + eps), v x + sqrt(s2_w,h + eps)) gamma + beta."""
    x = x.double()
    view = VIEW[2] if x.dim() == 4 else VIEW[1]
    if batch_var is None:
        batch_var = x.var(dim=[0] + list(range(2, x.dim())), unbiased=False)
    x4 = x if x.dim() == 4 else x[:, :, None, None]  # a feature vector is a 1x1 map
    instance_var = x4.var(dim=(2, 3), unbiased=False, keepdim=True).view(*x.shape[:2], *[1] * (x.dim() - 2))
    denominator = torch.maximum(torch.sqrt(batch_var.view(view) + eps), v.view(view) * x + torch.sqrt(instance_var + eps))
    return x / denominator * gamma.view(view) + beta.view(view)


def evonorm_s0_formula(x, groups, v, gamma, beta, eps=1e-5):
    """EvoNorm-S0: x sigmoid(v x) / sqrt(s2_group + eps) gamma + beta."""
    x = x.double()
    view = VIEW[2] if x.dim() == 4 else VIEW[1]
    grouped = x.reshape(x.shape[0], groups, -1)
    std = torch.sqrt(grouped.var(dim=2, unbiased=False, keepdim=True) + eps).expand_as(grouped).reshape(x.shape)
    return x * torch.sigmoid(v.view(view) * x) / std * gamma.view(view) + beta.view(view)


def rms_formula(x, gain, eps=1e-5):
    """Zhang & Sennrich: a_i / RMS(a) g_i, RMS over every value of a sample."""
    x = x.double()
    rms = torch.sqrt(x.flatten(1).pow(2).mean(dim=1) + eps).view(-1, *[1] * (x.dim() - 1))
    return x / rms * gain.view(VIEW[2] if x.dim() == 4 else VIEW[1])


def grn_formula(x, gamma, beta, eps=1e-5):
    """ConvNeXt V2 eq. 1-3: G = ||X_i|| over space, N = G / mean(G), y = gamma (X N) + beta + X."""
    x = x.double()
    x4 = x if x.dim() == 4 else x[:, :, None, None]
    g = x4.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # (N, C, 1, 1)
    n = (g / (g.mean(dim=1, keepdim=True) + eps)).view(x.shape[0], x.shape[1], *[1] * (x.dim() - 2))
    view = VIEW[2] if x.dim() == 4 else VIEW[1]
    return gamma.view(view) * (x * n) + beta.view(view) + x


def dyt_formula(x, alpha, gamma, beta):
    """Zhu et al. 2025: gamma tanh(alpha x) + beta."""
    view = VIEW[2] if x.dim() == 4 else VIEW[1]
    return gamma.view(view) * torch.tanh(alpha * x.double()) + beta.view(view)


def formula(name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's output for `layer` (its own parameters) in training mode."""
    p = params64(layer)
    if name == "ghost_batch":
        return ghost_batch_formula(x, layer.ghost_batch_size, p["weight"], p["bias"])
    if name == "evonorm_b0":
        return evonorm_b0_formula(x, p["v"], p["weight"], p["bias"])
    if name == "evonorm_s0":
        return evonorm_s0_formula(x, layer.num_groups, p["v"], p["weight"], p["bias"])
    if name == "rms":
        return rms_formula(x, p["weight"])
    if name == "grn":
        return grn_formula(x, p["weight"], p["bias"])
    return dyt_formula(x, p["alpha"], p["weight"], p["bias"])


ACTIVATION_NORMS = ["ghost_batch", "evonorm_b0", "evonorm_s0", "rms", "grn", "dyt"]  # ws_group: its own tests


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_training_output_matches_the_papers_formula_in_float64(name, dims):
    torch.manual_seed(0)
    layer = randomize(make_norm(name, 8, dims=dims, ghost_batch_size=4, groups=4))
    x = torch.randn(SHAPES[dims]) * 2 + 0.7
    torch.testing.assert_close(layer(x).double(), formula(name, layer, x), atol=1e-5, rtol=1e-5)
    layer64 = layer.double()  # and in float64 to float64 precision
    torch.testing.assert_close(layer64(x.double()), formula(name, layer64, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_gradcheck_float64_for_the_input_and_every_parameter(name, dims):
    torch.manual_seed(1)
    layer = randomize(make_norm(name, 8, dims=dims, ghost_batch_size=4, groups=4)).double()
    x = torch.randn(SHAPES[dims], dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def fn(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["evonorm_s0", "rms", "grn", "dyt"])
def test_norms_without_statistics_are_the_same_in_train_and_eval(name):
    layer = randomize(make_norm(name, 8, dims=2, groups=4))
    x = torch.randn(SHAPES[2])
    train = layer.train()(x)
    torch.testing.assert_close(layer.eval()(x), train)
    torch.testing.assert_close(layer(x[:1]), train[:1])  # per sample: a batch of one gives the same row


# ---- ghost batch norm ----

@pytest.mark.parametrize("dims", [1, 2])
def test_ghost_batch_as_large_as_the_batch_is_batch_norm(dims):
    torch.manual_seed(2)
    ghost = randomize(make_norm("ghost_batch", 8, dims=dims, ghost_batch_size=12))
    batch = make_norm("batch", 8, dims=dims)
    batch.load_state_dict(ghost.state_dict())
    for step in range(3):
        x = (torch.randn(SHAPES[dims]) * (step + 1) + step).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        grad = torch.randn(SHAPES[dims])
        ghost(x).backward(grad)
        batch(x2).backward(grad)
        torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for key, value in batch.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], value)
    x = torch.randn(SHAPES[dims])
    torch.testing.assert_close(ghost.eval()(x), batch.eval()(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("batch, ghost", [(12, 4), (10, 4), (12, 5)])
def test_ghost_batch_running_statistics_take_one_update_per_ghost_batch(batch, ghost, momentum):
    torch.manual_seed(3)
    layer = make_norm("ghost_batch", 6, dims=2, ghost_batch_size=ghost, momentum=momentum)
    batches = [torch.randn(batch, 6, 3, 3) * 3 + i for i in range(3)]
    for x in batches:
        layer(x)
    chunks = [c for x in batches for c in x.double().split(ghost)]
    if momentum is None:  # cumulative average over every ghost batch
        mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
        var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    else:
        mean, var = ghost_running_stats(batches, ghost, momentum)
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert int(layer.num_batches_tracked) == 3 * len(batches[0].split(ghost))
    x = torch.randn(batch, 6, 3, 3)  # eval: the running statistics
    expected = (x.double() - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    torch.testing.assert_close(layer.eval()(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_ghost_batches_differ_from_the_whole_batch():
    torch.manual_seed(4)
    x = torch.randn(16, 4, 3, 3) + torch.arange(16.0).view(16, 1, 1, 1)  # samples drift: ghost means differ
    ghost = make_norm("ghost_batch", 4, ghost_batch_size=4)(x)
    assert not torch.allclose(ghost, make_norm("batch", 4)(x), atol=1e-2)
    torch.testing.assert_close(ghost[:4], make_norm("batch", 4)(x[:4]))  # the first ghost batch alone


def test_ghost_batch_state_dict_round_trips_and_loads_into_batch_norm():
    layer = make_norm("ghost_batch", 5, dims=1, ghost_batch_size=2)
    layer(torch.randn(8, 5))
    fresh = make_norm("ghost_batch", 5, dims=1, ghost_batch_size=2)
    fresh.load_state_dict(layer.state_dict())
    make_norm("batch", 5, dims=1).load_state_dict(layer.state_dict())  # strict: the same keys as nn.BatchNorm1d
    x = torch.randn(3, 5)
    torch.testing.assert_close(fresh.eval()(x), layer.eval()(x))


def test_a_ghost_batch_of_one_feature_vector_is_an_error():
    with pytest.raises(ValueError, match="more than 1 value per channel in each ghost batch"):
        make_norm("ghost_batch", 5, dims=1, ghost_batch_size=4)(torch.randn(9, 5))  # 4 + 4 + 1


# ---- EvoNorm-B0 running variance ----

@pytest.mark.parametrize("dims", [1, 2])
def test_evonorm_b0_running_variance_and_eval(dims):
    torch.manual_seed(5)
    layer = randomize(make_norm("evonorm_b0", 8, dims=dims, momentum=0.2))
    batches = [torch.randn(SHAPES[dims]) * (i + 1) for i in range(3)]
    running = torch.ones(8, dtype=torch.float64)
    reduce = [0] + list(range(2, len(SHAPES[dims])))
    for x in batches:
        layer(x)
        running = 0.8 * running + 0.2 * x.double().var(dim=reduce, unbiased=True)
    torch.testing.assert_close(layer.running_var.double(), running, rtol=1e-5, atol=1e-6)
    x = torch.randn(SHAPES[dims])
    p = params64(layer)
    expected = evonorm_b0_formula(x, p["v"], p["weight"], p["bias"], batch_var=running)
    torch.testing.assert_close(layer.eval()(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.train()(x).double(), expected, atol=1e-3)  # train mode: the batch's variance


def test_evonorm_b0_without_running_statistics_uses_the_batch_in_eval():
    layer = make_norm("evonorm_b0", 8, dims=2, track_running_stats=False)
    assert layer.running_var is None
    x = torch.randn(SHAPES[2])
    torch.testing.assert_close(layer.eval()(x), layer.train()(x))


# ---- weight standardization + group norm ----

def standardized(weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Qiao et al. eq. 5: (W - mean) / sqrt(var + eps) per output unit over its fan-in."""
    w = weight.double().flatten(1)
    return ((w - w.mean(dim=1, keepdim=True)) / torch.sqrt(w.var(dim=1, unbiased=False, keepdim=True) + eps)).view_as(weight)


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_ws_group_standardizes_every_normed_layer_of_the_cnn(impl):
    from normbench.train.build import build_for_config

    cfg = validate(tiny_config(**{"norm.type": "ws_group", "norm.impl": impl, "norm.groups": 4}), "t")
    model = build_for_config(cfg, (1, 12, 12), 4)
    for layer, norm in (("conv1", "norm1"), ("conv2", "norm2"), ("fc3", "norm3")):
        conv = getattr(model, layer)
        assert nn.utils.parametrize.is_parametrized(conv, "weight"), layer
        expected = standardized(conv.parametrizations.weight.original.detach())
        torch.testing.assert_close(conv.weight.double(), expected, rtol=1e-5, atol=1e-6)
        assert getattr(model, norm).num_groups == 4
    assert not nn.utils.parametrize.is_parametrized(model.fc4)  # the classifier has no norm slot
    x = torch.randn(3, 1, 12, 12)  # conv1 -> norm1 by hand, in float64
    w = standardized(model.conv1.parametrizations.weight.original.detach())
    h = F.group_norm(F.conv2d(x.double(), w, model.conv1.bias.double(), padding=1), 4, eps=1e-5)
    torch.testing.assert_close(model.norm1(model.conv1(x)).double(), h, rtol=1e-5, atol=1e-5)


def test_ws_group_gradcheck_through_the_standardized_weight():
    layer = nn.Conv2d(3, 4, 3).double()
    norm = make_norm("ws_group", 4, groups=2).double()
    norm.wrap_layer(layer)
    original = layer.parametrizations.weight.original
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = original.detach().clone().requires_grad_(True)

    def fn(x, weight):
        w = standardized(weight)
        return norm(F.conv2d(x, w, layer.bias))

    assert torch.autograd.gradcheck(fn, (x, weight), eps=1e-6, atol=1e-5)
    layer(x).sum().backward()  # and the parametrized layer's gradient is the formula's
    expected = torch.autograd.grad(F.conv2d(x, standardized(original), layer.bias).sum(), original)[0]
    torch.testing.assert_close(original.grad, expected)


# ---- timm's implementations (a test-only dependency) ----

def test_evonorm_b0_s0_match_timm_in_train_and_eval():
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(6)
    ours_b0 = randomize(make_norm("evonorm_b0", 8, dims=2, eps=1e-3))
    theirs_b0 = layers.EvoNorm2dB0(8, eps=1e-3)
    ours_s0 = randomize(make_norm("evonorm_s0", 8, dims=2, groups=4))
    theirs_s0 = layers.EvoNorm2dS0(8, groups=4, eps=1e-5)
    for ours, theirs in ((ours_b0, theirs_b0), (ours_s0, theirs_s0)):
        theirs.load_state_dict(ours.state_dict(), strict=False)  # ours also counts batches (num_batches_tracked)
        for _ in range(3):
            x = torch.randn(SHAPES[2]) * 2 + 1
            torch.testing.assert_close(ours(x), theirs(x))
        x = torch.randn(SHAPES[2])
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    torch.testing.assert_close(ours_b0.running_var, theirs_b0.running_var)
    x = torch.randn(SHAPES[1])  # feature vectors: timm's layer on the same values as 1x1 maps
    ours_b0.train(), theirs_b0.train()
    torch.testing.assert_close(ours_b0(x), theirs_b0(x[:, :, None, None]).flatten(1))


@pytest.mark.parametrize("dims", [1, 2])
def test_rms_matches_timm_and_torch(dims):
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(7)
    ours = randomize(make_norm("rms", 8, dims=dims, eps=1e-6))
    x = torch.randn(SHAPES[dims]) * 3
    normalized = tuple(SHAPES[dims][1:])  # (C, H, W) or (F,)
    gain = ours.weight.detach().view(-1, *[1] * (dims * 2 - 2)).expand(normalized)  # per channel, as elementwise
    theirs = layers.RmsNorm(normalized, eps=1e-6)
    torch_rms = nn.RMSNorm(normalized, eps=1e-6)
    with torch.no_grad():
        theirs.weight.copy_(gain)
        torch_rms.weight.copy_(gain)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x), torch_rms(x))


@pytest.mark.parametrize("dims", [1, 2])
def test_grn_matches_timm(dims):
    grn = pytest.importorskip("timm.layers.grn")
    torch.manual_seed(8)
    ours = randomize(make_norm("grn", 8, dims=dims, eps=1e-6))
    theirs = grn.GlobalResponseNorm(8, eps=1e-6, channels_last=False)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(SHAPES[dims])
    x4 = x if dims == 2 else x[:, :, None, None]
    torch.testing.assert_close(ours(x), theirs(x4).view_as(x))
    fresh = make_norm("grn", 8, dims=dims)  # gamma = beta = 0 at init: the identity, as ConvNeXt V2
    torch.testing.assert_close(fresh(x), x)


def test_ws_group_matches_timm_std_conv_with_group_norm():
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    theirs = layers.StdConv2d(3, 8, 3, padding=1, bias=True, eps=1e-6)
    theirs.load_state_dict(conv.state_dict())
    norm = randomize(make_norm("ws_group", 8, groups=4, ws_eps=1e-6))
    group = nn.GroupNorm(4, 8)
    group.load_state_dict(norm.state_dict())
    norm.wrap_layer(conv)
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(norm(conv(x)), group(theirs(x)), rtol=1e-4, atol=1e-5)


# ---- in use: configs, models, packing, data-parallel, CLI, docs, a run ----

def test_every_norm_option_is_passed_from_the_config():
    assert set(NormConfig().options()) == set(NormOptions.__dataclass_fields__)
    cfg = validate(tiny_config(**{"norm.type": "ghost_batch", "norm.ghost_batch_size": 4, "norm.ws_eps": 1e-8,
                                  "norm.dyt_alpha_init": 2.0}), "t")
    assert cfg.norm.options()["ghost_batch_size"] == 4
    assert make_norm("dyt", 3, **cfg.norm.options()).alpha.item() == 2.0
    assert make_norm("ghost_batch", 3, **cfg.norm.options()).ghost_batch_size == 4


@pytest.mark.parametrize("overrides, message", [
    ({"norm.type": "ghost_batch", "batch_size": 16, "norm.ghost_batch_size": 6},
     "norm.ghost_batch_size=6 does not split batch_size=16 into equal ghost batches; use a divisor of 16"),
    ({"norm.ghost_batch_size": 1}, "norm.ghost_batch_size=1"),
    ({"norm.ws_eps": 0.0}, "norm.ws_eps=0.0"),
    ({"norm.type": "evonorm_b0", "batch_size": 1}, "batch statistics need at least 2 samples per batch"),
    ({"norm.type": "evonorm_s0", "norm.groups": 5}, "norm.groups=5 does not divide the 32 channels of layer 'norm1'"),
])
def test_bad_zoo_settings_are_one_line_config_errors(overrides, message):
    from normbench.train.build import check_buildable

    with pytest.raises(ConfigError, match=message.replace("(", "\\(")) as error:
        check_buildable(validate(tiny_config(**overrides), "t"))
    assert "\n" not in str(error.value)


def test_a_ghost_batch_larger_than_the_batch_is_allowed():
    assert validate(tiny_config(**{"norm.type": "ghost_batch", "batch_size": 2, "norm.ghost_batch_size": 16}), "t")


@pytest.mark.parametrize("name", ZOO)
def test_packing_refuses_every_zoo_norm_with_the_reason(name):
    with pytest.raises(ConfigError, match=f"pack=2 is not supported with norm {name} \\(impl torch\\): packing converts "
                                          "only PyTorch's own modules of none, batch, layer, group, instance exactly"):
        validate(tiny_config(pack=2, **{"norm.type": name}), "t")


def test_packing_a_packable_norm_with_the_reference_impl_says_to_use_torch():
    with pytest.raises(ConfigError, match="norm batch \\(impl reference\\): .* use one with impl torch"):
        validate(tiny_config(pack=2, **{"norm.impl": "reference"}), "t")


@pytest.mark.parametrize("name", ["ghost_batch", "evonorm_b0"])
def test_data_parallel_refuses_one_sample_per_process_for_batch_dependent_zoo_norms(name):
    from normbench.train.distributed import check_world

    cfg = validate(tiny_config(batch_size=2, **{"norm.type": name}), "t")
    with pytest.raises(ConfigError, match=f"unsynced {name} norm needs >= 2 per process; use batch_size >= 4$"):
        check_world(cfg, 2)
    check_world(validate(tiny_config(batch_size=4, **{"norm.type": name}), "t"), 2)


def test_norms_command_lists_the_zoo(runner):
    result = runner.invoke(app, ["norms"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    rows = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    for name in ZOO:
        assert name in rows, name
    assert "per channel over (G, H, W) of each ghost batch" in result.output


def test_the_zoo_page_covers_every_zoo_norm_and_adain():
    page = (REPO / "docs" / "norm_zoo.md").read_text()
    for name in ZOO:
        assert name in NORMS and f"`{name}`" in page, name
    assert "AdaIN" in page


@pytest.mark.parametrize("name", ZOO)
def test_half_precision_inputs_give_outputs_of_their_dtype(name):
    layer = make_norm(name, 8, groups=4, ghost_batch_size=4)
    x = torch.randn(SHAPES[2])
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_norm_trains_the_cnn_end_to_end(runner, write_config, tmp_path, name):
    data = write_tiny_mnist(tmp_path / "mnist", n_train=256, n_test=64)
    path = write_config(**{"norm.type": name, "epochs": 3, "dataset": {"name": "mnist", "data_dir": str(data)},
                           "norm.ghost_batch_size": 4})
    result = runner.invoke(app, ["run", str(path), "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "results" / "runs").iterdir())
    assert read_meta(run_dir)["status"] == "completed"
    with open(run_dir / "epochs.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])
    assert float(epochs[-1]["test_acc"]) > 0.6  # 4 classes: chance is 0.25


@pytest.mark.gpu
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_norm_trains_the_same_in_a_captured_cuda_graph(tmp_path, deterministic, name):
    from normbench.data import load_dataset
    from normbench.results import NullRunDir
    from normbench.train.graph import GraphStep
    from normbench.train.lanes import Lane, SingleModel

    results = {}
    for capture in (False, True):
        cfg = validate(tiny_config(**{"device": "cuda", "norm.type": name, "cuda_graph": capture,
                                      "dataset.train_samples": 512, "norm.ghost_batch_size": 4}), "t")
        trainer = SingleModel(Lane(cfg, load_dataset(cfg.dataset, seed=0, device="cuda"), NullRunDir(tmp_path)),
                              torch.device("cuda"))
        assert isinstance(trainer.step, GraphStep) == capture
        results[capture] = (lane_losses(trainer, 100), buffers(trainer.model))
    torch.testing.assert_close(torch.tensor(results[True][0]), torch.tensor(results[False][0]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-6)  # running statistics


def test_every_registered_norm_has_its_own_figure_colour():
    from normbench.report.style import colour

    assert len({colour(name) for name in NORMS}) == len(NORMS)
