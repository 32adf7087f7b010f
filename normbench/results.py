"""Run directories and the CSV schema. Every writer and reader of results uses this module.

A run directory holds:
  config.yaml  the resolved config
  meta.json    status, times, versions, device, data facts, final metrics (replaced atomically)
  steps.csv    one row every `log_every` steps (STEP_COLUMNS)
  epochs.csv   one row per epoch (EPOCH_COLUMNS)
  error.log    the traceback, when a run failed
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from normbench.errors import NormbenchError

STEP_COLUMNS = ("step", "epoch", "samples_seen", "train_loss", "lr", "samples_per_s", "elapsed_s")
EPOCH_COLUMNS = (
    "epoch", "samples_seen", "train_loss", "train_acc", "train_eval_acc", "val_loss", "val_acc", "test_loss",
    "test_acc", "samples_per_s", "epoch_s", "eval_s", "lr",
    # batch-norm diagnostics (normbench/norms/diagnostics.py); empty for other norms
    "test_loss_batch_stats", "test_acc_batch_stats", "test_loss_precise_bn", "test_acc_precise_bn",
)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no block left for new data: rewrite in place, or say so
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
CONFIG_FILE, META_FILE, STEPS_FILE, EPOCHS_FILE, ERROR_FILE = (
    "config.yaml", "meta.json", "steps.csv", "epochs.csv", "error.log",
)
SWEEP_FILE, INDEX_FILE = "sweep.yaml", "index.csv"  # a sweep directory's spec and its one row per point


def file_mode() -> int:
    """The mode a plain open() gives a new file under the current umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _clean(value):
    """JSON-safe: NaN/Inf become null (json.dump would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`. On a full
    disk, an existing file is rewritten in place instead, compactly, if that needs no new space."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        _rewrite_when_full(path, obj, exc)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # as every other file of the run (mkstemp creates 0600)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        _rewrite_when_full(path, obj, exc)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rewrite_when_full(path: Path, obj, exc: OSError) -> None:
    """Overwrite `path` in place with compact JSON when the disk is full, else raise `exc`.

    Only where the text fits in the file's current size: overwriting bytes a file already has
    needs no free space, so the write cannot stop halfway for want of it."""
    text = json.dumps(_clean(obj), separators=(",", ":")) + "\n"
    try:
        fits = exc.errno in DISK_FULL and len(text.encode("utf-8")) <= path.stat().st_size
    except OSError:
        fits = False
    if not fits:
        raise exc
    with open(path, "r+", encoding="utf-8") as f:
        f.write(text)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def read_meta(run_dir: Path) -> dict | None:
    """meta.json of a run directory, or None if it is missing, unreadable or not a JSON object."""
    try:
        meta = json.loads((Path(run_dir) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def format_value(value) -> str:
    """A CSV cell: floats in full precision (nan, inf as words), None as empty."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else str(value))
    return "" if value is None else str(value)


