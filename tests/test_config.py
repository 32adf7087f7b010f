"""Config validation: shipped configs are valid; every kind of bad input is one clear error."""

import pytest
import yaml

from normbench.config import Config, apply_overrides, dump, load_config, validate
from normbench.errors import ConfigError
from normbench.train.build import check_buildable

from conftest import REPO, tiny_config

SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "bn_fashion.yaml", "bn_mnist.yaml", "bn_cifar.yaml", "gn_cifar.yaml",
            "ln_cifar.yaml", "in_cifar.yaml", "none_cifar.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_config_is_valid_and_buildable(path):
    data = yaml.safe_load(path.read_text())
    if "base" in data or "grid" in data:  # sweep files are checked by the sweep tests
        pytest.skip("sweep file")
    cfg = load_config(path)
    check_buildable(cfg)
    assert cfg.name == data.get("name", path.stem)


def test_defaults_round_trip_through_yaml():
    cfg = validate(tiny_config(), "t")
    again = validate(yaml.safe_load(dump(cfg)), "t")
    assert again == cfg


def test_shorthands():
    cfg = validate({"dataset": "mnist", "norm": "group"}, "t")
    assert cfg.dataset.name == "mnist" and cfg.norm.type == "group"


def errors_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        validate(data, "x.yaml")
    assert info.value.exit_code == 2
    message = info.value.message
    assert "\n" not in message
    return message


def test_unknown_keys_are_listed_with_their_full_path_and_the_allowed_keys():
    message = errors_of({"norm": {"type": "batch", "gruops": 4}, "batchsize": 8})
    assert "unknown key 'norm.gruops'" in message and "groups" in message
    assert "unknown key 'batchsize'" in message and "batch_size" in message


def test_every_problem_is_reported_at_once():
    message = errors_of({"batch_size": 0, "optimizer": {"lr": -1.0}, "norm": {"type": "foo"}, "device": "tpu"})
    for fragment in ("batch_size=0", "optimizer.lr=-1.0", "norm.type='foo'", "device='tpu'"):
        assert fragment in message


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"batch_size": "8"}, "batch_size='8': Input should be a valid integer"),
        ({"epochs": 1.5}, "epochs=1.5"),
        ({"norm": {"type": "weird"}}, "valid norms: none, batch, layer, group, instance"),
        ({"model": "resnet"}, "valid models: cnn, mlp, bn_mlp"),
        ({"dataset": "imagenet"}, "valid datasets: fashion-mnist, mnist, cifar10, cifar100, synthetic"),
        ({"device": "tpu"}, "'auto', 'cpu', 'cuda' or 'mps'"),
        ({"optimizer": {"name": "lion"}}, "'sgd', 'adam' or 'adamw'"),
        ({"norm": {"momentum": 1.5}}, "norm.momentum=1.5"),
        ({"batch_size": 1}, "batch_size=1 with norm.type=batch"),
        ({"max_samples": 10, "batch_size": 64}, "max_samples=10 is less than one batch"),
        ({"dataset": {"name": "synthetic", "shape": [28, 28]}}, "three positive integers"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, fragment):
    assert fragment in errors_of(data)


def test_batch_size_one_is_fine_without_batch_statistics():
    assert validate({"batch_size": 1, "norm": "group"}, "t").batch_size == 1


def test_groups_that_do_not_divide_channels_name_the_layer():
    cfg = validate({"norm": {"type": "group", "groups": 5}}, "t")
    with pytest.raises(ConfigError, match=r"norm.groups=5 does not divide the 32 channels of layer 'norm1'"):
        check_buildable(cfg)


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    cfg = load_config(path, ["norm.type=group", "batch_size=8", "norm.momentum=null", "optimizer.lr=0.5"])
    assert (cfg.norm.type, cfg.batch_size, cfg.norm.momentum, cfg.optimizer.lr) == ("group", 8, None, 0.5)
    with pytest.raises(ConfigError, match="norm.type='nope'"):
        load_config(path, ["norm.type=nope"])
    with pytest.raises(ConfigError, match="unknown key 'norm.colour'"):
        load_config(path, ["norm.colour=red"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["batch_size"])


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E2", 500.0), ("-2.5e-1", -0.25), ("1.0e-3", 1e-3), ("3", 3), ("e5", "e5")])
def test_override_reads_exponent_numbers_as_numbers(text, value):
    from normbench.config import parse_override

    assert parse_override(f"optimizer.lr={text}")[1] == value


def test_override_expands_a_shorthand_section():
    assert apply_overrides({"norm": "batch"}, ["norm.groups=4"]) == {"norm": {"type": "batch", "groups": 4}}


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my_run.yaml"
    path.write_text("model: mlp\n")
    assert load_config(path).name == "my_run"


def test_missing_file_and_yaml_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnorm: {type: batch\nbatch_size: 4\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(listy)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.batch_size = 3  # type: ignore[misc]
