"""Data-parallel runs: one run over several processes with torch.distributed.

Two ways in, one code path:
  * `normbench run CONFIG --nproc N` spawns N local processes that meet on a free port of
    127.0.0.1 (`spawn`, `launch_run`);
  * `torchrun ... -m normbench run CONFIG` starts the processes itself; each finds its rank in
    the environment torchrun sets (`from_env`, `init_from_env`).
Backend: gloo on CPU, nccl on CUDA. `batch_size` is the GLOBAL batch: every process draws the
same seeded permutation and takes its contiguous 1/N of each global batch. Only rank 0 writes
the run directory. A failing rank makes its peers' collectives fail (or time out), the launcher
terminates whatever is left after a grace period, and every failing rank's error is reported.
"""

from __future__ import annotations

import inspect
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from normbench.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError, NormbenchError
from normbench.norms import NORMS

TIMEOUT_ENV = "NORMBENCH_DIST_TIMEOUT_S"  # seconds a collective may wait for a peer
DEFAULT_TIMEOUT_S = 300.0
GRACE_S = 30.0  # after one rank fails, how long the launcher lets the others end on their own


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    data_parallel = True

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    def meta(self, batch_size: int) -> dict:
        """What meta.json records about the process layout."""
        return {"world_size": self.world_size, "backend": self.backend, "per_process_batch_size": batch_size // self.world_size}

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch index (B,) -> (B / world_size,)."""
        per = len(index) // self.world_size
        return index[self.rank * per : (self.rank + 1) * per]

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` (gradients averaged over processes)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers (running statistics) are not broadcast each step; `sync_buffers` makes every
        # rank hold rank 0's before evaluation, which is what the default broadcast would give.
        ddp = nn.parallel.DistributedDataParallel
        # torch >= 2.14 names the switch forward_sync_buffers (broadcast_buffers is deprecated).
        newer = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        return ddp(model, device_ids=ids, **no_sync)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of `tensor` summed over all processes."""
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (running statistics) to every rank."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def reduce(self, tensor: torch.Tensor, mean: bool = False) -> list:
        """The tensor's values summed over all processes (averaged with `mean`), as a list."""
        total = self.sum(tensor.double())
        return (total / self.world_size if mean else total).tolist()

    def evaluate(self, model: nn.Module, evaluate: Callable, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) of rank 0's model over all of x: rank 0's buffers are broadcast,
        each rank runs evaluate(x_part, y_part) on a contiguous shard, then the sums are all-reduced."""
        self.sync_buffers(model)
        bounds = [len(x) * r // self.world_size for r in range(self.world_size + 1)]
        xs, ys = x[bounds[self.rank] : bounds[self.rank + 1]], y[bounds[self.rank] : bounds[self.rank + 1]]
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # [loss sum, correct, samples]
        if len(xs):
            loss, acc = evaluate(xs, ys)
            sums += torch.tensor([loss * len(xs), acc * len(xs), len(xs)], dtype=torch.float64, device=self.device)
        loss_sum, correct, n = self.sum(sums).tolist()
        return loss_sum / n, correct / n


def check_world(cfg, world_size: int) -> None:
    """Config-time checks for a run over `world_size` processes; ConfigError says what to change."""
    if world_size < 1:
        raise ConfigError(f"--nproc must be at least 1, got {world_size}")
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} (the global batch) is not divisible by {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    if world_size > 1 and cfg.probe is not None:
        raise ConfigError("probe records one process's activations and is not available in data-parallel runs; "
                          "drop probe or run without --nproc / torchrun")
    per = cfg.batch_size // world_size
    if NORMS[cfg.norm.type].batch_dependent and not cfg.norm.sync and per < 2 and world_size > 1:
        sync = " or norm.sync=true" if cfg.norm.type == "batch" else ""
        raise ConfigError(
            f"batch_size={cfg.batch_size} over {world_size} processes leaves {per} sample per process, and unsynced "
            f"{cfg.norm.type} norm needs >= 2 per process; use batch_size >= {2 * world_size}{sync}"
        )


def backend_for(device: torch.device) -> str:
    """nccl for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def timeout() -> timedelta:
    """How long a collective waits for a peer before failing ($NORMBENCH_DIST_TIMEOUT_S, default 300 s)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise NormbenchError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


def rank_device(device_type: str, local_rank: int) -> torch.device:
    """The device of a rank: cuda:LOCAL_RANK for CUDA (one GPU per process), else the type."""
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise NormbenchError(
                f"local rank {local_rank} needs GPU {local_rank} but torch sees {torch.cuda.device_count()} GPU(s); "
                "use at most one process per GPU"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device_type)


def from_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise NormbenchError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    return (rank, world_size, local_rank) if world_size > 1 else None


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (init_method env://)."""
    rank, world_size, local_rank = from_env()
    device = rank_device(device_type, local_rank)
    backend = backend_for(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout())
    return DistContext(rank, world_size, local_rank, device, backend)


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RankResult:
    """How one spawned rank ended: its return value, or a one-line error and an exit code."""

    rank: int
    ok: bool
    value: Any = None
    error: str = ""
    exit_code: int = 0
    details: str = ""  # the traceback of an unexpected exception


def _child(rank: int, world_size: int, port: int, device_type: str, threads: int, timeout_s: float,
           fn: Callable, args: tuple, results) -> None:
    """Body of a started process: join the group on 127.0.0.1:port, run fn(ctx, *args), report.

    Settings come as arguments, not from os.environ: a forkserver child has the environment of
    the moment the server started, not of the moment `spawn` was called.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    try:
        device = rank_device(device_type, rank)
        backend = backend_for(device)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        value = fn(DistContext(rank, world_size, rank, device, backend), *args)
        report = RankResult(rank, True, value)
    except NormbenchError as exc:
        report = RankResult(rank, False, error=exc.message, exit_code=exc.exit_code)
    except KeyboardInterrupt:
        report = RankResult(rank, False, error="interrupted", exit_code=EXIT_INTERRUPTED)
    except BaseException as exc:  # reported to the launcher, which reports every rank's failure
        report = RankResult(rank, False, error=f"{type(exc).__name__}: {exc}".splitlines()[0], exit_code=EXIT_ERROR,
                            details=traceback.format_exc())
    # Plain pickle: tensors travel by value, not through shared memory that dies with this process.
    results.put(pickle.dumps(report))
    shutdown()


def spawn(fn: Callable, world_size: int, args: tuple = (), device_type: str = "cpu",
          grace_s: float = GRACE_S) -> list[RankResult]:
    """Run fn(ctx, *args) in `world_size` fresh processes joined in one process group.

    Returns one RankResult per rank. When a rank fails, the others get `grace_s` seconds to end
    (their collectives fail once the peer is gone), then they are terminated. `fn` must be a
    module-level function (processes are not plain forks of this one). Each process gets
    cpu_count / world_size torch threads, unless OMP_NUM_THREADS says otherwise (a config's
    num_threads still applies inside the run).
    """
    context = _start_context()
    results = context.Queue()
    port = free_port()
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // world_size)
    settings = (port, device_type, threads, timeout().total_seconds(), fn, args, results)
    procs = [context.Process(target=_child, args=(rank, world_size, *settings)) for rank in range(world_size)]
    for proc in procs:
        proc.start()
    reports: dict[int, RankResult] = {}
    deadline, interrupted = None, False
    try:
        while len(reports) < world_size:
            try:
                _collect(results, reports, wait_s=0.2)
                if any(not r.ok for r in reports.values()) and deadline is None:
                    deadline = time.monotonic() + grace_s
                for rank, proc in enumerate(procs):
                    if rank not in reports and not proc.is_alive():
                        _collect(results, reports, wait_s=1.0)  # its report may still be in the pipe
                        if rank not in reports:
                            reports[rank] = RankResult(rank, False, error=_died(proc.exitcode), exit_code=EXIT_ERROR)
                if deadline is not None and time.monotonic() > deadline:
                    for rank, proc in enumerate(procs):
                        if rank not in reports:
                            proc.terminate()
                            reports[rank] = RankResult(rank, False, exit_code=EXIT_ERROR,
                                                       error=f"terminated {grace_s:.0f} s after another rank failed")
            except KeyboardInterrupt:  # Ctrl-C reached every process: let them record it, briefly
                interrupted = True
                deadline = min(deadline or float("inf"), time.monotonic() + 10)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if interrupted:
        raise KeyboardInterrupt
    return [reports[rank] for rank in range(world_size)]


def _start_context():
    """A forkserver where the platform has one (torch and normbench are imported once, in the
    server, and each process forks from it: later launches start in a fraction of a second),
    else spawn. Never a plain fork of a process whose torch may already run threads."""
    methods = torch.multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return torch.multiprocessing.get_context("spawn")
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "normbench.train.launch"])  # no effect once the server runs
    return context


def _collect(results, reports: dict, wait_s: float) -> None:
    """Move every report waiting in the queue into `reports`."""
    while True:
        try:
            report = pickle.loads(results.get(timeout=wait_s))
        except queue_module.Empty:
            return
        reports[report.rank] = report
        wait_s = 0.01


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"process killed by signal {-exitcode}"
    return f"process exited with code {exitcode} without reporting"


def describe_failures(reports: list[RankResult]) -> str:
    """Every failing rank's error in one line; ranks with the same error are listed together."""
    by_error: dict[str, list[int]] = {}
    for report in reports:
        if not report.ok:
            by_error.setdefault(report.error, []).append(report.rank)
    parts = [f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}: {error}" for error, ranks in by_error.items()]
    return "; ".join(parts)
