"""Training and evaluation of one run: config + tensors in, run directory with CSVs out."""

from __future__ import annotations

import contextlib
import math
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normbench import diagnostics, distributed, fastpath, results
from normbench.config import Config, dump
from normbench.data import TensorData, dataset_shape, load_dataset
from normbench.errors import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, NormbenchError
from normbench.models import build_model, norm_layers
from normbench.norms import make_norm
from normbench.probe import Probe, check_probe
from normbench.progress import Reporter

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunOutcome:
    """How a run ended: status, exit code, its directory and final metrics."""

    status: str
    exit_code: int
    run_dir: Path
    reason: str = ""
    final: dict = field(default_factory=dict)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an unavailable device is a one-line error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NormbenchError("device: cuda was requested but torch finds no CUDA GPU here; use device: cpu or auto")
    if name == "mps" and not has_mps:
        raise NormbenchError("device: mps was requested but Apple's MPS backend is not available here; use device: cpu or auto")
    return torch.device(name)


def build_for_config(cfg: Config, input_shape, num_classes: int) -> nn.Module:
    """The config's model with the config's norm in every norm slot."""
    opts = cfg.norm.options()

    def norm_factory(channels: int, dims: int, layer: str) -> nn.Module:
        return make_norm(cfg.norm.type, channels, dims=dims, impl=cfg.norm.impl, layer=layer, **opts)

    return build_model(cfg.model, input_shape, num_classes, norm_factory, cfg.norm.placement)


