"""Build a C++ kernel once per binary it would produce, then load that binary.

A kernel's binary depends on its source, the compiler and its flags, torch's version (headers and
ABI), the Python ABI and the CPU instruction set it targets, and on nothing else: not on the
checkout, the venv or the path of the source. The extension's name carries a hash of exactly
those, so checkouts and venvs on one machine (or nodes sharing one home folder) that would build
the same binary share one build, and any that would build another binary get their own folder
beside it: none rebuilds another's. A build runs under a file lock, is announced on stderr every
time it happens, and is marked finished by a stamp file; every later process imports the
finished binary directly (no compiler, no ninja).

Instruction sets: not -march=native (a binary in a shared folder must run on every machine that
reads it) but the portable x86-64 levels, the highest this CPU's flags support: x86-64-v4
(AVX-512 F/BW/CD/DQ/VL), x86-64-v3 (AVX2, FMA), x86-64-v2 (SSE4.2), x86-64. Other machines
build for their architecture's baseline. The level is part of the name, so nodes with different
CPUs sharing one cache each get their own binary. No AVX512-BF16 level: this kernel rounds to
bfloat16 in integer arithmetic (bit-exact NaNs), and GCC emits the same code with -mavx512bf16.

Binaries live under TORCH_EXTENSIONS_DIR when set, else ~/.cache/torch_extensions (as torch's own).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from normbench.errors import NormbenchError

ISA_FLAGS = {  # x86-64 level -> compiler flags (gcc >= 11, clang >= 12); highest first
    # 256-bit vectors, as GCC's tunings for Intel's AVX-512 CPUs choose under -march=native: with
    # 512-bit ones (x86-64-v4's generic tuning) this kernel's step was slower, not faster
    "x86-64-v4": ("-march=x86-64-v4", "-mprefer-vector-width=256"),
    "x86-64-v3": ("-march=x86-64-v3",),
    "x86-64-v2": ("-march=x86-64-v2",),
    "x86-64": ("-march=x86-64",),
}
ISA_CPU_FLAGS = {  # what each level needs, as Linux names the CPU's flags in /proc/cpuinfo
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "x86-64-v2": {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"},
    "x86-64": set(),
}
TORCH_CAPABILITY_ISA = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}  # where /proc/cpuinfo is missing
STAMP = "normbench-build.json"  # written once the binary is complete: its presence means "built"


@dataclass(frozen=True)
class KernelSpec:
    """One C++ extension: a base name, its source file and its flags (the ISA's flags come on top)."""

    base: str
    source: Path
    cflags: tuple[str, ...] = ("-O3", "-fopenmp")
    ldflags: tuple[str, ...] = ("-fopenmp",)


def isa_level(machine: str, cpu_flags: set[str]) -> str:
    """The highest x86-64 level whose flags (and all lower levels' flags) the CPU has; on other
    architectures the machine's own name (its compiler's baseline)."""
    if machine.lower() not in ("x86_64", "amd64"):
        return machine.lower() or "unknown"
    levels = list(ISA_FLAGS)[::-1]  # lowest first
    reached = levels[0]
    for level in levels[1:]:
        if not ISA_CPU_FLAGS[level] <= cpu_flags:
            break
        reached = level
    return reached


def host_cpu_flags() -> set[str] | None:
    """This CPU's flags as Linux lists them, or None where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def host_isa() -> str:
    """The instruction-set level this machine's kernels are built for."""
    flags = host_cpu_flags()
    if flags is None and platform.machine().lower() in ("x86_64", "amd64"):  # macOS, Windows: ask torch
        return TORCH_CAPABILITY_ISA.get(torch.backends.cpu.get_cpu_capability(), "x86-64-v2")
    return isa_level(platform.machine(), flags or set())


def build_inputs(spec: KernelSpec, isa: str) -> dict:
    """Everything the binary depends on (the source by its hash): what its name is a hash of."""
    return {
        "source_sha256": hashlib.sha256(Path(spec.source).read_bytes()).hexdigest(),
        "isa": isa,
        "cflags": [*spec.cflags, *ISA_FLAGS.get(isa, ())],
        "ldflags": list(spec.ldflags),
        "compiler": os.environ.get("CXX", "c++"),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "python": sys.implementation.cache_tag,
        "extension_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
    }


def build_name(spec: KernelSpec, isa: str) -> str:
    """The extension's name: base, ISA level and a hash of build_inputs (a valid module name)."""
    digest = hashlib.sha256(json.dumps(build_inputs(spec, isa), sort_keys=True).encode()).hexdigest()
    level = "".join(c if c.isalnum() else "_" for c in isa)
    return f"{spec.base}_{level}_{digest[:16]}"


def extensions_root() -> Path:
    """Where binaries are built and cached: TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def build_folder(spec: KernelSpec, isa: str | None = None) -> Path:
    """The folder of this machine's binary of `spec` (it may not be built yet)."""
    return extensions_root() / build_name(spec, isa or host_isa())


def is_built(folder: Path) -> bool:
    """Has a build in `folder` finished (its stamp written after the binary)?"""
    return (folder / STAMP).is_file() and (folder / f"{folder.name}.so").is_file()


def compile_extension(name: str, spec: KernelSpec, inputs: dict, folder: Path):
    """Compile `spec` as extension `name` in `folder` with torch.utils.cpp_extension; the module."""
    from torch.utils.cpp_extension import load

    return load(name, sources=[str(spec.source)], extra_cflags=list(inputs["cflags"]),
                extra_ldflags=list(inputs["ldflags"]), build_directory=str(folder), verbose=False)


def import_binary(folder: Path):
    """Import the finished extension in `folder` (its module name is the folder's name)."""
    module_spec = importlib.util.spec_from_file_location(folder.name, folder / f"{folder.name}.so")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: KernelSpec, isa: str | None = None):
    """The extension module of `spec` for `isa` (this CPU's level by default): imported when its
    binary exists, else built now under a lock, with a one-line notice on stderr."""
    isa = isa or host_isa()
    folder = build_folder(spec, isa)
    if is_built(folder):
        return import_binary(folder)
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f"{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        notice(f"waiting for another process to finish building the {spec.base} kernel ({folder})")
        lock.acquire()
    try:
        if is_built(folder):  # the process we waited for built it
            return import_binary(folder)
        inputs = build_inputs(spec, isa)
        check_compiler(inputs["compiler"])
        notice(f"building the {spec.base} C++ kernel for {isa} (about 30 s on 2 cores; once per torch "
               f"version, flags, source and CPU level) in {folder}")
        try:
            module = compile_extension(folder.name, spec, inputs, folder)
        except Exception as exc:
            log = folder / "build-error.log"
            log.write_text(f"{exc}\n")
            raise NormbenchError(f"building the {spec.base} kernel failed ({failure_line(str(exc))}); "
                                 f"the compiler's output is in {log}") from exc
        stamp = folder / f"{STAMP}.tmp"
        stamp.write_text(json.dumps(inputs, indent=1) + "\n")
        stamp.replace(folder / STAMP)
        return module
    finally:
        lock.release()


def check_compiler(compiler: str) -> None:
    """Raise a one-line NormbenchError when the C++ compiler (CXX, else c++) is not on PATH."""
    program = (shlex.split(compiler) or ["c++"])[0]
    if shutil.which(program) is None:
        raise NormbenchError(f"no C++ compiler: {program} is not on PATH (install g++, or set CXX to a C++ compiler)")


def failure_line(output: str) -> str:
    """The line of a failed build's output that says why: the first compiler error, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and not line.startswith(("Error building extension", "FAILED:")):
            return line
    meaningful = [line for line in lines if not line.startswith("ninja: build stopped")]
    return (meaningful or ["no output"])[-1]


def notice(message: str) -> None:
    """One line on stderr, flushed at once (a build can take half a minute)."""
    print(f"normbench: {message}", file=sys.stderr, flush=True)
