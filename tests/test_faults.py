"""Issue 11's red-team faults, each as the hostile or unlucky user met it: tampered and replaced
dataset files, colliding grid values, a full disk, a stopped launcher, malformed files, racing
runs, tiny inputs with huge echoes, and the small ones."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.utils.cpp_extension  # noqa: F401  its one-time CUDA_HOME warning now, not in a run's stderr
import yaml

from normbench import results
from normbench.cli import app
from normbench.config import validate
from normbench.data import load_dataset
from normbench.errors import NormbenchError

from conftest import REPO, rows, tiny_config, write_tiny_cifar, write_tiny_mnist
from test_cli_errors import check_one_line_error


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NORMBENCH_DATA", raising=False)


def dataset(name: str, data_dir: Path):
    """A dataset config over `data_dir`, every training sample kept for training (no validation split)."""
    return validate({"dataset": {"name": name, "data_dir": str(data_dir), "val_samples": 0}}, "t").dataset


# --- 1. a tampered CIFAR pickle ---------------------------------------------------------------


class RunsCommand:
    """What a hostile data_batch_1 holds: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_tampered_cifar_batch_is_refused_and_never_runs_code(tmp_path):
    folder = write_tiny_cifar(tmp_path / "d")
    marker = tmp_path / "pwned"
    payload = {"data": RunsCommand(f"touch {marker}"), "labels": [], "batch_label": "x"}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(NormbenchError) as info:
        load_dataset(dataset("cifar10", tmp_path / "d"))
    assert not marker.exists()
    message = info.value.message
    assert "data_batch_1 was refused" in message and "system" in message and "\n" not in message


def test_cifar_batches_pickled_the_old_way_still_load(tmp_path):
    folder = write_tiny_cifar(tmp_path / "d", n_train=10, n_test=5)
    for name in ("data_batch_1", "test_batch"):  # protocol 2, as the official release (Python 2)
        entry = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    assert load_dataset(dataset("cifar10", tmp_path / "d")).train_x.shape == (10, 3, 32, 32)


# --- 2. the idx unpack cache notices changed files --------------------------------------------


def test_replaced_labels_are_read_again(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d", n_train=16, n_test=8, compress=True)
    assert load_dataset(dataset("mnist", tmp_path / "d")).train_y.sum() > 0
    labels = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:8] + bytes(16)))  # same size, every label 0
    assert load_dataset(dataset("mnist", tmp_path / "d")).train_y.tolist() == [0] * 16


def test_a_corrupt_file_replaced_as_told_loads(tmp_path):
    folder = write_tiny_mnist(tmp_path / "d", n_train=16, n_test=8, compress=True)
    images = folder / "train-images-idx3-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(gzip.compress(gzip.decompress(good)[:500]))  # unpacks fine, but truncated
    with pytest.raises(NormbenchError, match="train-images-idx3-ubyte is truncated"):
        load_dataset(dataset("mnist", tmp_path / "d"))
    images.write_bytes(good)
    assert len(load_dataset(dataset("mnist", tmp_path / "d")).train_y) == 16


# --- 6. one line, not a traceback: a wrong-magic idx file --------------------------------------


def test_a_wrong_magic_idx_file_is_named(runner, write_config, tmp_path):
    folder = write_tiny_mnist(tmp_path / "d" / "MNIST" / "raw", n_train=8, n_test=4)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x09\x01" + labels.read_bytes()[4:])
    config = write_config(**{"dataset": {"name": "mnist"}})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")])
    text = check_one_line_error(result, 1, "train-labels-idx1-ubyte is not an idx file", "magic number is 00000901")
    assert "AssertionError" not in text


# --- 9. a mistyped --data-dir ------------------------------------------------------------------


