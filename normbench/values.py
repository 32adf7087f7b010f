"""One parser for values typed on the command line: `--set KEY=VALUE`, `--grid KEY=v1,v2` and
every list option (`--batch-sizes`, `--norms`, `--seeds`, ...).

The same rules everywhere:
- a value is YAML (`8` is an int, `null` is None, `[1,28,28]` a list, `true` a bool), and a
  number in exponent form (`1e-3`, `5E2`), which YAML 1.1 reads as text, is a number; a quoted
  value (`"1e3"`) stays text;
- a list is comma-separated; a comma inside `[...]` or `{...}` belongs to its item; an empty
  item (`2,,8`, a trailing comma) and a value given twice are errors;
- `KEY=VALUE` needs a key before the `=`.
Every error is one ConfigError line (exit code 2) that shows what was typed and what to type.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from normbench.errors import ConfigError

EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(raw: str) -> Any:
    """One value: parsed as YAML, an exponent number such as 1e-3 as a float; blank text stays as given."""
    text = raw.strip()
    if not text:
        return raw
    if EXPONENT_NUMBER.fullmatch(text):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignment(text: str, option: str, form: str, example: str) -> tuple[str, str]:
    """`KEY=REST` -> (KEY stripped, REST as typed); no `=` or no key is an error showing `example`."""
    key, sep, rest = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} '{text}': expected {form}, e.g. {example}")
    return key.strip(), rest


def split_items(text: str, shown: str, example: str) -> list[str]:
    """The comma-separated items of `text`, stripped; commas inside brackets or braces do not split."""
    items, current, depth = [], [], 0
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    if not all(items):
        raise ConfigError(f"{shown}: empty item; separate values with single commas, e.g. {example}")
    return items


def shown_as(option: str, text: str) -> str:
    """How the user typed an option: `--seeds 0,1`, `--seeds ''` or, for an option ending in '=', `--grid seed=0,1`."""
    return f"{option}{'' if option.endswith('=') else ' '}{text if text.strip() else repr(text)}"


def parse_list(text: str, option: str, example: str) -> tuple:
    """`2,8,64` -> (2, 8, 64): each item a value as parse_value reads it, each given once."""
    shown = shown_as(option, text)
    values = tuple(parse_value(item) for item in split_items(text, shown, example))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{shown}: a value appears twice; list each value once")
    return values


def parse_ints(text: str, option: str, minimum: int, example: str) -> tuple[int, ...]:
    """A list (parse_list) of integers >= `minimum`."""
    values = parse_list(text, option, example)
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < minimum]
    if bad:
        raise ConfigError(f"{shown_as(option, text)}: every value must be an integer >= {minimum} "
                          f"(bad: {', '.join(map(str, bad))}), e.g. {example}")
    return values


def parse_names(text: str, option: str, example: str) -> tuple[str, ...]:
    """A list (parse_list) of names (text values)."""
    values = parse_list(text, option, example)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{shown_as(option, text)}: every value must be a name (bad: {', '.join(map(str, bad))}), "
                          f"e.g. {example}")
    return values


def looks_like_item(token: str) -> bool:
    """Whether a stray command-line token reads as one more list value (`8`, `group`) rather than a
    file: no path separator, no `=`, no .yaml/.yml ending."""
    return not token.startswith("-") and "/" not in token and "=" not in token and not token.endswith((".yaml", ".yml"))


def misplaced_hint(args: list[str], value_options: set[str], list_options: set[str], exists) -> str | None:
    """What to type instead, for arguments a command cannot mean: values of a list option separated
    by spaces (`--batch-sizes 2 8 64`) or a Hydra-style `KEY=VALUE` argument (`norm.type=group`);
    None when nothing looks misplaced. `value_options` are the options that take a value, `exists`
    tells whether a token is an existing path (a path such as a sweep's `norm=batch_bs=2_seed=0` is
    never a list value or an override)."""
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            return None
        if token in value_options:
            stray = []
            for extra in args[i + 2:]:
                if not looks_like_item(extra) or exists(extra):
                    break
                stray.append(extra)
            if token in list_options and stray and i + 1 < len(args):
                items = ",".join(item.strip(",") for item in [args[i + 1], *stray])
                return f"{token} takes one comma-separated list, not values separated by spaces: use {token} {items}"
            i += 2
            continue
        if not token.startswith("-") and re.match(r"[A-Za-z_][\w.]*=", token) and not exists(token):
            return f"unexpected argument '{token}': config overrides go through --set; use --set {token}"
        i += 1
    return None
