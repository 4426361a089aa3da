"""Read YAML files and apply ``--set key.path=value`` overrides, with errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import yaml

from hpctune.errors import ConfigError


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when present: ~7x faster
    """SafeLoader with YAML 1.2 scalars: ``10:00:00`` stays a string (YAML 1.1 reads it as
    the base-60 integer 36000, a classic Slurm time-limit trap), ``1e-4`` is a float, and
    only true/false are booleans (``no`` stays "no"). The scalar rules below are Python
    (the resolver), so the C and the pure-Python parser read a file alike."""


_REPLACED = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.2 booleans: only true/false. `precision: no` is the string "no", as meant
# (YAML 1.1 makes it False, which crashes accelerate: user-pains 22).
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def loads(text: str):
    """Parse YAML text with hpctune's loader."""
    return yaml.load(text, Loader=Loader)


def read(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; missing files and syntax errors become ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read: {e.__class__.__name__}") from None
    return parse(text, str(path))


def parse(text: str, source: str) -> dict[str, Any]:
    """Parse YAML text that must hold a mapping; errors name ``source``."""
    try:
        data = loads(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(source, "", f"not valid YAML: {where}{problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got a {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to nested data; the value is parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected KEY=VALUE, for example training.learning_rate=2e-4")
        try:
            value = loads(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError("--set", ".".join(parts[: i + 1]), "is not a section; cannot set a field inside it")
            node = child
        node[parts[-1]] = value
    return data
