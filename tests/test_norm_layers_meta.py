"""meta.json's `norm_layers`: each norm layer's type, channels and, for group-style norms, the
groups actually used (the default rule or norm.groups), written by a real CLI run."""

import pytest

from normbench.cli import app
from normbench.results import read_meta

# the tiny cnn's norm layers: conv1 (32 channels), conv2 (64), fc3 (128)
CHANNELS = {"norm1": 32, "norm2": 64, "norm3": 128}


def norm_rows(runner, write_config, tmp_path, *sets: str) -> list[list[dict]]:
    """Train the tiny config with `--set` overrides; meta.json's norm_layers of each run directory."""
    args = ["run", str(write_config()), "--results-dir", str(tmp_path / "r")]
    for override in sets:
        args += ["--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return [read_meta(run_dir)["norm_layers"] for run_dir in sorted((tmp_path / "r" / "runs").iterdir())]


@pytest.mark.parametrize(
    "sets, groups",
    [
        (["norm.type=group"], {"norm1": 8, "norm2": 16, "norm3": 8}),  # default: >= 4 channels, >= 16 features
        (["norm.type=group", "norm.groups=32"], {"norm1": 32, "norm2": 32, "norm3": 32}),  # explicit wins
        (["norm.type=ws_group", "norm.groups=2"], {"norm1": 2, "norm2": 2, "norm3": 2}),
    ],
)
def test_meta_lists_each_group_norm_layers_resolved_groups(runner, write_config, tmp_path, sets, groups):
    (rows,) = norm_rows(runner, write_config, tmp_path, *sets)
    norm_type = sets[0].split("=")[1]
    got = {r["layer"]: (r["type"], r["channels"], r["groups"], r["channels_per_group"]) for r in rows}
    want = {layer: (norm_type, c, groups[layer], c // groups[layer]) for layer, c in CHANNELS.items()}
    assert got == want


def test_meta_of_a_packed_group_norm_run_lists_the_lane_layers(runner, write_config, tmp_path):
    seeds = norm_rows(runner, write_config, tmp_path, "norm.type=group", "pack=2")
    assert len(seeds) == 2
    for rows in seeds:  # one run directory per seed, each listing one seed's layers, not the packed ones
        assert [(r["layer"], r["channels"], r["groups"]) for r in rows] == [("norm1", 32, 8), ("norm2", 64, 16), ("norm3", 128, 8)]


def test_meta_lists_type_and_channels_but_no_groups_for_other_norms(runner, write_config, tmp_path):
    (rows,) = norm_rows(runner, write_config, tmp_path, "norm.type=layer")
    assert [(r["layer"], r["type"], r["channels"]) for r in rows] == [(k, "layer", c) for k, c in CHANNELS.items()]
    assert not any("groups" in r for r in rows)  # layer norm on maps is GroupNorm(1, C), but takes no norm.groups