def check_buildable(cfg: Config) -> None:
    """Build the model on the meta device (no memory) so layer-level errors surface before any work."""
    shape, classes = dataset_shape(cfg.dataset)
    with torch.device("meta"):
        model = build_for_config(cfg, shape, classes)
    check_probe(model, cfg.probe, shape)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: Config, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer the config names; fused kernels on CPU/CUDA (`fastpath.optimizer_options`)."""
    opt = cfg.optimizer
    extra = fastpath.optimizer_options(device) if device is not None else {}
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **extra)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, **extra)


def make_scheduler(cfg: Config, optimizer, total_steps: int):
    """Per-step schedule: cosine to 0 over the run, or x0.1 at 50 % and 75 % of the steps."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if cfg.schedule == "step":
        milestones = [max(1, total_steps // 2), max(1, (3 * total_steps) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return None


def plan_steps(cfg: Config, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, epochs) for the budget; the trailing partial batch is dropped."""
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise NormbenchError(f"batch_size={cfg.batch_size} is larger than the training set ({n_train} samples)")
    total = cfg.max_samples // cfg.batch_size if cfg.max_samples else cfg.epochs * steps_per_epoch
    return steps_per_epoch, total, math.ceil(total / steps_per_epoch)


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: str = "fp32"):
    """(mean cross-entropy, accuracy) over all of x in eval mode (running statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with autocast(x.device, precision):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb).float()  # (B, classes)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = len(x)
    return loss_sum.item() / n, correct.item() / n


def train(cfg: Config, data: TensorData, device: torch.device, run_dir: results.RunDir, reporter: Reporter,
          dist: distributed.DistContext | None = None) -> dict:
    """Train per the config, writing steps.csv and epochs.csv; returns the final metrics.

    Raises Diverged on a NaN/Inf loss. Host syncs happen only at logged steps and epoch ends.
    With `dist`, this process trains on its shard of every global batch under DDP.
    """
    seed_everything(cfg.seed)
    model = build_for_config(cfg, data.shape, data.num_classes).to(device)
    channels_last = fastpath.channels_last_on(cfg.channels_last, cfg.model, data.shape, device)
    model = fastpath.prepare_model(model, channels_last, reorder=not cfg.probe)  # the probe hooks layers as built
    data = fastpath.prepare_data(data, channels_last)
    net = dist.wrap(model) if dist else model  # distributed: DDP averages gradients over processes
    optimizer = make_optimizer(cfg, model.parameters(), device)
    n_train = len(data.train_y)
    steps_per_epoch, total_steps, epochs = plan_steps(cfg, n_train)
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    order = torch.Generator().manual_seed(cfg.seed)  # data order, independent of init
    batch = cfg.batch_size
    run_dir.update_meta(
        model_parameters=sum(p.numel() for p in model.parameters()),
        norm_layers=norm_layers(model),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs_planned=epochs,
        dropped_per_epoch=n_train - steps_per_epoch * batch,
        channels_last=channels_last,
        fast_path_rewrites=fastpath.rewrites(model),
        optimizer_impl=fastpath.optimizer_impl(device),
        norm_momentum_torch=cfg.norm.torch_momentum(),  # the momentum in PyTorch's convention, as used
    )
    probe = Probe(model, cfg.probe, run_dir.path) if cfg.probe else None
    probe_test_acc = lambda: evaluate(model, data.test_x, data.test_y, cfg.eval_batch_size, cfg.precision)[1]  # noqa: E731

    reporter.start(cfg.name, total_steps, epochs)
    step, samples_seen, train_time = 0, 0, 0.0
    run_start = time.perf_counter()
    final: dict = {}
    best_test_acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n_train, generator=order).to(device)
        epoch_steps = min(steps_per_epoch, total_steps - step)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        correct = torch.zeros((), device=device, dtype=torch.long)
        last_logged_step, last_logged_loss, last_logged_time = 0, 0.0, time.perf_counter()
        epoch_start = last_logged_time
        for i in range(epoch_steps):
            idx = perm[i * batch : (i + 1) * batch]
            if dist:  # this process's contiguous shard of the global batch
                idx = dist.shard(idx)
            xb, yb = data.train_x[idx], data.train_y[idx]  # (B, C, H, W), (B,)
            if probe:
                probe.before_step(step + 1)
            with autocast(device, cfg.precision):
                logits = net(xb)
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == yb).sum()
            step += 1
            samples_seen += batch
            if probe:
                probe.after_step(step, epoch, probe_test_acc)
            reporter.advance()
            if step % cfg.log_every == 0 or i == epoch_steps - 1:
                cumulative = distributed.global_item(loss_sum, dist, mean=True)  # the one host sync per logged step
                now = time.perf_counter()
                window = i + 1 - last_logged_step
                window_loss = (cumulative - last_logged_loss) / window
                speed = window * batch / max(now - last_logged_time, 1e-9)
                run_dir.steps.write({
                    "step": step, "epoch": epoch, "samples_seen": samples_seen, "train_loss": window_loss,
                    "lr": optimizer.param_groups[0]["lr"], "samples_per_s": speed,
                    "elapsed_s": now - run_start,
                })
                if not math.isfinite(window_loss):
                    raise Diverged(f"training loss became {window_loss} at step {step} (epoch {epoch})")
                reporter.log(epoch, window_loss, speed)
                last_logged_step, last_logged_loss, last_logged_time = i + 1, cumulative, now
        synchronize(device)
        epoch_s = time.perf_counter() - epoch_start
        train_time += epoch_s
        eval_start = time.perf_counter()
        if dist:  # rank 0's model; each process evaluates a shard of the test set
            test_loss, test_acc = distributed.evaluate_sharded(
                evaluate, model, data.test_x, data.test_y, cfg.eval_batch_size, cfg.precision, dist)
        else:
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, cfg.eval_batch_size, cfg.precision)
        eval_s = time.perf_counter() - eval_start
        extra = diagnostics.epoch_diagnostics(model, data, cfg, epoch, evaluate, lambda: autocast(device, cfg.precision))
        row = {
            "epoch": epoch, "samples_seen": samples_seen,
            "train_loss": distributed.global_item(loss_sum, dist, mean=True) / epoch_steps,
            "train_acc": distributed.global_item(correct, dist) / (epoch_steps * batch),
            "test_loss": test_loss, "test_acc": test_acc,
            "samples_per_s": epoch_steps * batch / epoch_s, "epoch_s": epoch_s, "eval_s": eval_s,
            "lr": optimizer.param_groups[0]["lr"], **extra,
        }
        run_dir.epochs.write(row)
        reporter.epoch(row, epochs)
        if not math.isfinite(row["train_loss"]) or not math.isfinite(test_loss):
            raise Diverged(f"loss became non-finite in epoch {epoch} (train {row['train_loss']}, test {test_loss})")
        best_test_acc = max(best_test_acc, test_acc)
        final = {
            "final_test_acc": test_acc, "final_test_loss": test_loss, "final_train_loss": row["train_loss"],
            "final_train_acc": row["train_acc"], "best_test_acc": best_test_acc, "epochs_done": epoch,
            "steps_done": step, "samples_seen": samples_seen, "train_s": train_time,
            "mean_samples_per_s": samples_seen / train_time,
        }
        run_dir.update_meta(**final)
    if probe:  # rows are flushed as written, so an early ending loses none
        probe.close()
    return final


