"""The reproduction configs say in docs/reproductions.md which runs they equal; check it."""

from normbench.config import apply_overrides, validate
from normbench.configfile import read_yaml

from conftest import REPO


def test_the_tuned_gn_config_is_the_sweep_base_at_12000_samples():
    tuned = validate(read_yaml(REPO / "configs/repro/gn_batch_sizes_tuned.yaml"), "tuned").model_dump()
    base = validate(apply_overrides(read_yaml(REPO / "configs/sweep_base.yaml"), ["max_samples=12000"]), "base").model_dump()
    assert {**tuned, "name": None} == {**base, "name": None}
    assert tuned["max_samples"] == 12000 and tuned["norm"]["groups"] is None  # group norm at its default groups
