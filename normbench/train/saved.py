"""Saved models: `normbench eval RUN_DIR` loads a run's model.pt and evaluates it again, with
running statistics (the run's own final test evaluation, to the bit), with batch statistics at any
batch size, or after PreciseBN, on the test or training split; each result is appended to the
run directory's eval.csv."""

from __future__ import annotations

from pathlib import Path

import torch

from normbench import results
from normbench.config import Config, validate
from normbench.data import load_dataset
from normbench.errors import ConfigError, NormbenchError
from normbench.norms.diagnostics import batch_norm_modules, evaluate_batch_stats, precise_bn_statistics
from normbench.runtime import autocast, resolve_device
from normbench.train import fastpath
from normbench.train.build import build_for_config
from normbench.train.checkpoint import MODEL_FILE, load
from normbench.train.evaluate import evaluate

EVAL_FILE = "eval.csv"
EVAL_COLUMNS = ("time", "split", "statistics", "batch_size", "samples", "loss", "acc")
SPLITS = ("test", "val", "train")


def load_model(run_dir: Path, device: torch.device | None = None) -> tuple[Config, torch.nn.Module, torch.device]:
    """(config, model with the saved weights in eval mode, device) of a completed run."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise NormbenchError(f"'{run_dir}' has no {MODEL_FILE}: only completed runs save their model; "
                             "pass a run directory whose meta.json says completed")
    saved = load(path)
    cfg = validate(saved["config"], str(path))
    device = device or resolve_device(cfg.device)
    model = build_for_config(cfg, tuple(saved["input_shape"]), saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model = model.to(device)
    channels_last = fastpath.channels_last_on(cfg.channels_last, cfg.model, tuple(saved["input_shape"]), device)
    model = fastpath.prepare_model(model, channels_last, reorder=not cfg.probe)  # as the run trained it
    return cfg, model.eval(), device


def evaluate_saved(run_dir: Path, split: str = "test", batch_stats: bool = False, batch_size: int | None = None,
                   precise_bn: int | None = None, data_dir=None) -> dict:
    """Evaluate a run's saved model; returns the eval.csv row it appended."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    cfg, model, device = load_model(run_dir)
    if (batch_stats or precise_bn) and not batch_norm_modules(model):
        raise ConfigError(f"--batch-stats and --precise-bn need batch norm with running statistics; this run used "
                          f"norm {cfg.norm.type}")
    data = load_dataset(cfg.dataset, seed=cfg.seed, device=device, data_dir=data_dir)
    data = fastpath.prepare_data(data, fastpath.channels_last_on(cfg.channels_last, cfg.model, data.shape, device))
    x, y = {"test": (data.test_x, data.test_y), "val": (data.val_x, data.val_y), "train": (data.train_x, data.train_y)}[split]
    if x is None:
        raise ConfigError(f"run '{run_dir}' has no validation split (dataset.val_samples is 0); use --split test or train")
    context = lambda: autocast(device, cfg.precision)  # noqa: E731
    size = batch_size or (cfg.batch_size if batch_stats or precise_bn else cfg.eval_batch_size)
    if batch_stats:
        loss, acc = evaluate_batch_stats(model, x, y, size, context)
        statistics, samples = "batch", (len(x) // size) * size
    elif precise_bn:
        with precise_bn_statistics(model, data.train_x, precise_bn, size, cfg.seed, context):
            loss, acc = evaluate(model, x, y, cfg.eval_batch_size, cfg.precision)
        statistics, samples = f"precise_bn {precise_bn}", len(x)
    else:
        loss, acc = evaluate(model, x, y, size, cfg.precision)
        statistics, samples = "running", len(x)
    row = {"time": results.now_iso(), "split": split, "statistics": statistics, "batch_size": size,
           "samples": samples, "loss": loss, "acc": acc}
    append_row(Path(run_dir) / EVAL_FILE, row)
    return row


def append_row(path: Path, row: dict) -> None:
    """Append one row to eval.csv (its header written once)."""
    log = results.CsvLog(path, EVAL_COLUMNS, append=path.exists())
    log.write(row)
    log.close()
