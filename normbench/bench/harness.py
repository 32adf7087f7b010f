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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from normbench.bench import plain_loop
from normbench.config import Config, to_dict, validate
from normbench.data import TensorData, normalize_u8, dataset_shape, load_dataset
from normbench.errors import NormbenchError

BENCH_COLUMNS = (
    "timestamp", "device", "device_name", "threads", "torch", "precision", "dataset", "model", "norm",
    "batch_size", "steps", "repeats",
    "normbench_samples_per_s", "normbench_min", "normbench_max",
    "plain_samples_per_s", "plain_min", "plain_max", "ratio",
    "normbench_peak_mib", "plain_peak_mib", "memory_ratio", "memory_kind",
)
PATHS = ("normbench", "plain")
WARMUP_STEPS = 20
MEMORY_STEPS = 50  # steps of the fresh-process run that measures peak memory


@dataclass
class BenchData:
    """The same pixels for both paths: normbench's tensors, the plain loop's per-sample dataset."""

    tensors: TensorData | None  # what normbench trains on (normalized float32, on the device)
    plain_dataset: torch.utils.data.Dataset | None  # what the example iterates (uint8 -> ToTensor -> Normalize)
    plain_test: torch.utils.data.Dataset | None  # the example's test split
    stats: dict  # the normalization both use: per-channel mean and std in [0, 1] units
    shape: tuple[int, int, int]
    num_classes: int


def load_bench_data(cfg: Config, device: torch.device, data_dir=None, paths=PATHS, stats: dict | None = None) -> BenchData:
    """The data of `paths`, normalized alike. Real MNIST-format data: normbench's loader and
    torchvision's class with the example's transform; synthetic: its samples quantized to uint8
    pixels, then normalized exactly like a real dataset."""
    tensors = plain = plain_test = None
    if cfg.dataset.name == "synthetic":
        (train_u8, train_y), (test_u8, test_y) = plain_loop.synthetic_u8(cfg)
        if "normbench" in paths:
            train_x, test_x, stats = normalize_u8(train_u8, test_u8)
            info = {"source": "synthetic, quantized to uint8 pixels for the bench", "normalization": stats}
            tensors = TensorData(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device),
                                 cfg.dataset.num_classes, info)
    elif cfg.dataset.name in ("fashion-mnist", "mnist"):
        if "normbench" in paths:
            tensors = load_dataset(cfg.dataset, seed=cfg.seed, device=device, data_dir=data_dir)
            stats = tensors.info["normalization"]
    else:
        raise NormbenchError(f"normbench bench runs on fashion-mnist, mnist or synthetic, not {cfg.dataset.name}")
    if "plain" in paths:
        plain, plain_test, stats = plain_loop.make_datasets(cfg, stats, data_dir)
    shape, classes = dataset_shape(cfg.dataset)
    return BenchData(tensors, plain, plain_test, stats, shape, classes)


def point_config(base: Config, batch_size: int, norm: str, steps: int, precision: str | None) -> Config:
    """The base config at one bench point: `steps` steps of `batch_size` with `norm`."""
    data = to_dict(base)
    data.update(batch_size=batch_size, max_samples=steps * batch_size, name=f"bench-{norm}-b{batch_size}")
    data["norm"] = {**data["norm"], "type": norm}
    if precision is not None:
        data["precision"] = precision
    return validate(data, "bench point")


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


def null_rich_reporter():
    """The progress bar `normbench run` shows, rendered (and refreshed) into /dev/null."""
    from rich.console import Console

    from normbench.train.progress import RichReporter

    return RichReporter(console=Console(file=open(os.devnull, "w"), force_terminal=True, width=120))


def _summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def measure_memory(path: str, cfg: Config, stats: dict, data_dir=None) -> tuple[float, str]:
    """Peak memory (MiB) of a fresh process that loads the data and trains MEMORY_STEPS steps of `path`."""
    spec = {"path": path, "config": to_dict(cfg), "stats": stats, "data_dir": str(data_dir) if data_dir else None}
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-m", "normbench.bench.harness", json.dumps(spec)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise NormbenchError(f"bench memory run ({path}, batch {cfg.batch_size}) failed: {tail}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_mib"], result["kind"]


def _memory_worker(spec: dict) -> dict:
    """In a fresh process: load data, train MEMORY_STEPS steps of one path and evaluate on the test
    split (as a run does), report peak memory."""
    from normbench.train.progress import Reporter
    from normbench.runtime import resolve_device

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


def bench_setup(base: Config) -> tuple[torch.device, dict, str]:
    """The bench's device (threads set as the config asks), its environment facts and a UTC timestamp."""
    from normbench.kernels.fused_bn_pool import ensure_built
    from normbench.results import environment
    from normbench.runtime import resolve_device

    device = resolve_device(base.device)
    if base.num_threads:
        torch.set_num_threads(base.num_threads)
    if device.type == "cpu":  # a kernel compile (when one is due) must not fall inside a timed run
        ensure_built()
    return device, environment(device), datetime.now(timezone.utc).isoformat(timespec="seconds")


