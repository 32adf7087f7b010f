"""`normbench bench --pack K`: K seeds trained packed against the same K seeds run one after another.

For each (batch size, norm) point, on the same data and the same budget (`steps` steps per seed):

- sequential: K `train.run` runs, seeds seed..seed+K-1 (run directories in a throwaway folder);
- packed: one `train.runner.run_packed` with pack: K.

samples/s = K * steps * batch / training time (the runs' own `train_s`: evaluation excluded, as in
the plain-loop bench). One warm-up of each, then `repeats` alternating measurements in this process;
the table gives medians, min-max and the speedup = packed median / sequential median.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from normbench.bench.harness import (
    bench_setup, each_point, load_bench_data, measure_alternating, null_rich_reporter, point_row, spread, spread_text,
)
from normbench.bench.harness import write_csv as write_bench_csv
from normbench.config import Config, to_dict, validate
from normbench.data import TensorData
from normbench.errors import NormbenchError

PACK_COLUMNS = (
    "timestamp", "device", "device_name", "threads", "torch", "precision", "dataset", "model", "norm",
    "batch_size", "pack", "steps", "repeats",
    "sequential_samples_per_s", "sequential_min", "sequential_max",
    "packed_samples_per_s", "packed_min", "packed_max", "speedup",
)


def packed_config(cfg: Config, pack: int) -> Config:
    """cfg with `pack` seeds; a config pack cannot train exactly is a ConfigError here."""
    return validate({**to_dict(cfg), "pack": pack, "name": f"{cfg.name}-pack{pack}"}, f"bench point with pack={pack}")


def time_sequential(cfg: Config, pack: int, data: TensorData) -> float:
    """samples/s of `pack` separate runs of cfg, seeds cfg.seed.., one after another (training time only)."""
    from normbench.train.runner import run

    samples, seconds = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as folder:
        for k in range(pack):
            seed_cfg = validate({**to_dict(cfg), "seed": cfg.seed + k}, "bench seed")
            outcome = run(seed_cfg, folder, data=data, reporter=null_rich_reporter())
            if outcome.status != "completed":
                raise NormbenchError(f"bench run {seed_cfg.name} seed {seed_cfg.seed} {outcome.status}: {outcome.reason}")
            samples += outcome.final["samples_seen"]
            seconds += outcome.final["train_s"]
    return samples / seconds


def time_packed(cfg: Config, data: TensorData) -> float:
    """samples/s of one packed run of cfg's `pack` seeds (all seeds' samples, training time only)."""
    from normbench.train.runner import run_packed

    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as folder:
        outcomes = run_packed(cfg, folder, data=data, reporter=null_rich_reporter())
    bad = [o for o in outcomes if o.status != "completed"]
    if bad:
        raise NormbenchError(f"bench packed run {cfg.name} {bad[0].status}: {bad[0].reason}")
    final = outcomes[0].final
    return len(outcomes) * final["samples_seen"] / final["train_s"]


def run_pack_bench(base: Config, batch_sizes: list[int], norms: list[str], steps: int, repeats: int, pack: int,
                   data_dir=None, progress=None) -> list[dict]:
    """Measure every (batch size, norm) point packed vs sequential; one PACK_COLUMNS row each."""
    device, env, stamp = bench_setup(base)
    data = load_bench_data(base, device, data_dir, paths=("normbench",)).tensors
    rows = []
    for norm, cfg, warm in each_point(base, batch_sizes, norms, steps):
        sequential, packed = measure_alternating(
            lambda c: time_sequential(c, pack, data), lambda c: time_packed(packed_config(c, pack), data),
            cfg, warm, repeats, progress, f"batch {cfg.batch_size}, {norm}, pack {pack}")
        row = {**point_row(stamp, env, cfg, norm), "pack": pack, "steps": steps, "repeats": repeats,
               **spread(sequential, "sequential"), **spread(packed, "packed")}
        row["speedup"] = row["packed_samples_per_s"] / row["sequential_samples_per_s"]
        rows.append(row)
    return rows


def table(rows: list[dict]):
    """The rich table of pack bench rows: medians, min-max, speedup."""
    from rich.table import Table

    first = rows[0] if rows else {}
    out = Table(title=(f"{first.get('pack', '')} seeds packed vs run one after another: {first.get('model', '')}, "
                       f"{first.get('dataset', '')}, {first.get('steps', '')} steps per seed x "
                       f"{first.get('repeats', '')} alternating repeats, {first.get('precision', '')}"))
    for name in ("batch", "norm", "sequential samples/s (min-max)", "packed samples/s (min-max)", "speedup"):
        out.add_column(name, justify="right")
    for r in rows:
        out.add_row(str(r["batch_size"]), r["norm"], spread_text(r, "sequential"), spread_text(r, "packed"),
                    f"[bold]{r['speedup']:.2f}x[/]")
    out.caption = "samples/s = all seeds' training samples / training time (evaluation excluded)"
    return out


def write_csv(rows: list[dict], results_dir: Path) -> Path:
    """results_dir/bench/pack-<UTC timestamp>.csv with PACK_COLUMNS."""
    return write_bench_csv(rows, results_dir, PACK_COLUMNS, prefix="pack-")
