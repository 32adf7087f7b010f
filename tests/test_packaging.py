"""The wheel ships every module and the shipped configs; configs are found by name from any folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from normbench.cli import app
from normbench.config import load_config
from normbench.configfile import shipped_names

from conftest import REPO
from test_cli_errors import check_one_line_error


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds from this checkout."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(folder)], check=True, cwd=REPO)
    (path,) = folder.glob("normbench-*.whl")
    return path


def installed(wheel, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` run from an empty folder with the unpacked wheel first on sys.path (the layout
    `pip install` gives), not the checkout."""
    site = tmp_path / "site"
    if not site.exists():
        zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=work, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "COLUMNS": "200",
                               "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, timeout=300)


def test_wheel_ships_every_module_and_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"normbench/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    assert "normbench/configs/quickstart.yaml" in configs and "normbench/configs/repro/gn_resnet20.yaml" in configs
    assert configs <= names, sorted(configs - names)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "normbench").rglob("*.py")}
    assert modules <= names, f"add their packages to [tool.setuptools] packages: {sorted(modules - names)}"


def test_installed_package_finds_configs_by_name(wheel, tmp_path):
    found = installed(wheel, tmp_path, "-c", "from normbench.configfile import shipped_dir; print(shipped_dir())")
    assert found.stdout.strip() == str(tmp_path / "site" / "normbench" / "configs"), found.stderr  # not the checkout's
    listed = installed(wheel, tmp_path, "-m", "normbench", "configs")
    assert listed.returncode == 0 and "repro/gn_resnet20" in listed.stdout, listed.stderr
    dry = installed(wheel, tmp_path, "-m", "normbench", "run", "quickstart", "--dry-run")
    assert dry.returncode == 0 and "name: quickstart" in dry.stdout, dry.stderr


def test_installed_sweep_finds_its_default_config(wheel, tmp_path):
    result = installed(wheel, tmp_path, "-m", "normbench", "sweep", "--dry-run", "--norms", "batch")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["quickstart", "bn_cifar", "repro/gn_resnet20", "configs/quickstart.yaml", "sweep_base"])
def test_config_found_by_name_from_another_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(name, ["max_samples=512"])
    assert cfg.name == name.removesuffix(".yaml").split("/")[-1]


def test_a_local_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("name: mine\n", encoding="utf-8")
    assert load_config("quickstart.yaml").name == "mine"
    assert load_config("quickstart").name == "quickstart"


def test_unknown_name_lists_the_shipped_ones(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "quickstrat"])
    check_one_line_error(result, 2, "'quickstrat' not found", "quickstart", "repro/gn_resnet20")


def test_sweep_default_config_resolves_outside_the_checkout(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "--dry-run", "--norms", "batch", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "sweep_base" in result.output


def test_configs_lists_names_and_descriptions(runner):
    result = runner.invoke(app, ["configs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert set(shipped_names()) >= {"quickstart", "sweep_base", "repro/gn_resnet20"}
    for name in shipped_names():
        assert name in result.output
    assert "The first run: Fashion-MNIST" in result.output
