"""How the C++ kernel is built: shipped as a .cpp file, one build per binary it produces, shared
by every checkout and venv that would produce the same binary, portable ISA flags, announced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from normbench.config import validate
from normbench.errors import NormbenchError
from normbench.kernels import build, fused_bn_pool

from conftest import REPO, tiny_config

V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}


def test_the_wheel_ships_the_cpp_source(tmp_path):
    """A wheel built from the project holds the .cpp the kernel compiles at run time."""
    source = tmp_path / "src"
    for folder in ("normbench", "configs"):  # configs/ ships as normbench/configs
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = subprocess.run([sys.executable, "-c", "from setuptools import build_meta; print(build_meta.build_wheel('wheel'))"],
                         cwd=source, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = source / "wheel" / out.stdout.strip().splitlines()[-1]
    assert "normbench/kernels/fused_bn_pool.cpp" in zipfile.ZipFile(wheel).namelist()


def spec_at(folder: Path, text: str = "int f() { return 1; }\n", **flags) -> build.KernelSpec:
    """A kernel spec whose source file is `text`, written in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "k.cpp").write_text(text)
    return build.KernelSpec("k", folder / "k.cpp", **flags)


def test_the_name_changes_with_what_changes_the_binary_and_only_with_that(tmp_path, monkeypatch):
    first = spec_at(tmp_path / "checkout-a")
    name = build.build_name(first, "x86-64-v3")
    assert build.build_name(spec_at(tmp_path / "checkout-b"), "x86-64-v3") == name  # another path: same binary
    others = {
        build.build_name(spec_at(tmp_path / "edited", "int f() { return 2; }\n"), "x86-64-v3"),
        build.build_name(spec_at(tmp_path / "flags", cflags=("-O2", "-fopenmp")), "x86-64-v3"),
        build.build_name(first, "x86-64-v4"),
        build.build_name(first, "aarch64"),
    }
    monkeypatch.setenv("CXX", "clang++")
    others.add(build.build_name(first, "x86-64-v3"))
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    others.add(build.build_name(first, "x86-64-v3"))
    assert name not in others and len(others) == 6
    assert name.startswith("k_x86_64_v3_") and name.isidentifier()


def test_isa_level_is_the_highest_the_cpu_flags_allow():
    assert build.isa_level("x86_64", V2 | V3 | V4 | {"avx512_bf16"}) == "x86-64-v4"
    assert build.isa_level("x86_64", V2 | V3 | V4 - {"avx512bw"}) == "x86-64-v3"
    assert build.isa_level("x86_64", V2 | V4) == "x86-64-v2"  # v4 needs v3's flags too
    assert build.isa_level("AMD64", {"sse2"}) == "x86-64"
    assert build.isa_level("aarch64", set()) == "aarch64"


def test_flags_are_portable_never_native():
    flags = build.build_inputs(fused_bn_pool.SPEC, build.host_isa())["cflags"]
    assert not any("native" in flag for flag in flags)
    assert build.host_isa() not in build.ISA_FLAGS or f"-march={build.host_isa()}" in flags


def fake_compiler(calls: list):
    """A stand-in for compile_extension that writes an empty binary and records the call."""
    def compile_extension(name, spec, inputs, folder):
        calls.append(name)
        (folder / f"{name}.so").write_bytes(b"")
        return f"module {name}"
    return compile_extension