class CsvLog:
    """An append-only CSV with a fixed column tuple; each row is flushed as it is written."""

    def __init__(self, path: Path, columns: tuple[str, ...], append: bool = False):
        self.path, self.columns = Path(path), columns
        self._file = open(self.path, "a" if append else "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        if not append:
            self._writer.writerow(columns)
        self._file.flush()

    def write(self, row: dict) -> None:
        """Write one row; keys must be exactly the schema's columns."""
        if set(row) != set(self.columns):
            raise ValueError(f"{self.path.name}: row keys {sorted(row)} differ from schema {self.columns}")
        self._writer.writerow([format_value(row[c]) for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        """Flush to disk and close; a failed flush (a full disk) still closes the file: the row
        that did not fit already raised when it was written."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove it writable, or raise a one-line NormbenchError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise NormbenchError(
            f"results directory '{folder}' is not writable ({exc.strerror or exc}); pass --results-dir DIR with a writable folder"
        ) from None
    return folder


def new_run_path(results_dir: Path, name: str) -> Path:
    """A fresh run directory, created empty: results_dir/runs/<name>-<UTC time>[-k]. Choosing the
    name and creating the folder are one step (mkdir fails if another process took the name, and
    the next suffix is tried), so two runs started in the same second both get their own."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(results_dir) / "runs" / f"{name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    path, k = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")


def _git_info() -> dict:
    """Commit and dirty flag of the checkout normbench runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def environment(device) -> dict:
    """Versions, host and device facts for meta.json and benchmark headers."""
    import torch
    import torchvision

    from normbench.version import __version__

    device = torch.device(device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_model()
    return {
        "normbench": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        **_git_info(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class RunDir:
    """One run's directory: config, meta (atomic), step and epoch CSVs."""

    def __init__(self, path: Path, config_yaml: str, meta: dict, replace_incomplete: bool = False):
        self.path = Path(path)
        prepare_run_path(self.path, replace_incomplete)
        self.path.mkdir(parents=True, exist_ok=True)  # new_run_path creates it empty
        logs = []
        try:
            (self.path / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
            self.meta = {"status": "running", "start_time": now_iso(), "end_time": None, **meta}
            write_json_atomic(self.path / META_FILE, self.meta)
            logs.append(CsvLog(self.path / STEPS_FILE, STEP_COLUMNS))
            logs.append(CsvLog(self.path / EPOCHS_FILE, EPOCH_COLUMNS))
        except BaseException:  # e.g. a full disk: no half-made run that says `running` is left
            for log in logs:
                log.close()
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self.steps, self.epochs = logs

    @classmethod
    def reopen(cls, path: Path, steps_done: int, epochs_done: int) -> "RunDir":
        """An existing run directory continued from a checkpoint: its CSVs cut back to the
        checkpoint (rows after step `steps_done` / epoch `epochs_done` dropped), then appended to;
        meta.json says running again and lists the resume."""
        run_dir = cls.__new__(cls)
        run_dir.path = Path(path)
        run_dir.meta = read_meta(path) or {}
        truncate_csv(run_dir.path / STEPS_FILE, "step", steps_done)
        truncate_csv(run_dir.path / EPOCHS_FILE, "epoch", epochs_done)
        resumes = [*run_dir.meta.get("resumes", []), {"time": now_iso(), "from_step": steps_done,
                                                       "after_status": run_dir.meta.get("status")}]
        run_dir.meta.update(status="running", end_time=None, reason=None, resumes=resumes, pid=os.getpid())
        for key in ("error_log", "rank_errors"):
            run_dir.meta.pop(key, None)
        write_json_atomic(run_dir.path / META_FILE, run_dir.meta)
        run_dir.steps = CsvLog(run_dir.path / STEPS_FILE, STEP_COLUMNS, append=True)
        run_dir.epochs = CsvLog(run_dir.path / EPOCHS_FILE, EPOCH_COLUMNS, append=True)
        return run_dir

    def update_meta(self, **fields) -> None:
        """Merge `fields` into meta.json, replacing the file atomically."""
        self.meta.update(fields)
        write_json_atomic(self.path / META_FILE, self.meta)

    def finish(self, status: str, **fields) -> None:
        """Close the CSVs and record the final status and end time."""
        assert status in STATUSES, status
        self.steps.close()
        self.epochs.close()
        self.update_meta(status=status, end_time=now_iso(), **fields)

    def write_error(self, text: str) -> Path | None:
        """Save a traceback beside the results; None (and no empty error.log) if the disk is full."""
        path = self.path / ERROR_FILE
        try:
            path.write_text(text, encoding="utf-8")
        except OSError:
            path.unlink(missing_ok=True)
            return None
        return path


def truncate_csv(path: Path, column: str, last: int) -> None:
    """Keep the header and the rows whose integer `column` is at most `last` (atomically)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        kept = [row for row in reader if header and _row_number(row, header, column) <= last]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(kept)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def _row_number(row: list[str], header: list[str], column: str) -> float:
    """The integer in `column` of a CSV row; inf for a row cut short (a kill or a full disk mid-write)."""
    try:
        return int(row[header.index(column)]) if len(row) == len(header) else math.inf
    except ValueError:
        return math.inf


class NullCsv:
    """A CSV log that drops every row."""

    def write(self, row: dict) -> None:
        """Drop the row."""

    def close(self) -> None:
        """Nothing to close."""


class NullRunDir:
    """RunDir's interface writing nothing: what the ranks other than 0 of a data-parallel run
    write to (rank 0 alone writes the run directory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta: dict = {}
        self.steps = self.epochs = NullCsv()

    def update_meta(self, **fields) -> None:
        """Keep the fields in memory only."""
        self.meta.update(fields)

    def finish(self, status: str, **fields) -> None:
        """Keep the ending in memory only."""
        self.meta.update(status=status, **fields)

    def write_error(self, text: str) -> Path:
        """Write nothing; the path a traceback would have."""
        return self.path / ERROR_FILE


def amend_meta(run_dir: Path, **fields) -> dict:
    """Merge `fields` into an existing run directory's meta.json (atomically); returns the new meta."""
    path = Path(run_dir) / META_FILE
    meta = read_meta(run_dir)
    if meta is None:
        raise NormbenchError(f"'{path}' is missing or unreadable")
    meta.update(fields)
    write_json_atomic(path, meta)
    return meta


def prepare_run_path(path: Path, replace_incomplete: bool) -> None:
    """Make way for a run at `path`: never touch a completed run; clear an incomplete one if asked."""
    path = Path(path)
    if not path.exists():
        return
    meta = read_meta(path)
    if meta is not None and meta.get("status") == "completed":
        raise NormbenchError(f"run directory '{path}' holds a completed run; it is never overwritten")
    if path.is_dir() and not any(path.iterdir()):
        return  # empty: new_run_path made it for this run, or nothing is in it to lose
    looks_like_run = meta is not None or (path / CONFIG_FILE).exists() or not any(path.iterdir())
    if not (replace_incomplete and looks_like_run):
        raise NormbenchError(f"run directory '{path}' already exists; choose another name or results directory")
    shutil.rmtree(path)