def measure_alternating(first, second, cfg: Config, warm: Config, repeats: int, progress=None,
                        label: str = "") -> tuple[list[float], list[float]]:
    """One warm-up of each measurement (`first(warm)`, `second(warm)`), then `repeats` alternating
    measurements of cfg, so load from other processes hits both alike; their two lists of results."""
    if progress:
        progress(f"{label}: warm-up")
    first(warm)
    second(warm)
    results: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        if progress:
            progress(f"{label}: repeat {r + 1}/{repeats}")
        results[0].append(first(cfg))
        results[1].append(second(cfg))
    return results


def point_row(stamp: str, env: dict, cfg: Config, norm: str) -> dict:
    """The columns every bench row starts with: when, where, and which point."""
    return {
        "timestamp": stamp, "device": env["device"], "device_name": env["device_name"],
        "threads": env["threads"], "torch": env["torch"], "precision": cfg.precision,
        "dataset": cfg.dataset.name, "model": cfg.model, "norm": norm, "batch_size": cfg.batch_size,
    }


def run_bench(base: Config, batch_sizes: list[int], norms: list[str], steps: int, repeats: int,
              precision: str | None = None, data_dir=None, measure_mem: bool = True, progress=None) -> list[dict]:
    """Measure every (batch size, norm) point; one BENCH_COLUMNS row each."""
    device, env, stamp = bench_setup(base)
    bench_data = load_bench_data(base, device, data_dir)
    rows = []
    for batch_size in batch_sizes:
        for norm in norms:
            cfg = point_config(base, batch_size, norm, steps, precision)
            warm = point_config(base, batch_size, norm, min(steps, WARMUP_STEPS), precision)
            ours, plain = measure_alternating(
                lambda c: time_normbench(c, bench_data.tensors, null_rich_reporter),
                lambda c: time_plain(c, bench_data, device, c.max_samples // c.batch_size),  # point_config's steps
                cfg, warm, repeats, progress, f"batch {batch_size}, {norm}")
            (o_med, o_min, o_max), (p_med, p_min, p_max) = _summary(ours), _summary(plain)
            mem_ours = mem_plain = float("nan")
            kind = "not measured"
            if measure_mem:
                if progress:
                    progress(f"batch {batch_size}, {norm}: peak memory (fresh processes)")
                mem_ours, kind = measure_memory("normbench", cfg, bench_data.stats, data_dir)
                mem_plain, _ = measure_memory("plain", cfg, bench_data.stats, data_dir)
            rows.append({
                **point_row(stamp, env, cfg, norm), "steps": steps, "repeats": repeats,
                "normbench_samples_per_s": o_med, "normbench_min": o_min, "normbench_max": o_max,
                "plain_samples_per_s": p_med, "plain_min": p_min, "plain_max": p_max, "ratio": o_med / p_med,
                "normbench_peak_mib": mem_ours, "plain_peak_mib": mem_plain,
                "memory_ratio": mem_ours / mem_plain if measure_mem else float("nan"), "memory_kind": kind,
            })
    return rows


def environment_line(base: Config) -> str:
    """The header every bench prints: what ran where (CPU model, threads, versions, device)."""
    from normbench.results import environment
    from normbench.runtime import resolve_device

    device = resolve_device(base.device)
    if base.num_threads:
        torch.set_num_threads(base.num_threads)
    env = environment(device)
    commit = env.get("git_commit", "")[:10] + ("+dirty" if env.get("git_dirty") else "")
    return (f"normbench {env['normbench']} bench | {env['device']}: {env['device_name']} | {env['cpu_count']} CPUs, "
            f"{env['threads']} torch threads | torch {env['torch']} | torchvision {env['torchvision']} | "
            f"Python {env['python']} | {env['host']}" + (f" | git {commit}" if commit else ""))


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
        out.add_row(
            str(r["batch_size"]), r["norm"],
            f"{r['normbench_samples_per_s']:,.0f} ({r['normbench_min']:,.0f}-{r['normbench_max']:,.0f})",
            f"{r['plain_samples_per_s']:,.0f} ({r['plain_min']:,.0f}-{r['plain_max']:,.0f})",
            f"[bold]{r['ratio']:.2f}x[/]", memory,
        )
    if rows:
        out.caption = f"peak memory: {first['memory_kind']}"
    return out


def write_csv(rows: list[dict], results_dir: Path, columns: tuple[str, ...] = BENCH_COLUMNS, prefix: str = "") -> Path:
    """results_dir/bench/<prefix><UTC timestamp>.csv with `columns` (BENCH_COLUMNS by default)."""
    from normbench.results import CsvLog, ensure_writable

    folder = ensure_writable(Path(results_dir) / "bench")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path, k = folder / f"{prefix}{stamp}.csv", 1
    while path.exists():
        k += 1
        path = folder / f"{prefix}{stamp}-{k}.csv"
    log = CsvLog(path, columns)
    for row in rows:
        log.write(row)
    log.close()
    return path


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
    print(json.dumps(_memory_worker(json.loads(sys.argv[1]))))
