"""Read YAML files and apply ``--set key.path=value`` overrides, with errors naming the file.

The scalar rules are YAML 1.2's JSON-like core, narrowed so that a value is a number only
when it cannot mean anything else:

- integers: ``0`` or ``-?[1-9][0-9]*``. ``08``, ``010``, ``0o17``, ``0x1F``, ``1_000``,
  ``+5`` stay strings (YAML 1.1 reads ``010`` as 8 and crashes on ``08``; YAML 1.2 reads
  it as 10): an integer field then says "expected an integer" instead of guessing;
- floats: with a ``.`` or an exponent (``2e-4``, ``0.1``, ``.5``), and ``.inf``/``.nan``
  (which the schema refuses where a size is meant);
- booleans: only ``true``/``false`` (``no`` stays the string "no"); times such as
  ``10:00:00`` stay strings (YAML 1.1's base 60 makes them 36000).

``dumps`` writes YAML that reads back to exactly the same data with this loader AND with
YAML 1.1 loaders (accelerate, PyYAML's safe_load): a string that either would read as
something else is quoted. Duplicate keys, nesting deeper than ``MAX_DEPTH`` and files
over ``MAX_BYTES`` are errors that name the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hpctune.errors import ConfigError

MAX_BYTES = 1 << 20          # a profile or recipe is a few KiB
MAX_DEPTH = 16               # the deepest real value is 4 levels down

INT = re.compile(r"^(?:0|-?[1-9][0-9]*)$")
FLOAT = re.compile(r"^(?:-?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?[0-9]+[eE][-+]?[0-9]+"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")

# Replaced below; timestamps (2024-01-01) and '=' (YAML 1.1's "value" tag, which SafeLoader
# cannot even construct) stay strings.
_REPLACED = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
             "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when present: ~7x faster
    """SafeLoader with the narrowed YAML 1.2 scalars described above. The scalar rules are
    Python (the resolver), so the C and the pure-Python parser read a file alike."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", BOOL, list("tTfF"))
Loader.add_implicit_resolver("tag:yaml.org,2002:int", INT, list("-0123456789"))
Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT, list("-+0123456789."))


def _construct_int(loader, node):
    # Only INT's forms reach here implicitly; an explicit `!!int 0x1F` is refused the same way.
    text = loader.construct_scalar(node)
    if not INT.match(text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a plain decimal integer",
                                                node.start_mark)
    return int(text)


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Quotes every string that this module's Loader OR a YAML 1.1 loader would read as
    something other than that string (libyaml's emitter when present: ~10x faster)."""


_Dumper.yaml_implicit_resolvers = {
    first: list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, []))
    + [r for r in Loader.yaml_implicit_resolvers.get(first, [])
       if r not in yaml.SafeDumper.yaml_implicit_resolvers.get(first, [])]
    for first in set(yaml.SafeDumper.yaml_implicit_resolvers) | set(Loader.yaml_implicit_resolvers)
}


def dumps(data: Any) -> str:
    """YAML text that reads back to ``data`` exactly (see the module doc), in key order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1 << 16)


class StructureError(Exception):
    """A duplicate key or too deep a nesting, with the dotted path of the key."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _key_text(node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"


def _check_structure(root) -> None:
    """Duplicate keys and depth, on the composed node graph (aliases visited once)."""
    seen: set[int] = set()
    stack = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise StructureError(path, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = _key_text(key_node)
                if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path, depth + 1))
                    continue
                where = f"{path}.{key}" if path else key
                line = key_node.start_mark.line + 1
                if key in keys:
                    raise StructureError(where, f"is given twice (lines {keys[key]} and {line}); "
                                                "the second would silently replace the first")
                keys[key] = line
                stack.append((value_node, where, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{path}[{i}]", depth + 1))


def loads(text: str):
    """Parse YAML text with hpctune's loader; StructureError for duplicate keys and depth."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_structure(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; missing files, syntax and structure errors become ConfigError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (OSError, ValueError) as e:
        raise ConfigError(str(path), "", f"cannot read: {getattr(e, 'strerror', None) or e.__class__.__name__}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(str(path), "", f"is larger than {MAX_BYTES // 1024} KiB: not a profile or recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "", f"is not UTF-8 text (byte {e.start})") from None
    return parse(text, str(path))


def parse(text: str, source: str) -> dict[str, Any]:
    """Parse YAML text that must hold a mapping; errors name ``source``."""
    try:
        data = loads(text)
    except StructureError as e:
        raise ConfigError(source, e.field, e.message) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(source, "", f"not valid YAML: {where}{problem}") from None
    except RecursionError:
        raise ConfigError(source, "", f"not valid here: nested more than {MAX_DEPTH} levels deep") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got a {type(data).__name__}")
    return data


_KEY_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def parse_value(raw: str, source: str, key: str):
    """A ``--set``/``--grid`` value: YAML (so ``8`` is a number, ``[a, b]`` a list); text
    that is not valid YAML is taken as a string."""
    if not raw.strip():
        return ""
    try:
        return loads(raw)
    except StructureError as e:
        raise ConfigError(source, f"{key}{'.' + e.field if e.field else ''}", e.message) from None
    except RecursionError:
        raise ConfigError(source, key, f"nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to nested data; the value is parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected KEY=VALUE, for example training.learning_rate=2e-4")
        parts = key.split(".")
        if not all(_KEY_PART.fullmatch(p) for p in parts):
            raise ConfigError("--set", key, "is not a field path: names separated by dots, e.g. training.learning_rate")
        value = parse_value(raw, "--set", key)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError("--set", ".".join(parts[: i + 1]), "is not a section; cannot set a field inside it")
            node = child
        node[parts[-1]] = value
    return data