def test_a_mistyped_data_dir_is_an_error_and_nothing_is_created(runner, write_config, tmp_path):
    config = write_config(**{"dataset": {"name": "mnist"}})
    result = runner.invoke(app, ["run", str(config), "--data-dir", str(tmp_path / "dta"), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, f"data folder '{tmp_path / 'dta'}'", "does not exist")
    assert not (tmp_path / "dta").exists() and not (tmp_path / "r" / "runs").exists()


def test_a_failed_download_leaves_nothing_in_the_data_folder(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):  # what torchvision does without a network: folders first, then the error
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    (tmp_path / "data").mkdir()
    with pytest.raises(NormbenchError, match="torchvision download into"):
        load_dataset(dataset("mnist", tmp_path / "data"))
    assert list((tmp_path / "data").iterdir()) == []


# --- 4. a full disk ----------------------------------------------------------------------------


class FullDisk:
    """A disk with room for `rows` more CSV lines (header lines included), then none: writes that
    need new space fail with ENOSPC (CSV lines, error.log, a new temp meta.json), while rewriting
    bytes a file already has works, as on a real full disk."""

    def __init__(self, rows: int):
        self.rows = rows
        self.full = False

    def refuse(self):
        self.full = True
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open(self, file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)
        return handle if mode.startswith("r") and "+" not in mode else FullDiskFile(self, handle, mode)


class FullDiskFile:
    def __init__(self, disk: FullDisk, handle, mode: str):
        self.disk, self.handle, self.mode = disk, handle, mode
        self.room = os.fstat(handle.fileno()).st_size if "+" in mode else 0  # bytes it may overwrite

    def write(self, text):
        if "+" in self.mode:
            if self.handle.tell() + len(text) > self.room:
                raise self.disk.refuse()
        elif self.disk.full or self.disk.rows <= 0:
            raise self.disk.refuse()
        else:
            self.disk.rows -= 1
        return self.handle.write(text)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(rows) -> the FullDisk every run-directory writer of normbench.results now meets."""
    import pathlib
    import tempfile

    def install(rows: int) -> FullDisk:
        disk = FullDisk(rows)
        write_text, mkstemp = pathlib.Path.write_text, tempfile.mkstemp

        def new_text(path, *args, **kwargs):
            if disk.full:
                path.touch()  # the file is made; its bytes find no room
                raise disk.refuse()
            return write_text(path, *args, **kwargs)

        def new_temp(*args, **kwargs):
            if disk.full:
                raise disk.refuse()
            return mkstemp(*args, **kwargs)

        monkeypatch.setattr(results, "open", disk.open, raising=False)
        monkeypatch.setattr(pathlib.Path, "write_text", new_text)
        monkeypatch.setattr(results.tempfile, "mkstemp", new_temp)
        return disk

    return install


def test_a_disk_that_fills_mid_run_records_the_failure(runner, write_config, tmp_path, full_disk):
    full_disk(rows=6)  # two headers, then four steps.csv rows
    result = runner.invoke(app, ["run", str(write_config()), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, "run failed: OSError: [Errno 28] No space left on device",
                         "no room on the disk for its traceback")
    (run,) = (tmp_path / "r" / "runs").iterdir()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["end_time"] and "No space left" in meta["reason"]
    assert not (run / "error.log").exists()  # never an empty one
    assert len(rows(run / "steps.csv")) == 4


def test_a_full_disk_at_the_start_leaves_no_half_made_run(runner, write_config, tmp_path, full_disk):
    full_disk(rows=0)
    result = runner.invoke(app, ["run", str(write_config()), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, "cannot create a run directory", "No space left on device")
    assert list((tmp_path / "r" / "runs").iterdir()) == []


def test_an_ending_that_cannot_be_written_at_all_is_one_line(runner, write_config, tmp_path, full_disk, monkeypatch):
    disk, clean = full_disk(rows=6), results._clean

    def grown(value):
        padded = disk.full and isinstance(value, dict) and "status" in value
        return {**clean(value), "padding": "x" * 100_000} if padded else clean(value)

    monkeypatch.setattr(results, "_clean", grown)  # the ending no longer fits in the old meta.json
    result = runner.invoke(app, ["run", str(write_config()), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 1, "could not record it", "normbench run --resume")


def test_a_csv_row_cut_short_is_dropped_when_a_run_resumes(tmp_path):
    steps = tmp_path / "steps.csv"
    steps.write_text("step,epoch\n11,1\n12,1\n1")  # step 13's row, cut after one digit by the full disk
    results.truncate_csv(steps, "step", 12)  # resuming from the checkpoint at step 12
    assert steps.read_text().splitlines() == ["step,epoch", "11,1", "12,1"]


def test_report_on_a_full_disk_is_one_line(runner, write_config, tmp_path, monkeypatch):
    assert runner.invoke(app, ["run", str(write_config()), "--results-dir", str(tmp_path / "r")]).exit_code == 0
    from matplotlib.figure import Figure

    def no_room(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", no_room)
    result = runner.invoke(app, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "out")])
    check_one_line_error(result, 1, f"cannot write the report into '{tmp_path / 'out'}'", "No space left on device")


# --- 6. one line, not a traceback: a meta.json that is not an object ---------------------------


def test_a_meta_json_holding_a_list_is_skipped_by_report_and_rerun_by_sweep(runner, write_config, tmp_path):
    assert runner.invoke(app, ["run", str(write_config()), "--results-dir", str(tmp_path / "r")]).exit_code == 0
    (good,) = (tmp_path / "r" / "runs").iterdir()
    bad = tmp_path / "r" / "runs" / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text((good / "config.yaml").read_text())
    (bad / "meta.json").write_text("[1, 2]")
    result = runner.invoke(app, ["report", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "meta.json missing or unreadable" in " ".join(result.output.split())
    sweep_args = ["sweep", str(write_config(epochs=1)), "--norms", "batch", "--results-dir", str(tmp_path / "s"),
                  "--name", "s", "--jobs", "1"]
    assert runner.invoke(app, sweep_args).exit_code == 0
    (point,) = (tmp_path / "s" / "sweeps" / "s" / "runs").iterdir()
    (point / "meta.json").write_text("[1, 2]")
    result = runner.invoke(app, sweep_args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert json.loads((point / "meta.json").read_text())["status"] == "completed"


# --- 7. two runs of one config started in the same second -------------------------------------


def test_run_directories_chosen_in_the_same_second_are_distinct_and_both_made(tmp_path):
    first, second = results.new_run_path(tmp_path, "same"), results.new_run_path(tmp_path, "same")
    assert first != second and first.is_dir() and second.is_dir()
    results.RunDir(first, "name: same\n", {})  # the empty folder made for it is taken
    assert results.read_meta(first)["status"] == "running"


# --- 9. the small ones -------------------------------------------------------------------------


def test_a_batch_larger_than_the_training_set_is_refused_before_a_run_directory(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(batch_size=512)), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "batch_size=512 is larger than the training set (256 samples)", "batch_size <= 256")
    assert not (tmp_path / "r" / "runs").exists()


def test_more_threads_than_cores_is_refused(runner, write_config, tmp_path):
    result = runner.invoke(app, ["run", str(write_config(num_threads=1000)), "--results-dir", str(tmp_path / "r")])
    check_one_line_error(result, 2, "num_threads=1000 exceeds the", "CPU cores")
    assert not (tmp_path / "r" / "runs").exists()


# --- 5. stopping the --nproc launcher ----------------------------------------------------------


def test_sigterm_to_the_nproc_launcher_records_the_stop_and_progress_goes_to_stdout(write_config, tmp_path):
    config = write_config(epochs=500, checkpoint_every=0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "normbench", "run", str(config), "--nproc", "2",
                                 "--results-dir", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "r").glob("runs/*/epochs.csv")) or not rows(next((tmp_path / "r").glob("runs/*/epochs.csv"))):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err
    (run,) = (tmp_path / "r" / "runs").iterdir()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["end_time"], meta
    assert "epoch 1/500" in out and "epoch 1/500" not in err  # rank 0's progress, on stdout as a plain run's


# --- 3. grid values that would share a run directory -------------------------------------------


def test_grid_values_that_would_share_a_point_id_are_refused_before_anything_runs(runner, write_config, tmp_path):
    result = runner.invoke(app, ["sweep", str(write_config()), "--norms", "batch", "--grid", "name=a_b,a-b",
                                 "--results-dir", str(tmp_path / "r"), "--name", "s"])
    check_one_line_error(result, 2, "the values 'a_b' and 'a-b' would share the point id", "'name=a-b'")
    assert not (tmp_path / "r" / "sweeps").exists()


# --- 8. a small input echoed hugely, and 9. keys given twice ------------------------------------


def test_a_yaml_alias_bomb_gets_a_short_error(runner, tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 6)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*lines, "batch_size: *a5", ""]))  # about 300 bytes; its repr is megabytes
    result = runner.invoke(app, ["run", str(bomb), "--dry-run"])
    text = check_one_line_error(result, 2, "batch_size=[[[")
    assert len(text) < 20 * len(bomb.read_text())


def test_a_key_given_twice_is_refused(runner, tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text(yaml.safe_dump(tiny_config()) + "batch_size: 32\n")
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    check_one_line_error(result, 2, "key 'batch_size' given twice (first at line", "keep one")
    from normbench.config import UniqueKeyLoader

    merged = yaml.load("a: &c {x: 1}\nb: {<<: *c, x: 2}\n", Loader=UniqueKeyLoader)  # what a merge is for
    assert merged["b"] == {"x": 2}
