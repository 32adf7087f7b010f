"""One value parser for `--set`, `--grid` and every list option: the same rules in run, sweep and bench."""

import pytest
import yaml

from normbench.cli import app
from normbench.errors import ConfigError
from normbench.values import parse_ints, parse_list, parse_names, parse_value

from test_bench import TINY_SET


@pytest.mark.parametrize("raw, value", [
    ("8", 8), ("null", None), ("true", True), ("batch", "batch"), ("1e-3", 1e-3), ("5E2", 500.0), ("-2.5e-1", -0.25),
    ("[1,12,12]", [1, 12, 12]), ("{type: group}", {"type": "group"}), ('"1e3"', "1e3"), ("e5", "e5"), ("", ""),
])
def test_a_value_is_yaml_with_exponent_numbers_as_numbers(raw, value):
    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_a_list_splits_on_commas_outside_brackets():
    assert parse_list("2, 8,64", "--batch-sizes", "") == (2, 8, 64)
    assert parse_list("[1,12,12],[1,8,8]", "--grid dataset.shape=", "") == ([1, 12, 12], [1, 8, 8])
    assert parse_list("0.1,1e-3", "--grid optimizer.lr=", "") == (0.1, 0.001)


@pytest.mark.parametrize("text", ["2,,8", "2,8,", ",2", "", " "])
def test_an_empty_item_is_refused(text):
    with pytest.raises(ConfigError, match="empty item; separate values with single commas"):
        parse_list(text, "--seeds", "--seeds 0,1")


def test_typed_lists_say_which_items_are_wrong():
    assert parse_ints("0,1", "--seeds", 0, "") == (0, 1)
    with pytest.raises(ConfigError, match=r"--batch-sizes 2,x,true: every value must be an integer >= 1 \(bad: x, True\)"):
        parse_ints("2,x,true", "--batch-sizes", 1, "--batch-sizes 2,8")
    with pytest.raises(ConfigError, match="appears twice"):
        parse_ints("4,4", "--batch-sizes", 1, "")
    assert parse_names("batch,group", "--norms", "") == ("batch", "group")
    with pytest.raises(ConfigError, match=r"every value must be a name \(bad: 3\)"):
        parse_names("batch,3", "--norms", "")


# --- the same rules through the CLI -------------------------------------------------------------

EMPTY_ITEM = "empty item; separate values with single commas"


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in result.output, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def sweep_args(config, tmp_path, *args):
    return ["sweep", str(config), "--results-dir", str(tmp_path / "r"), "--dry-run", *args]


def bench_args(tmp_path, *args):
    return ["bench", *TINY_SET, "--steps", "1", "--repeats", "1", "--no-memory", "--results-dir", str(tmp_path / "r"), *args]


@pytest.mark.parametrize("option, text", [
    ("--batch-sizes", "2,,8"), ("--norms", "batch,,group"), ("--seeds", "0,"), ("--batch-sizes", ""),
])
def test_sweep_refuses_empty_items_in_one_line(runner, write_config, tmp_path, option, text):
    result = runner.invoke(app, sweep_args(write_config(), tmp_path, option, text))
    one_line_error(result, f"{option} {text or repr('')}: {EMPTY_ITEM}")


def test_grid_refuses_empty_items_with_the_same_message(runner, write_config, tmp_path):
    result = runner.invoke(app, sweep_args(write_config(), tmp_path, "--grid", "optimizer.lr=0.1,,0.01"))
    one_line_error(result, f"--grid optimizer.lr=0.1,,0.01: {EMPTY_ITEM}", "e.g. --grid optimizer.lr=v1,v2")


@pytest.mark.parametrize("option, text", [("--batch-sizes", "2,,8"), ("--norms", "batch,")])
def test_bench_refuses_empty_items_with_the_same_message(runner, tmp_path, option, text):
    result = runner.invoke(app, bench_args(tmp_path, option, text))
    one_line_error(result, f"{option} {text}: {EMPTY_ITEM}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["sweep", "bench"])
def test_batch_sizes_follow_the_same_rules_in_sweep_and_bench(runner, write_config, tmp_path, command):
    make = (lambda *a: sweep_args(write_config(), tmp_path, *a)) if command == "sweep" else (lambda *a: bench_args(tmp_path, *a))
    one_line_error(runner.invoke(app, make("--batch-sizes", "4,x")), "--batch-sizes 4,x: every value must be an integer >= 1")
    one_line_error(runner.invoke(app, make("--batch-sizes", "4,4")), "--batch-sizes 4,4: a value appears twice")
    one_line_error(runner.invoke(app, make("--batch-sizes", "0")), "integer >= 1 (bad: 0)")


def test_set_reads_exponent_numbers_and_keeps_quoted_text_in_run(runner, write_config):
    result = runner.invoke(app, ["run", str(write_config()), "--dry-run", "--set", "optimizer.lr=1e-3",
                                 "--set", 'name="1e3"', "--set", "dataset.shape=[1,8,8]"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["optimizer"]["lr"] == 0.001 and resolved["name"] == "1e3" and resolved["dataset"]["shape"] == [1, 8, 8]


def test_set_and_grid_read_values_alike_in_sweep(runner, write_config, tmp_path):
    result = runner.invoke(app, sweep_args(write_config(), tmp_path, "--norms", "layer", "--set", "optimizer.lr=1e-3",
                                           "--grid", "optimizer.weight_decay=1e-4,0", "--grid", "dataset.shape=[1,12,12],[1,8,8]"))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "4 points" in out and "invalid" not in out
    assert out.count("0.001") == 4 and "0.0001" in out and "[1, 8, 8]" in out


def test_set_without_a_key_is_the_same_error_in_run_sweep_and_bench(runner, write_config, tmp_path):
    for args in (["run", str(write_config()), "--dry-run"], sweep_args(write_config(), tmp_path), bench_args(tmp_path)):
        one_line_error(runner.invoke(app, [*args, "--set", "=3"]), "--set '=3': expected KEY=VALUE, e.g. --set norm.type=group")


def test_misplaced_arguments_get_what_to_type_instead():
    from normbench.values import misplaced_hint

    def hint(*args, exists=()):
        return misplaced_hint(list(args), {"--batch-sizes", "--norms", "--set"}, {"--batch-sizes", "--norms"},
                              lambda token: token in exists)

    assert hint("--batch-sizes", "2", "8", "64").endswith("use --batch-sizes 2,8,64")
    assert hint("--norms", "batch,", "group", "configs/base.yaml").endswith("use --norms batch,group")
    assert hint("c.yaml", "norm.type=group").endswith("use --set norm.type=group")
    assert hint("--set", "norm.type=group", "c.yaml") is None
    assert hint("--batch-sizes", "2", "base", exists=("base",)) is None  # an existing file is the CONFIG
    assert hint("norm=batch_bs=2_seed=0", exists=("norm=batch_bs=2_seed=0",)) is None  # a sweep point's run dir