def run(
    cfg: Config,
    results_dir: Path | str = "results",
    data_dir: Path | str | None = None,
    run_path: Path | None = None,
    replace_incomplete: bool = False,
    reporter: Reporter | None = None,
    data: TensorData | None = None,
    dist: distributed.DistContext | None = None,
) -> RunOutcome:
    """Run one config end to end. Config, device and data problems raise NormbenchError before
    anything is written; once the run directory exists, every ending is recorded in meta.json.
    With `dist` this is one rank of a data-parallel run; only rank 0 writes the run directory."""
    if cfg.pack > 1:  # K run directories, not one: the caller must take K outcomes
        raise NormbenchError(f"pack={cfg.pack} trains {cfg.pack} seeds; run it with normbench.packed_train.run_packed")
    reporter = reporter or Reporter()
    device = dist.device if dist else resolve_device(cfg.device)
    check_buildable(cfg)
    results_dir = results.ensure_writable(Path(results_dir))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if data is None:
        data = load_dataset(cfg.dataset, seed=cfg.seed, device=device, data_dir=data_dir)
    path = run_path or results.new_run_path(results_dir, cfg.name)
    if dist and not dist.is_main:  # the other ranks train along and write nothing
        try:
            final = train(cfg, data, device, distributed.NullRunDir(), reporter, dist)
        except Diverged as exc:
            return RunOutcome("diverged", EXIT_DIVERGED, path, str(exc))
        return RunOutcome("completed", EXIT_OK, path, "", final)
    world = dist.meta(cfg.batch_size) if dist else {"world_size": 1}
    try:
        run_dir = results.RunDir(
            path, dump(cfg), {"name": cfg.name, "environment": results.environment(device), "data": data.info, **world},
            replace_incomplete=replace_incomplete,
        )
    except OSError as exc:
        raise NormbenchError(f"cannot create run directory '{path}': {exc.strerror or exc}; pass --results-dir DIR") from None

    try:
        final = train(cfg, data, device, run_dir, reporter, dist)
    except Diverged as exc:
        run_dir.finish("diverged", reason=str(exc))
        return RunOutcome("diverged", EXIT_DIVERGED, run_dir.path, str(exc), _final(run_dir))
    except KeyboardInterrupt:
        run_dir.finish("interrupted", reason="interrupted by the user (Ctrl-C or SIGTERM)")
        return RunOutcome("interrupted", EXIT_INTERRUPTED, run_dir.path, "interrupted", _final(run_dir))
    except Exception as exc:  # recorded, not lost: the traceback goes beside the results
        log = run_dir.write_error(traceback.format_exc())
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        run_dir.finish("failed", reason=reason, error_log=log.name)
        return RunOutcome("failed", EXIT_ERROR, run_dir.path, f"{reason} (traceback in {log})", _final(run_dir))
    finally:
        reporter.finish()
    run_dir.finish("completed")
    return RunOutcome("completed", EXIT_OK, run_dir.path, "", final)


def _final(run_dir: results.RunDir) -> dict:
    return {k: v for k, v in run_dir.meta.items() if k.startswith("final_")}
