"""What every `normbench bench` shares: its points, its data, the warm-up-then-alternate
measurement, the leading columns of a row, the environment header and the CSV it writes.

vs_plain.py measures normbench's run against the plain PyTorch loop with these pieces, pack.py
K packed seeds against K sequential runs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from normbench.bench import plain_loop
from normbench.config import Config, apply_overrides, load_config, to_dict, validate
from normbench.data import TensorData, dataset_shape, load_dataset, normalize_u8
from normbench.errors import NormbenchError

PATHS = ("normbench", "plain")
WARMUP_STEPS = 20


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


def bench_base(config_path: Path | None, overrides: list[str]) -> Config:
    """The bench's base config: the file at `config_path` or the built-in one (name: bench), `--set` applied."""
    if config_path is not None:
        return load_config(config_path, overrides)
    return validate(apply_overrides({"name": "bench"}, overrides), "the built-in bench config")


def point_config(base: Config, batch_size: int, norm: str, steps: int, precision: str | None = None) -> Config:
    """The base config at one bench point: `steps` steps of `batch_size` with `norm`."""
    data = to_dict(base)
    data.update(batch_size=batch_size, max_samples=steps * batch_size, name=f"bench-{norm}-b{batch_size}")
    data["norm"] = {**data["norm"], "type": norm}
    if precision is not None:
        data["precision"] = precision
    return validate(data, "bench point")


def each_point(base: Config, batch_sizes, norms, steps: int, precision: str | None = None):
    """(norm, the point's config, its warm-up config) for every (batch size, norm), batch sizes outermost."""
    for batch_size in batch_sizes:
        for norm in norms:
            yield (norm, point_config(base, batch_size, norm, steps, precision),
                   point_config(base, batch_size, norm, min(steps, WARMUP_STEPS), precision))


def null_rich_reporter():
    """The progress bar `normbench run` shows, rendered (and refreshed) into /dev/null."""
    from rich.console import Console

    from normbench.train.progress import RichReporter

    return RichReporter(console=Console(file=open(os.devnull, "w"), force_terminal=True, width=120))


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


def environment_line(base: Config) -> str:
    """The header every bench prints: what ran where (CPU model, threads, versions, device)."""
    _, env, _ = bench_setup(base)
    commit = env.get("git_commit", "")[:10] + ("+dirty" if env.get("git_dirty") else "")
    return (f"normbench {env['normbench']} bench | {env['device']}: {env['device_name']} | {env['cpu_count']} CPUs, "
            f"{env['threads']} torch threads | torch {env['torch']} | torchvision {env['torchvision']} | "
            f"Python {env['python']} | {env['host']}" + (f" | git {commit}" if commit else ""))


ISA_FEATURES = (  # (name shown, flag in /proc/cpuinfo): what decides the CPU kernels' speed
    ("AVX512F", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16"), ("AMX-TILE", "amx_tile"),
    ("AVX2", "avx2"),
)


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_line(cpuinfo: str) -> str:
    """Two lines from the text of /proc/cpuinfo: `CPU: <model>` and `ISA: AVX512F yes, AVX512-BF16
    no, ...`; "unknown" where the text has no `model name` or `flags` line."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or "unknown model"
    if "flags" not in fields:
        return f"CPU: {model}\nISA: unknown (no flags in /proc/cpuinfo)"
    flags = set(fields["flags"].split())
    return f"CPU: {model}\nISA: " + ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in ISA_FEATURES)


def progress_total(points: int, repeats: int, memory: bool) -> int:
    """How many times a bench calls its `progress` callback: per point a warm-up, each repeat and,
    with `memory`, the peak-memory runs."""
    return points * (1 + repeats + int(memory))


@contextlib.contextmanager
def progress_bar(console, total: int):
    """A rich progress bar on `console` while a bench measures; yields the `progress(text)` callback
    the benches call before each measurement (the text names it). On a console that is not a
    terminal (piped output) it shows nothing, so the output holds only the header and tables."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
    with bar:
        task = bar.add_task("measuring", total=total)
        started = [0]

        def progress(text: str) -> None:
            bar.update(task, description=text, completed=started[0])
            started[0] += 1

        yield progress
        bar.update(task, completed=total)


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


def spread(values: list[float], path: str) -> dict:
    """A path's repeated samples/s as row columns: `<path>_samples_per_s` (the median), `<path>_min`, `<path>_max`."""
    return {f"{path}_samples_per_s": statistics.median(values), f"{path}_min": min(values), f"{path}_max": max(values)}


def spread_text(row: dict, path: str) -> str:
    """A path's median samples/s and its range as a table shows them: `1,234 (1,200-1,250)`."""
    return f"{row[f'{path}_samples_per_s']:,.0f} ({row[f'{path}_min']:,.0f}-{row[f'{path}_max']:,.0f})"


def write_csv(rows: list[dict], results_dir: Path, columns: tuple[str, ...], prefix: str = "") -> Path:
    """results_dir/bench/<prefix><UTC timestamp>.csv with `columns`."""
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
