"""Dataset files as they lie on disk, read without trusting them.

idx files (MNIST, Fashion-MNIST): the header is checked against the file's size before anything
reads it. CIFAR batches (python pickles): unpickled by an unpickler that admits only the numpy
and bytes types the format holds, so a tampered file is refused before any object is built and
can never run code; the result is checked to be a CIFAR batch. Problems raise FormatError, one
line that names the file.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np

CIFAR_SAMPLE_BYTES = 3 * 32 * 32  # one image: the R, G and B planes of 32 x 32 bytes


class FormatError(Exception):
    """A dataset file that is not in the format it should be in; the message names the file."""


def check_idx(path: Path, ndim: int) -> int:
    """Check that `path` is an idx file of uint8 with `ndim` dimensions whose size matches its
    header; returns its first dimension (the sample count)."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    size = path.stat().st_size
    if len(header) < 4 + 4 * ndim:
        raise FormatError(f"{path.name} is truncated ({size} bytes, shorter than an idx header)")
    if header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise FormatError(f"{path.name} is not an idx file of {ndim}-D uint8 data (its magic number is "
                          f"{header[:4].hex()}, expected 000008{ndim:02x})")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = len(header) + math.prod(dims)
    if size != expected:
        raise FormatError(f"{path.name} is truncated or has extra bytes ({size} bytes; its header "
                          f"{'x'.join(map(str, dims))} needs {expected})")
    return dims[0]


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """What `_codecs.encode` does in a protocol-2 pickle of bytes, for latin-1 only."""
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"a bytes object encoded as {encoding!r}, not latin-1")
    return text.encode("latin1")


def _numpy_core():
    return getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core


def cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch may name: how numpy pickles an array, a dtype and a scalar."""
    core = _numpy_core()
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for package in ("numpy.core", "numpy._core"):  # older and newer numpy name the same functions
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers, bytes and numpy arrays."""

    def find_class(self, module: str, name: str):
        """The allowed global, or UnpicklingError before anything is called."""
        try:
            return cifar_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR batch file -> (images (N, 3, 32, 32) uint8, labels), or FormatError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise FormatError(f"{path.name} was refused: {exc or type(exc).__name__}") from None
    if not isinstance(entry, dict):
        raise FormatError(f"{path.name} holds a {type(entry).__name__}, not a CIFAR batch (a dict)")
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR_SAMPLE_BYTES):
        raise FormatError(f"{path.name}: 'data' is not an (N, {CIFAR_SAMPLE_BYTES}) uint8 array")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int for v in labels)):
        raise FormatError(f"{path.name}: the labels are not a list of {len(data)} integers")
    return data.reshape(-1, 3, 32, 32), labels
