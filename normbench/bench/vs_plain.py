"""`normbench bench`: normbench's training path against the plain PyTorch loop, on the same work.

For each (batch size, norm) point both paths train the same model (same init, same optimizer)
on the same normalized pixels for the same number of steps:

- normbench: `train.run` itself (run directory, CSV logging, metrics, a rich progress bar
  rendered to /dev/null), its samples/s = the run's own training time (evaluation excluded);
- plain: `plain_loop.train_plain`, the pytorch/examples loop over a torchvision-style dataset
  with per-sample ToTensor + Normalize and a DataLoader, always fp32.

One short warm-up of each, then the two alternate `repeats` times in this process (so load from
other processes hits both alike); the table gives medians, min-max and the ratio of medians.
Peak memory: each path runs once more in a fresh subprocess; on CPU its peak resident set size
(ru_maxrss, which includes Python and torch themselves), on CUDA torch's peak allocated memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from normbench.bench import plain_loop
from normbench.bench.harness import (
    BenchData, bench_setup, each_point, load_bench_data, measure_alternating, null_rich_reporter, point_row, spread,
    spread_text,
)
from normbench.bench.harness import write_csv as write_bench_csv
from normbench.config import Config, to_dict, validate
from normbench.data import TensorData
from normbench.errors import NormbenchError

BENCH_COLUMNS = (
    "timestamp", "device", "device_name", "threads", "torch", "precision", "dataset", "model", "norm",
    "batch_size", "steps", "repeats",
    "normbench_samples_per_s", "normbench_min", "normbench_max",
    "plain_samples_per_s", "plain_min", "plain_max", "ratio",
    "normbench_peak_mib", "plain_peak_mib", "memory_ratio", "memory_kind",
)
MEMORY_STEPS = 50  # steps of the fresh-process run that measures peak memory


def time_normbench(cfg: Config, data: TensorData, reporter_factory) -> float:
    """samples/s of one `train.run` of cfg (training time only), in a throwaway results folder."""
    from normbench.train.runner import run

    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as folder:
        outcome = run(cfg, folder, data=data, reporter=reporter_factory())
    if outcome.status != "completed":
        raise NormbenchError(f"bench run {cfg.name} {outcome.status}: {outcome.reason}")
    return outcome.final["mean_samples_per_s"]


def time_plain(cfg: Config, bench_data: BenchData, device: torch.device, steps: int, test: bool = False) -> float:
    """samples/s of `steps` steps of the plain loop for cfg (model building excluded); with `test`,
    then the example's test() over the test split, as normbench's run evaluates after training."""
    model, optimizer = plain_loop.build_plain(cfg, bench_data.shape, bench_data.num_classes, device)
    loader = plain_loop.make_loader(bench_data.plain_dataset, cfg.batch_size, device, order_seed=cfg.seed)
    result = plain_loop.train_plain(model, optimizer, loader, device, steps)
    if test:
        test_loader = torch.utils.data.DataLoader(bench_data.plain_test, batch_size=cfg.eval_batch_size)
        plain_loop.test_plain(model, test_loader, device)
    return result.samples_per_s


def measure_memory(path: str, cfg: Config, stats: dict, data_dir=None) -> tuple[float, str]:
    """Peak memory (MiB) of a fresh process that loads the data and trains MEMORY_STEPS steps of `path`."""
    spec = {"path": path, "config": to_dict(cfg), "stats": stats, "data_dir": str(data_dir) if data_dir else None}
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-m", "normbench.bench.vs_plain", json.dumps(spec)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise NormbenchError(f"bench memory run ({path}, batch {cfg.batch_size}) failed: {tail}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_mib"], result["kind"]


def memory_worker(spec: dict) -> dict:
    """In a fresh process: load data, train MEMORY_STEPS steps of one path and evaluate on the test
    split (as a run does), report peak memory."""
    from normbench.runtime import resolve_device
    from normbench.train.progress import Reporter

    cfg = validate(spec["config"], "bench memory run")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    steps = min(MEMORY_STEPS, cfg.max_samples // cfg.batch_size)
    cfg = validate({**spec["config"], "max_samples": steps * cfg.batch_size}, "bench memory run")
    bench_data = load_bench_data(cfg, device, spec["data_dir"], paths=(spec["path"],), stats=spec["stats"])
    if spec["path"] == "normbench":
        time_normbench(cfg, bench_data.tensors, Reporter)
    else:
        time_plain(cfg, bench_data, device, steps, test=True)
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda max_memory_allocated"}
    return {"peak_mib": peak_rss_mib(), "kind": "process peak RSS"}


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: Linux's VmHWM (ru_maxrss is no use here: Linux
    carries the parent's peak over fork and exec, so every child would report the bench's own)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; macOS gives bytes


def memory_columns(cfg: Config, bench_data: BenchData, data_dir, progress=None) -> dict:
    """The peak-memory columns of a point: each path in a fresh process."""
    if progress:
        progress(f"batch {cfg.batch_size}, {cfg.norm.type}: peak memory (fresh processes)")
    ours, kind = measure_memory("normbench", cfg, bench_data.stats, data_dir)
    plain, _ = measure_memory("plain", cfg, bench_data.stats, data_dir)
    return {"normbench_peak_mib": ours, "plain_peak_mib": plain, "memory_ratio": ours / plain, "memory_kind": kind}


NOT_MEASURED = {"normbench_peak_mib": float("nan"), "plain_peak_mib": float("nan"), "memory_ratio": float("nan"),
                "memory_kind": "not measured"}


def run_bench(base: Config, batch_sizes: list[int], norms: list[str], steps: int, repeats: int,
              precision: str | None = None, data_dir=None, measure_mem: bool = True, progress=None) -> list[dict]:
    """Measure every (batch size, norm) point; one BENCH_COLUMNS row each."""
    device, env, stamp = bench_setup(base)
    bench_data = load_bench_data(base, device, data_dir)
    rows = []
    for norm, cfg, warm in each_point(base, batch_sizes, norms, steps, precision):
        ours, plain = measure_alternating(
            lambda c: time_normbench(c, bench_data.tensors, null_rich_reporter),
            lambda c: time_plain(c, bench_data, device, c.max_samples // c.batch_size),  # point_config's steps
            cfg, warm, repeats, progress, f"batch {cfg.batch_size}, {norm}")
        row = {**point_row(stamp, env, cfg, norm), "steps": steps, "repeats": repeats,
               **spread(ours, "normbench"), **spread(plain, "plain")}
        row["ratio"] = row["normbench_samples_per_s"] / row["plain_samples_per_s"]
        row.update(memory_columns(cfg, bench_data, data_dir, progress) if measure_mem else NOT_MEASURED)
        rows.append(row)
    return rows


def table(rows: list[dict]):
    """The rich table of bench rows: medians, min-max, ratio, peak memory."""
    from rich.table import Table

    first = rows[0] if rows else {}
    title = (f"normbench vs the plain PyTorch loop: {first.get('model', '')}, {first.get('dataset', '')}, "
             f"{first.get('steps', '')} steps x {first.get('repeats', '')} alternating repeats, "
             f"normbench in {first.get('precision', '')}, plain loop in fp32")
    out = Table(title=title)
    for name in ("batch", "norm", "normbench samples/s (min-max)", "plain samples/s (min-max)", "ratio",
                 "peak MiB normbench / plain"):
        out.add_column(name, justify="right")
    for r in rows:
        memory = (f"{r['normbench_peak_mib']:,.0f} / {r['plain_peak_mib']:,.0f} = {r['memory_ratio']:.2f}x"
                  if r["memory_kind"] != "not measured" else "-")
        out.add_row(str(r["batch_size"]), r["norm"], spread_text(r, "normbench"), spread_text(r, "plain"),
                    f"[bold]{r['ratio']:.2f}x[/]", memory)
    if rows:
        out.caption = f"peak memory: {first['memory_kind']}"
    return out


def write_csv(rows: list[dict], results_dir: Path) -> Path:
    """results_dir/bench/<UTC timestamp>.csv with BENCH_COLUMNS."""
    return write_bench_csv(rows, results_dir, BENCH_COLUMNS)


def time_plain_sequential(configs: list[Config], data_dir=None) -> float:
    """Wall seconds to train every config's full budget one after another with the plain loop
    (the example's train + test per epoch): the baseline for a sweep's wall time."""
    from normbench.runtime import resolve_device

    start = time.perf_counter()
    for cfg in configs:
        device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        plain_loop.run_plain(cfg, device, data_dir)
    return time.perf_counter() - start


if __name__ == "__main__":  # the fresh process of measure_memory
    print(json.dumps(memory_worker(json.loads(sys.argv[1]))))
