"""Every user error is one line on stderr, a non-zero exit code, no traceback, nothing half-written."""

import pytest
import torch

from normbench.cli import app

from conftest import write_tiny_mnist


def check_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.stderr.strip()
    assert text.startswith("error: ") and "\n" not in text, text
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_missing_config_file(runner, tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml"), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "not found")
    assert not (tmp_path / "r").exists()


def test_yaml_syntax_error_gives_the_line(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbatch_size: [8\nnorm: batch\n")
    check_one_line_error(runner.invoke(app, ["run", str(bad)]), 2, "YAML syntax error at line")


def test_unknown_key(runner, write_config, tmp_path):
    config = write_config(**{"norm.gropus": 4})
    result = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "unknown key 'norm.gropus'", "allowed:")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("batch_size=0", "batch_size=0"),
        ("batch_size=1", "batch_size=1 with norm.type=batch"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1"),
        ("norm.type=bn", "valid norms: none, batch, layer, group, instance"),
        ("model=vgg", "valid models: cnn, mlp, bn_mlp"),
        ("dataset.name=svhn", "valid datasets:"),
        ("device=tpu", "'auto', 'cpu', 'cuda' or 'mps'"),
        ("norm.groups=5", "norm.groups=5 does not divide the"),
        ("batch_size", "expected KEY=VALUE"),
    ],
)
def test_bad_values_through_set(runner, write_config, tmp_path, override, fragment):
    if override == "norm.groups=5":
        override = "norm={type: group, groups: 5}"
    result = runner.invoke(app, ["run", str(write_config()), "--set", override, "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(device="cuda")), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, "device: cuda was requested", "use device: cpu or auto")
    assert not (tmp_path / "r").exists()


def test_dataset_absent_offline(runner, write_config, tmp_path):
    config = write_config(**{"dataset": {"name": "cifar10", "data_dir": str(tmp_path / "nodata")}})
    result = runner.invoke(app, ["run", str(config), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, "dataset cifar10 not found", "to get it")
    assert not (tmp_path / "r" / "runs").exists()


def test_results_directory_not_writable(runner, write_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["run", str(write_config()), "--results-dir", str(blocker / "results")])
    check_one_line_error(result, 1, "is not writable", "--results-dir")
    assert blocker.read_text() == "not a folder"


def test_truncated_dataset_file(runner, write_config, tmp_path):
    folder = write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=8, n_test=4)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    config = write_config(**{"dataset": {"name": "mnist"}})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")],
                           env={"NORMBENCH_CACHE": str(tmp_path / "cache")})
    check_one_line_error(result, 1, "dataset mnist could not be read")


def test_a_hydra_style_override_gets_the_set_hint(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config()), "norm.type=group", "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "use --set norm.type=group")
    assert not (tmp_path / "r").exists()
