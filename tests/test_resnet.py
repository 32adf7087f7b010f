"""`model: resnet20`: He et al. 2016's CIFAR ResNet with every norm; packing refused, data-parallel
runs and reports as for the cnn."""

import csv

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from normbench.cli import app
from normbench.config import validate
from normbench.errors import ConfigError
from normbench.models import build_model, norm_layers
from normbench.models.packed import pack_models
from normbench.norms import NORMS, make_norm
from normbench.results import read_meta
from normbench.train.build import build_for_config

from conftest import REPO, tiny_config


def factory(norm: str):
    return lambda channels, dims, name: make_norm(norm, channels, dims, layer=name)


def test_layout_is_he_et_al_2016_resnet20():
    net = build_model("resnet20", (3, 32, 32), 10, factory("batch"))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    three = [c for c in convs if c.kernel_size == (3, 3)]
    projections = [c for c in convs if c.kernel_size == (1, 1)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(three) + len(linears) == 20 and len(projections) == 2  # 19 3x3 convs + fc; 2 shortcut convs
    assert [c.out_channels for c in three] == [16] * 7 + [32] * 6 + [64] * 6
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert isinstance(net.stage1[0].shortcut, nn.Identity) and isinstance(net.stage2[1].shortcut, nn.Identity)
    assert all(c.bias is None for c in convs)  # batch norm's beta is the bias
    names = [row["layer"] for row in norm_layers(net)]
    assert len(names) == 21 and {row["class"] for row in norm_layers(net)} == {"BatchNorm2d"}
    assert names[:4] == ["norm1", "stage1.0.norm1", "stage1.0.norm2", "stage1.1.norm1"]
    assert "stage2.0.shortcut.norm" in names and "stage3.0.shortcut.norm" in names
    for shape in [(1, 28, 28), (3, 32, 32)]:
        out = build_model("resnet20", shape, 10, factory("batch"))(torch.randn(2, *shape))
        assert out.shape == (2, 10)


def test_the_residual_adds_the_input_back():
    """With the second conv of a block zeroed, the block is ReLU(its input): the shortcut carries x."""
    net = build_model("resnet20", (1, 12, 12), 4, factory("none"))
    block = net.stage1[1]
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    x = torch.randn(3, 16, 12, 12)
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize("norm", list(NORMS))
def test_every_norm_builds_in_resnet20_and_trains_a_step(norm):
    torch.manual_seed(0)
    net = build_for_config(validate(tiny_config(model="resnet20", **{"norm.type": norm}), "t"), (1, 12, 12), 4)
    layers = norm_layers(net)
    assert len(layers) == 21
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = F.cross_entropy(net(torch.randn(4, 1, 12, 12)), torch.randint(0, 4, (4,)))
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())  # every layer is on the path to the loss
    assert not torch.equal(before["fc.weight"], net.state_dict()["fc.weight"])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    unnormalized = all(isinstance(net.get_submodule(row["layer"]), nn.Identity) for row in layers)
    assert all((c.bias is not None) == unnormalized for c in convs)  # a bias only where no norm has a beta


def test_pack_is_refused_with_the_reason(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(model="resnet20", pack=2)), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "pack=2 is not supported with model resnet20: packable models: cnn, mlp, bn_mlp" in " ".join(result.output.split())
    # Packing must be exact or refused: the converter refuses residual blocks rather than pack them wrongly.
    models = [build_model("resnet20", (1, 12, 12), 4, factory("batch")) for _ in range(2)]
    with pytest.raises(ConfigError, match="pack is not supported with layer 'stage1'"):
        pack_models(models)


@pytest.mark.parametrize("overrides, message", [
    ({"norm.placement": "post"}, "model resnet20 places each norm between its conv and the residual sum"),
    ({"dataset.shape": [1, 6, 6]}, "model resnet20 needs inputs of at least 8x8 pixels, got 6x6"),
])
def test_settings_resnet20_cannot_honour_are_one_line_errors(runner, write_config, tmp_path, overrides, message):
    result = runner.invoke(app, ["run", str(write_config(model="resnet20", **overrides)), "--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in " ".join(result.output.split())


def test_a_data_parallel_resnet20_run_is_reported_like_the_cnn(runner, write_config, tmp_path):
    config = write_config(model="resnet20", **{"norm.sync": True})
    result = runner.invoke(app, ["run", str(config), "--nproc", "2", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "r" / "runs").iterdir()
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["world_size"] == 2
    assert len(meta["norm_layers"]) == 21 and meta["norm_layers"][-1]["class"] == "AllReduceBatchNorm"
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(tmp_path / "r"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "test_error_by_norm_synthetic_resnet20.png").is_file()  # one batch size
    with open(out / "summary.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["model"], row["norm"], row["n_seeds"]) == ("resnet20", "batch", "1")
    assert "## synthetic / resnet20" in (out / "report.md").read_text()


def test_the_repro_config_is_the_batch_size_study_with_the_resnet():
    base = yaml.safe_load((REPO / "configs/repro/gn_batch_sizes.yaml").read_text())
    resnet = yaml.safe_load((REPO / "configs/repro/gn_resnet20.yaml").read_text())
    assert resnet["model"] == "resnet20"
    assert {k: v for k, v in resnet.items() if k not in ("name", "model")} == {
        k: v for k, v in base.items() if k not in ("name", "model")}
    assert validate(resnet, "gn_resnet20").model == "resnet20"
    assert "normbench sweep configs/repro/gn_resnet20.yaml" in (REPO / "configs/repro/gn_resnet20.yaml").read_text()
