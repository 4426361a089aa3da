"""Load plain YAML data into typed, documented dataclasses, with errors that name the field.

Profiles and recipes are trees of dataclasses. Each field carries its documentation and
constraints in ``field(metadata=...)``:

- ``doc``: one line shown by ``hpctune clusters show`` and in error messages;
- ``min`` / ``max``: numeric bounds;
- ``pattern``: a regular expression a string must match in full (used for every value
  that is written into an ``#SBATCH`` line, where quoting is impossible, and for every
  token a command reads as a word of its own: names never start with ``-``);
- ``max_len``: most characters of a string (default ``MAX_LEN``);
- ``path``: the string is a file path: no component longer than 255 bytes.

Every string, map key and list item also: has no control character, line or paragraph
separator, invisible format character or lone surrogate (one line, what you see is what
runs); does not look like a secret token (those belong in the environment). Numbers are
finite and within bounds (a default bound keeps planner arithmetic finite).

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``,
``X | None``, ``int | Literal["auto"]`` style unions, ``list[X]``, ``dict[str, str]`` and
nested dataclasses. An unknown key is an error with a did-you-mean suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

from hpctune.errors import ConfigError

# Strings that end up in #SBATCH directives or shell words must never carry a newline or a
# control character: a newline in a comment line would start a new shell command. Unicode
# line/paragraph separators and NEL break lines for YAML and editors; format characters
# (bidi overrides, zero-width) make a value read differently from what runs; lone
# surrogates cannot even be written to a UTF-8 file.
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}

MAX_LEN = 1024                 # default: longest string value
INT_LIMIT = 2**31 - 1          # default bound of integers without their own
FLOAT_LIMIT = 1e12             # default bound of numbers without their own
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

# Token formats that are never configuration: a value matching one is refused wherever
# it appears (the file would be shared, rendered into 0755 scripts and kept in the bundle).
SECRET_VALUE = re.compile(
    r"(?:hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,}"
    r"|sk-[A-Za-z0-9_\-]{20,}|xox[abposr]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)")


def bad_char(text: str) -> str | None:
    """The first character a one-line value must not hold, or None."""
    import unicodedata
    for ch in text:
        if ch in "\t\n" or unicodedata.category(ch) in _BAD_CATEGORIES:
            return ch
    return None


def show(value: Any, limit: int = 60) -> str:
    """repr() of a value, cut to ``limit`` characters (error messages stay one short line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{repr(value[:limit])[:-1]}...' ({len(value)} characters)"
    return text[:limit] + "..."


def doc(text: str, **meta: Any) -> dict[str, Any]:
    """Metadata helper: ``field(default=..., metadata=doc("what it is", min=1))``."""
    return {"doc": text, **meta}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {show(value)}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    if isinstance(value, float):
        return f"the number {value!r}"
    return show(value)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    """typing.get_type_hints, once per dataclass (it evaluates every annotation string)."""
    return typing.get_type_hints(cls)


class _Loader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str) -> typing.NoReturn:
        raise ConfigError(self.source, path, message)

    def load(self, cls: type, data: Any, path: str = "") -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path or "(top level)", f"expected a mapping of fields, got {_describe(data)}")
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                allowed = ", ".join(fields)
                self.fail(_join(path, str(key)), f"unknown field{hint} (allowed: {allowed})")
        kwargs = {}
        for name, f in fields.items():
            fpath = _join(path, name)
            if name in data:
                kwargs[name] = self.value(hints[name], data[name], fpath, f.metadata)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(fpath, f"is required ({f.metadata.get('doc', _type_name(hints[name]))})")
        return cls(**kwargs)

    def value(self, tp: Any, value: Any, path: str, meta: Any = None) -> Any:
        meta = meta or {}
        origin = get_origin(tp)
        if _is_union(tp):
            options = get_args(tp)
            if value is None:
                if type(None) in options:
                    return None
                self.fail(path, f"must be set: expected {_type_name(tp)}")
            candidates = [o for o in options if o is not type(None)]
            if len(candidates) == 1:  # X | None: report X's own error (pattern, bounds, ...)
                return self.value(candidates[0], value, path, meta)
            # Try literals first so that "auto" is not reported as "not an integer".
            for option in sorted(candidates, key=lambda o: get_origin(o) is not Literal):
                try:
                    return self.value(option, value, path, meta)
                except ConfigError:
                    if _accepts_type(option, value):
                        raise  # right type, wrong value: that error is the useful one
            self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        if origin is Literal:
            allowed = get_args(tp)
            if value in allowed and type(value) is type(next(a for a in allowed if a == value)):
                return value
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if isinstance(value, bool) and ("no" in allowed or "yes" in allowed):
                hint = "; a bare no/yes/off/on is a YAML boolean: write it in quotes, e.g. 'no'"
            self.fail(path, f"{_describe(value)} is not allowed{hint} (allowed: "
                            + ", ".join(repr(a) for a in allowed) + ")")
        if dataclasses.is_dataclass(tp):
            return self.load(tp, value, path)
        if origin is list:
            (item_tp,) = get_args(tp)
            if not isinstance(value, list):
                self.fail(path, f"expected a list, got {_describe(value)}")
            return [self.value(item_tp, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
        if origin is dict:
            key_tp, val_tp = get_args(tp)
            if not isinstance(value, dict):
                self.fail(path, f"expected a mapping, got {_describe(value)}")
            out = {}
            for k, v in value.items():
                kpath = f"{path}.{k}"
                k = self.value(key_tp, k, kpath, meta)
                if val_tp is str and isinstance(v, int) and not isinstance(v, bool):
                    v = str(v)  # environment values: 1 and "1" mean the same (decimal only: exact)
                out[k] = self.value(val_tp, v, kpath, meta)
            return out
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {_describe(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                hint = ""
                if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9][0-9_]*|0[oOxXbB][0-9a-fA-F_]+", value.strip()):
                    hint = " (write a plain decimal number such as 8: no leading zeros, 0o/0x prefixes or _)"
                self.fail(path, f"expected an integer, got {_describe(value)}{hint}")
            return int(self.bounds(value, path, meta, INT_LIMIT))
        if tp is float:
            # A number written as text (e.g. in quotes) is accepted when it is plainly one.
            if isinstance(value, str):
                if not _FLOAT_TEXT.fullmatch(value.strip()):
                    self.fail(path, f"expected a number, got {_describe(value)}")
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, f"expected a number, got {_describe(value)}")
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                self.fail(path, f"must be a finite number, got {value}")
            return self.bounds(value, path, meta, FLOAT_LIMIT)
        if tp is str:
            if not isinstance(value, str):
                hint = ""
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    hint = " (YAML read a number: put the value in quotes if it is text)"
                self.fail(path, f"expected a string, got {_describe(value)}{hint}")
            self.check_text(value, path, meta)
            pattern = meta.get("pattern")
            if pattern and not re.fullmatch(pattern, value):
                self.fail(path, f"{show(value)} is not allowed here: {meta.get('pattern_doc', pattern)}")
            return value
        if tp is Any:
            return value
        raise TypeError(f"schema: unsupported annotation {tp!r} at {path}")  # programming error

    def check_text(self, value: str, path: str, meta: Any) -> None:
        """What every string must be: one line, bounded, printable, no secret."""
        limit = meta.get("max_len", MAX_LEN)
        if len(value) > limit:
            self.fail(path, f"is {len(value)} characters long; at most {limit} allowed")
        ch = bad_char(value)
        if ch is not None:
            self.fail(path, f"must be one line of visible text: it holds {ch!r} (newlines, control and "
                            "invisible characters are not allowed)")
        if SECRET_VALUE.search(value):
            self.fail(path, "looks like a secret token; secrets do not belong in profiles or recipes: export it "
                            "in the environment instead (e.g. HF_TOKEN; read at run time, never written)")
        if meta.get("path"):
            for part in value.split("/"):
                if len(part.encode("utf-8", "surrogatepass")) > 255:
                    self.fail(path, f"has a path component of {len(part.encode('utf-8', 'surrogatepass'))} bytes; "
                                    "file systems allow at most 255")

    def bounds(self, value: float, path: str, meta: Any, limit: float | None = None) -> Any:
        lo, hi = meta.get("min"), meta.get("max")
        if limit is not None:
            lo = -limit if lo is None else lo
            hi = limit if hi is None else hi
        if lo is not None and value < lo:
            self.fail(path, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            self.fail(path, f"must be at most {hi}, got {value}")
        return value


def _accepts_type(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the basic Python type ``tp`` wants (ignoring constraints)."""
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool, float):
        return isinstance(value, tp)
    origin = get_origin(tp)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return False


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def load(cls: type, data: Any, source: str) -> Any:
    """Build ``cls`` from ``data`` (parsed YAML); raise ConfigError naming ``source``."""
    return _Loader(str(source)).load(cls, data)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain data (for YAML/JSON dumps), keeping field order."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, doc) for every field of a dataclass tree: for help and docs."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            rows += field_docs(tp, name)
        else:
            rows.append((name, _type_name(tp), f.metadata.get("doc", "")))
    return rows
