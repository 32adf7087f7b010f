"""Training with `pack: K`: seeds seed..seed+K-1 as one packed model, K ordinary run directories.

Each seed's run directory is what its separate `normbench run` would write: its own config.yaml
(its seed, pack: 1, so re-running it trains that seed alone), steps.csv and epochs.csv in the
usual schema, meta.json with the usual fields plus `pack` (size, index, seeds). Each seed keeps
its own init (`seed_everything(seed)` then `build_for_config`), its own data order (a generator
seeded with its seed) and its own synthetic data set; it is evaluated on the full test split.

A seed whose loss becomes NaN/Inf is recorded as diverged and its rows stop; the others go on
(the packed blocks never mix, so its NaNs reach no other seed).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from normbench import fastpath, results
from normbench.config import Config, dump, to_dict, validate
from normbench.data import TensorData, load_dataset
from normbench.errors import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, NormbenchError
from normbench.models import norm_layers
from normbench.packed import pack_inputs, pack_models, per_seed_loss
from normbench.progress import Reporter
from normbench.results import EPOCH_COLUMNS
from normbench.train import (
    RunOutcome, autocast, build_for_config, check_buildable, make_optimizer, make_scheduler, plan_steps,
    resolve_device, seed_everything, synchronize,
)


@dataclass
class Seed:
    """One packed seed: its config, data, run directory and how it stands."""

    cfg: Config
    data: TensorData
    run_dir: results.RunDir | None = None
    status: str = "running"  # running | diverged
    reason: str = ""
    final: dict | None = None


def seed_configs(cfg: Config) -> list[Config]:
    """The K configs a pack stands for: seeds seed..seed+K-1, each with pack: 1."""
    base = to_dict(cfg)
    return [validate({**base, "seed": cfg.seed + k, "pack": 1}, f"packed seed {cfg.seed + k}") for k in range(cfg.pack)]


@torch.no_grad()
def evaluate_packed(model, datas: list[TensorData], batch_size: int, precision: str = "fp32") -> list[tuple[float, float]]:
    """Per seed (mean cross-entropy, accuracy) over its whole test split, in eval mode."""
    was_training = model.training
    model.eval()
    test_x, test_y = [d.test_x for d in datas], torch.stack([d.test_y for d in datas], dim=1)  # y: (N, K)
    k, n = len(datas), len(test_y)
    loss_sum = torch.zeros(k, device=test_y.device, dtype=torch.float64)
    correct = torch.zeros(k, device=test_y.device, dtype=torch.long)
    with autocast(test_y.device, precision):
        for start in range(0, n, batch_size):
            xb = pack_inputs([x[start : start + batch_size] for x in test_x])  # (B, K*C, H, W)
            yb = test_y[start : start + batch_size]  # (B, K)
            logits = model(xb).float()  # (B, K, classes)
            loss_sum += per_seed_loss(logits, yb, reduction="sum").double()
            correct += (logits.argmax(2) == yb).sum(0)
    model.train(was_training)
    return [(loss_sum[i].item() / n, correct[i].item() / n) for i in range(k)]


def _alive(seeds: list[Seed]) -> list[int]:
    return [i for i, s in enumerate(seeds) if s.status == "running"]


def train_packed(cfg: Config, seeds: list[Seed], device: torch.device, reporter: Reporter) -> None:
    """Train the K seeds packed, writing each seed's steps.csv, epochs.csv and meta.json."""
    k, batch = len(seeds), cfg.batch_size
    models = []
    for s in seeds:
        seed_everything(s.cfg.seed)  # each seed's init is its separate run's
        models.append(build_for_config(s.cfg, s.data.shape, s.data.num_classes))
    model = pack_models(models).to(device)
    channels_last = fastpath.channels_last_on(cfg.channels_last, cfg.model, seeds[0].data.shape, device)
    model = fastpath.prepare_model(model, channels_last)
    datas = [s.data for s in seeds]
    for d in {id(d): d for d in datas}.values():  # a data set shared by all seeds is prepared once
        fastpath.prepare_data(d, channels_last)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    n_train = len(datas[0].train_y)
    steps_per_epoch, total_steps, epochs = plan_steps(cfg, n_train)
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    orders = [torch.Generator().manual_seed(s.cfg.seed) for s in seeds]  # each seed's data order
    for i, s in enumerate(seeds):
        s.run_dir.update_meta(
            model_parameters=sum(p.numel() for p in models[i].parameters()),
            norm_layers=norm_layers(models[i]), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            epochs_planned=epochs, dropped_per_epoch=n_train - steps_per_epoch * batch,
            channels_last=channels_last, optimizer_impl=fastpath.optimizer_impl(device),
            fast_path_rewrites=fastpath.rewrites(model),
            pack={"size": k, "index": i, "seeds": [x.cfg.seed for x in seeds]},
        )
    del models

    reporter.start(f"{cfg.name} x{k} packed", total_steps, epochs)
    step, samples_seen, train_time = 0, 0, 0.0
    run_start = time.perf_counter()
    best = [0.0] * k
    for epoch in range(1, epochs + 1):
        model.train()
        perms = [torch.randperm(n_train, generator=g).to(device) for g in orders]
        epoch_steps = min(steps_per_epoch, total_steps - step)
        loss_sum = torch.zeros(k, device=device)  # per seed, summed on the device: no sync per step
        correct = torch.zeros(k, device=device, dtype=torch.long)
        last_step, last_loss, last_time = 0, [0.0] * k, time.perf_counter()
        epoch_start = last_time
        for i in range(epoch_steps):
            idx = [p[i * batch : (i + 1) * batch] for p in perms]
            xb = pack_inputs([d.train_x[j] for d, j in zip(datas, idx)])  # (B, K*C, H, W)
            if channels_last:
                xb = fastpath.to_channels_last(xb)
            yb = torch.stack([d.train_y[j] for d, j in zip(datas, idx)], dim=1)  # (B, K)
            with autocast(device, cfg.precision):
                logits = model(xb)  # (B, K, classes)
                losses = per_seed_loss(logits, yb)  # (K,): each seed's mean cross-entropy
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # d(sum)/d(seed k's params) = seed k's own gradient
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += losses.detach()
            correct += (logits.argmax(2) == yb).sum(0)
            step += 1
            samples_seen += batch
            reporter.advance()
            if step % cfg.log_every == 0 or i == epoch_steps - 1:
                cumulative = loss_sum.tolist()  # the one host sync per logged step (a copy, not a view)
                now = time.perf_counter()
                window = i + 1 - last_step
                window_loss = [(c - b) / window for c, b in zip(cumulative, last_loss)]
                speed = window * batch / max(now - last_time, 1e-9)  # per seed; the pack does K times this
                for j in _alive(seeds):
                    seeds[j].run_dir.steps.write({
                        "step": step, "epoch": epoch, "samples_seen": samples_seen, "train_loss": window_loss[j],
                        "lr": optimizer.param_groups[0]["lr"], "samples_per_s": speed, "elapsed_s": now - run_start,
                    })
                    if not math.isfinite(window_loss[j]):
                        _diverge(seeds[j], f"training loss became {window_loss[j]} at step {step} (epoch {epoch})")
                alive = _alive(seeds)
                if not alive:
                    return
                reporter.log(epoch, sum(window_loss[j] for j in alive) / len(alive), speed * len(alive))
                last_step, last_loss, last_time = i + 1, cumulative, now
        synchronize(device)
        epoch_s = time.perf_counter() - epoch_start
        train_time += epoch_s
        eval_start = time.perf_counter()
        tests = evaluate_packed(model, datas, cfg.eval_batch_size, cfg.precision)
        eval_s = time.perf_counter() - eval_start
        epoch_loss, epoch_correct = loss_sum.tolist(), correct.tolist()
        for j in _alive(seeds):
            s = seeds[j]
            row = {
                "epoch": epoch, "samples_seen": samples_seen,
                "train_loss": epoch_loss[j] / epoch_steps, "train_acc": epoch_correct[j] / (epoch_steps * batch),
                "test_loss": tests[j][0], "test_acc": tests[j][1],
                "samples_per_s": epoch_steps * batch / epoch_s, "epoch_s": epoch_s, "eval_s": eval_s,
                "lr": optimizer.param_groups[0]["lr"],
            }
            # BN-diagnostic columns (batch-statistics / PreciseBN evaluation) are not computed for packs
            row.update({column: None for column in EPOCH_COLUMNS if column not in row})
            s.run_dir.epochs.write(row)
            reporter.epoch(row, epochs)
            if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
                _diverge(s, f"loss became non-finite in epoch {epoch} (train {row['train_loss']}, test {row['test_loss']})")
                continue
            best[j] = max(best[j], row["test_acc"])
            s.final = {
                "final_test_acc": row["test_acc"], "final_test_loss": row["test_loss"],
                "final_train_loss": row["train_loss"], "final_train_acc": row["train_acc"], "best_test_acc": best[j],
                "epochs_done": epoch, "steps_done": step, "samples_seen": samples_seen, "train_s": train_time,
                "mean_samples_per_s": samples_seen / train_time,
            }
            s.run_dir.update_meta(**s.final)
        if not _alive(seeds):
            return


