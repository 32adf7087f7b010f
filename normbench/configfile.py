"""Config files: the shipped configs found by name, and YAML read strictly.

The repository's configs/ ships inside the wheel as normbench/configs/ (pyproject.toml maps it);
in a checkout it is read from the repository root. A CONFIG argument is a path to a YAML file or
the name of a shipped config: `quickstart`, `repro/gn_resnet20`, `configs/quickstart.yaml`.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir() -> Path:
    """The folder of shipped configs: normbench/configs/ when installed, else the checkout's configs/."""
    installed = PACKAGE_DIR / "configs"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "configs"


def shipped_names() -> list[str]:
    """Names of the shipped configs, e.g. ['bn_cifar', ..., 'repro/gn_resnet20'], top level first."""
    root = shipped_dir()
    paths = sorted(root.rglob("*.yaml"), key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return [p.relative_to(root).with_suffix("").as_posix() for p in paths]


def describe(path: Path, limit: int = 52) -> str:
    """A config's one-line description: the first sentence of its leading comment (at most `limit`
    characters), else its file name."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    sentence = re.split(r"\. (?=[A-Z])", " ".join(lines))[0].rstrip(".")  # "et al. 2016" is no sentence end
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rsplit(" ", 1)[0].rstrip(",:;") + "…"
    return sentence or path.stem


def resolve_config(config: Path | str) -> Path:
    """The YAML file CONFIG names: an existing path, else a shipped config's name; else a ConfigError
    listing the names."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removesuffix(".yml").removeprefix("./").removeprefix("configs/")
    candidate = shipped_dir() / f"{name}.yaml"
    if name and candidate.is_file():
        return candidate
    raise ConfigError(f"config file '{config}' not found; pass a YAML file or a shipped config's name "
                      f"({', '.join(shipped_names())}; `normbench configs` describes them)")


def shown(value: Any, limit: int = 80) -> str:
    """`value` as an error message shows it: a repr cut to about `limit` characters, built in
    bounded time (a YAML alias bomb expands to gigabytes of repr)."""
    short = reprlib.Repr()
    short.maxlevel = short.maxlist = short.maxtuple = short.maxdict = 3
    short.maxstring = short.maxother = short.maxlong = limit
    text = short.repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping (`<<` merges may still override)."""

    def construct_mapping(self, node, deep=False):
        """The mapping, after checking that no plain key appears in it twice."""
        first: dict = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first:  # PyYAML would keep the last one silently
                raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: key {shown(key)} given twice "
                                  f"(first at line {first[key] + 1}); keep one")
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing file, a syntax error or a key given twice is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass the path of a YAML file such as configs/quickstart.yaml")
    try:
        with open(path, encoding="utf-8") as f:  # the loader names the file in its errors
            return yaml.load(f, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from None