def test_a_build_is_announced_every_time_one_happens_and_only_then(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(build, "compile_extension", fake_compiler(calls))
    monkeypatch.setattr(build, "import_binary", lambda folder: f"imported {folder.name}")
    spec = spec_at(tmp_path / "checkout-a")
    assert build.load(spec, "x86-64-v3") == f"module {calls[0]}"
    assert "normbench: building the k C++ kernel for x86-64-v3" in capsys.readouterr().err
    assert build.load(spec_at(tmp_path / "checkout-b"), "x86-64-v3") == f"imported {calls[0]}"  # another checkout
    assert capsys.readouterr().err == "" and len(calls) == 1
    build.load(spec_at(tmp_path / "checkout-a", "int f() { return 2; }\n"), "x86-64-v3")  # an edited source
    assert "normbench: building the k C++ kernel" in capsys.readouterr().err and len(calls) == 2
    build.load(spec, "x86-64-v4")  # another CPU level, same cache: its own binary beside the first
    assert len(calls) == 3 and len(list((tmp_path / "cache").glob(f"*/{build.STAMP}"))) == 3


def test_a_process_that_finds_a_build_in_progress_waits_for_it_and_loads_it(tmp_path, monkeypatch, capsys):
    from filelock import FileLock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(build, "compile_extension", fake_compiler(calls))
    monkeypatch.setattr(build, "import_binary", lambda folder: f"imported {folder.name}")
    spec = spec_at(tmp_path / "src")
    folder = build.build_folder(spec, "x86-64-v3")
    folder.mkdir(parents=True)
    other = FileLock(str(folder.parent / f"{folder.name}.lock"))  # another process, building
    other.acquire()
    loaded = []
    waiter = threading.Thread(target=lambda: loaded.append(build.load(spec, "x86-64-v3")))
    waiter.start()
    err = ""
    for _ in range(1000):
        err += capsys.readouterr().err
        if "waiting" in err:
            break
        time.sleep(0.01)
    assert f"normbench: waiting for another process to finish building the k kernel ({folder})" in err
    (folder / f"{folder.name}.so").write_bytes(b"")  # the other process finishes
    (folder / build.STAMP).write_text("{}")
    other.release()
    waiter.join(timeout=10)
    assert loaded == [f"imported {folder.name}"] and calls == []


def test_a_failed_build_says_why_in_one_line_and_where_the_log_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))

    def failing(name, spec, inputs, folder):
        raise RuntimeError(f"Error building extension '{name}': [1/2] c++ -c k.cpp\nFAILED: k.o\n"
                           "k.cpp:1:5: error: expected ';' before '}' token\nninja: build stopped: subcommand failed.")

    monkeypatch.setattr(build, "compile_extension", failing)
    with pytest.raises(NormbenchError) as failure:
        build.load(spec_at(tmp_path / "src"), "x86-64-v3")
    message = str(failure.value)
    assert "\n" not in message and "k.cpp:1:5: error: expected ';'" in message and "build-error.log" in message
    assert not build.is_built(build.build_folder(spec_at(tmp_path / "src"), "x86-64-v3"))


def test_without_a_compiler_the_kernel_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(NormbenchError, match=r"no C\+\+ compiler: .*no-such-g\+\+ is not on PATH \(install g\+\+, or set CXX"):
        build.load(fused_bn_pool.SPEC)


def test_the_bench_builds_the_kernel_before_it_times_anything(monkeypatch):
    from normbench.bench import harness

    calls = []
    monkeypatch.setattr(fused_bn_pool, "ensure_built", lambda: calls.append("built"))
    harness.bench_setup(validate(tiny_config(), "t"))
    assert calls == ["built"]


def second_python(tmp_path: Path) -> tuple[Path, Path]:
    """Another checkout of normbench and another venv whose torch is reached by another path (a
    link to this one's): a second Python prefix on the same machine. Its python and the checkout."""
    checkout = tmp_path / "checkout-2"
    shutil.copytree(REPO / "normbench", checkout / "normbench", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site-2"
    site.mkdir()
    (site / "torch").symlink_to(Path(torch.__file__).parent, target_is_directory=True)
    venv = tmp_path / "venv-2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "normbench-test.pth").write_text(f"{site}\n{sysconfig.get_paths()['purelib']}\n")
    return python, checkout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the second venv's layout is Linux's")
def test_a_second_checkout_and_venv_reuse_the_first_build(tmp_path):
    """The build this test session uses is loaded, not rebuilt, by another checkout in another venv."""
    if fused_bn_pool.ensure_built() is not None:
        pytest.skip(f"the kernel cannot be built here: {fused_bn_pool.ensure_built()}")
    folder = build.build_folder(fused_bn_pool.SPEC)
    binary = folder / f"{folder.name}.so"
    before = binary.stat().st_mtime_ns
    python, checkout = second_python(tmp_path)
    script = ("import torch, normbench\nfrom normbench.kernels import build, fused_bn_pool\n"
              "print(torch.__file__, normbench.__file__, fused_bn_pool.ensure_built(), build.build_folder(fused_bn_pool.SPEC))")
    out = subprocess.run([python, "-c", script], env={**os.environ, "PYTHONPATH": str(checkout)}, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_file, package_file, error, used = out.stdout.split()
    assert torch_file.startswith(str(tmp_path)) and package_file.startswith(str(checkout))  # really elsewhere
    assert (error, used) == ("None", str(folder))
    assert "building" not in out.stderr and binary.stat().st_mtime_ns == before