def _diverge(seed: Seed, reason: str) -> None:
    seed.status, seed.reason = "diverged", reason
    seed.run_dir.finish("diverged", reason=reason)


def _final(run_dir: results.RunDir) -> dict:
    return {k: v for k, v in run_dir.meta.items() if k.startswith("final_")}


def run_packed(
    cfg: Config,
    results_dir: Path | str = "results",
    data_dir: Path | str | None = None,
    reporter: Reporter | None = None,
    data: TensorData | list[TensorData] | None = None,
) -> list[RunOutcome]:
    """Run the config's `pack` seeds as one packed model; one RunOutcome (and run directory) per seed.
    Problems before training raise NormbenchError with nothing written; later, every ending is recorded."""
    if cfg.pack < 2:
        raise NormbenchError(f"run_packed needs pack >= 2, got pack={cfg.pack}; use train.run for one seed")
    reporter = reporter or Reporter()
    device = resolve_device(cfg.device)
    check_buildable(cfg)
    results_dir = results.ensure_writable(Path(results_dir))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    configs = seed_configs(cfg)
    if isinstance(data, list):  # one data set per seed
        if len(data) != len(configs):
            raise NormbenchError(f"run_packed: {len(data)} data sets for pack={cfg.pack}")
        datas = data
    elif data is not None:
        datas = [data] * len(configs)
    elif cfg.dataset.name == "synthetic":  # its samples depend on the seed: each seed its own data
        datas = [load_dataset(c.dataset, seed=c.seed, device=device, data_dir=data_dir) for c in configs]
    else:
        shared = load_dataset(cfg.dataset, seed=cfg.seed, device=device, data_dir=data_dir)
        datas = [shared] * len(configs)
    seeds = [Seed(c, d) for c, d in zip(configs, datas)]
    env = results.environment(device)
    try:
        for s in seeds:
            path = results.new_run_path(results_dir, f"{s.cfg.name}-seed{s.cfg.seed}")
            s.run_dir = results.RunDir(path, dump(s.cfg), {"name": s.cfg.name, "environment": env, "data": s.data.info})
    except (OSError, NormbenchError) as exc:
        for s in seeds:
            if s.run_dir is not None:
                s.run_dir.finish("failed", reason=f"another packed seed's run directory could not be created: {exc}")
        raise NormbenchError(f"cannot create the packed run directories in '{results_dir}': {exc}") from None

    outcome: tuple[str, int, str] = ("completed", EXIT_OK, "")
    try:
        train_packed(cfg, seeds, device, reporter)
    except KeyboardInterrupt:
        outcome = ("interrupted", EXIT_INTERRUPTED, "interrupted by the user (Ctrl-C or SIGTERM)")
    except Exception as exc:  # recorded in every running seed's directory, not lost
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        outcome = ("failed", EXIT_ERROR, reason)
        trace = traceback.format_exc()
    finally:
        reporter.finish()
    outcomes = []
    for s in seeds:
        if s.status == "diverged":
            outcomes.append(RunOutcome("diverged", EXIT_DIVERGED, s.run_dir.path, s.reason, _final(s.run_dir)))
            continue
        status, code, reason = outcome
        if status == "failed":
            log = s.run_dir.write_error(trace)
            s.run_dir.finish("failed", reason=reason, error_log=log.name)
            reason = f"{reason} (traceback in {log})"
        else:
            s.run_dir.finish(status, **({"reason": reason} if reason else {}))
        outcomes.append(RunOutcome(status, code, s.run_dir.path, reason,
                                   s.final if status == "completed" else _final(s.run_dir)))
    return outcomes
