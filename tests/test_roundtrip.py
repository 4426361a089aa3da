"""Round trip: a bundle's recipe.yaml reads back to exactly the resolved recipe, for every
field (enumerated from the schema), with values that look like numbers, booleans, times,
dates, octal or null; and YAML 1.1 readers (PyYAML's safe_load, as accelerate uses) read
the same text to the same data. Also the scalar rules of hpctune's YAML loader."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpctune import profile as profile_mod
from hpctune import recipe as recipe_mod
from hpctune import render, schema, yamlfile
from hpctune.job import resolved_recipe
from hpctune.prepare import prepare
from hpctune.errors import ConfigError

TRICKY = ["08", "010", "0o17", "0x1F", "0b11", "1_000", "1e5", "1E-4", "+5", "-0", "1.", ".5", ".inf", "-.inf",
          ".nan", "NaN", "10:00:00", "1:30", "190:20:30", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "no",
          "yes", "on", "off", "y", "n", "true", "True", "false", "null", "Null", "~", "", " ", "=", "<<", "- x",
          "a: b", "#x", "x #y", "'", '"', "@x", "`x`", "|", ">", "!x", "&a", "*a", "%x", "{a}", "[a]", "é", "0",
          "00", "1", "-1", "12345678901234567890"]


def _text():
    return st.one_of(st.sampled_from(TRICKY), st.text(max_size=40))


def _value_for(tp, meta):
    """A strategy of values a field of annotation ``tp`` may be given (some are refused)."""
    origin = get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of([_value_for(a, meta) for a in get_args(tp)])
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=int(meta.get("min", -10)), max_value=int(min(meta.get("max", 10**6), 10**9)))
    if tp is float:
        lo, hi = float(meta.get("min", -1e6)), float(meta.get("max", 1e6))
        return st.one_of(st.floats(min_value=lo, max_value=hi, allow_nan=False), st.sampled_from([lo, hi, 1e-5, 2e-4]))
    if tp is str:
        return _text()
    if origin is list:
        return st.lists(_value_for(get_args(tp)[0], meta), min_size=1, max_size=3)
    if origin is dict:
        return st.dictionaries(_text(), _text(), max_size=2)
    raise AssertionError(f"no strategy for {tp}")


def _leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, dict(f.metadata)


RECIPE_LEAVES = list(_leaves(recipe_mod.Recipe))
BASE = {"name": "rt", "model": {"model_name_or_path": "org/model"}, "data": {"dataset_name": "org/data"}}


def _with(path: str, value) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    parts = path.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return data


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b and type(a) is type(b)


@settings(max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_resolved_recipe_reads_back_exactly(data):
    path, tp, meta = data.draw(st.sampled_from(RECIPE_LEAVES), label="field")
    value = data.draw(_value_for(tp, meta), label="value")
    try:
        rec = recipe_mod.parse(_with(path, value), "r.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    text = recipe_mod.to_yaml(rec)
    back = recipe_mod.parse(yamlfile.loads(text), "r.yaml")
    assert schema.to_dict(back) == schema.to_dict(rec), text
    # The same text, read by a YAML 1.1 reader, gives the same data (types included).
    ours, theirs = yamlfile.loads(text), yaml.safe_load(text)
    assert ours == theirs, text
    for k in ours:
        if isinstance(ours[k], dict):
            for kk in ours[k]:
                assert _same(ours[k][kk], theirs[k][kk]), (k, kk, ours[k][kk], theirs[k][kk])


@pytest.mark.parametrize("value", TRICKY)
def test_tricky_strings_in_a_bundle(value, tmp_path):
    """Every string field of a rendered bundle at once: recipe.yaml on disk, read back by the
    loader the node uses, equals what was rendered."""
    data = {"name": "rt", "model": {"model_name_or_path": "org/model", "revision": value},
            "data": {"dataset_name": "org/data", "dataset_text_field": value, "dataset_messages_field": value,
                     "dataset_label_field": value},
            "training": {"hub_model_id": value}, "description": value}
    try:
        rec = recipe_mod.parse(data, "r.yaml")
    except ConfigError:
        return  # e.g. the empty string where a name is needed
    rec.source = str(tmp_path / "r.yaml")
    job = prepare(profile_mod.load("local"), rec).job
    bundle = render.write_bundle(job, tmp_path / "b")
    on_node = recipe_mod.load(bundle / "recipe.yaml")
    expected = schema.to_dict(resolved_recipe(job))
    got = schema.to_dict(on_node)
    expected.pop("source"), got.pop("source")
    assert got == expected


@pytest.mark.parametrize("text,expected", [
    ("a: 08", "08"), ("a: 0o17", "0o17"), ("a: 1_000", "1_000"), ("a: 0x1F", "0x1F"), ("a: +5", "+5"),
    ("a: 010", "010"), ("a: 10", 10), ("a: -3", -3), ("a: 0", 0), ("a: 1e5", 1e5), ("a: 2.5", 2.5),
    ("a: 10:00:00", "10:00:00"), ("a: no", "no"), ("a: yes", "yes"), ("a: true", True), ("a: 2024-01-01", "2024-01-01"),
    ("a: =", "="), ("a: ~", None),
])
def test_scalar_rules(text, expected):
    assert _same(yamlfile.loads(text)["a"], expected)


@pytest.mark.parametrize("text,field", [
    ("a: 1\na: 2\n", "a"),
    ("training:\n  seed: 1\ntraining:\n  seed: 2\n", "training"),
    ("model:\n  x: 1\n  x: 2\n", "model.x"),
])
def test_duplicate_keys(text, field, tmp_path):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        yamlfile.read(tmp_path / "r.yaml")
    assert e.value.field == field and "given twice" in e.value.message


def test_deep_nesting_and_aliases(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested more than"):
        yamlfile.read(deep)
    laughs = tmp_path / "laughs.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    laughs.write_text("\n".join(lines) + "\n")
    data = yamlfile.read(laughs)  # aliases are shared, not copied: this is quick and small
    assert len(data["a8"]) == 10
    with pytest.raises(ConfigError):
        recipe_mod.parse({**BASE, "description": data["a8"]}, "laughs.yaml")
