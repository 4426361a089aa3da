"""Differential test of the rule book: check, render, submit --dry-run and the compute
node's preflight agree on every input.

Variants of the shipped recipes on the shipped profiles: every recipe field (enumerated from
the schema, so a new field is covered without touching this file) set to allowed, boundary
and invalid values, plus random pairs of fields (fixed seed). For each variant:

- ``hpctune check --json``, ``hpctune render`` and ``hpctune submit --dry-run`` (run
  in-process through the real click commands) report the same set of error rule ids;
- the node's preflight (``train.preflight.check_recipe``: the recipe rules, what a compute
  node runs first) run on the recipe.yaml that render writes for it finds exactly the
  recipe-scope part of that set. The node cannot see the cluster, so job-scope ids (a T4 has
  no bf16) are the login side's alone; when the login side refuses with job-scope errors
  only, the node would still accept the recipe, and when it accepts, so does the node.

An input no Job can be built from (a schema error) counts as the id ``schema:<field>``: the
node must refuse the same file at the same field. A layout rule (job.resolve) leaves no
recipe.yaml to hand to a node, so only the three login commands are compared there.
"""

from __future__ import annotations

import dataclasses
import json
import random
import types
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpctune import recipe as recipe_mod
from hpctune import resources, rules, schema, yamlfile
from hpctune.cli import cli
from hpctune.errors import ConfigError
from hpctune.job import resolved_recipe
from hpctune.prepare import prepare
from hpctune.train import preflight
from tests.cases import TRIGGERS

SEED = 20261202
RECIPE_SCOPE = {r.id for r in rules.RULES if r.scope == "recipe"}

# The recipe each shipped profile is paired with (every shipped recipe and profile appears).
PAIRS = [
    ("llama2-70b-lora-zero3", "example-h100"),
    ("llama2-70b-qlora-zero3", "example-a100-40g"),
    ("falcon-180b-lora-zero3", "example-a100-80g"),
    ("bart-large-lora-zero3-offload", "example-a100-40g"),
    ("tiny-sft", "local"),
    ("tiny-sft", "testcluster"),
    ("llama2-70b-lora-zero3", "example-t4"),
]

# Values that mean something for a few string fields; every other field gets values from
# its type alone (below), so new fields need nothing here.
MEANINGFUL = {
    "model.model_name_or_path": ["meta-llama/Llama-2-7b-hf", "tiiuae/falcon-7b", "/no/such/model", "hpctune:tiny-llama"],
    "data.dataset_name": ["timdettmers/openassistant-guanaco", "./no/such.jsonl", "hpctune:tiny-chat"],
    "data.splits": ["train", "train,test", ""],
    "training.hub_model_id": ["org/name"],
    "deepspeed.nvme_path": ["/local_nvme"],
    "layout.time": ["00:30:00", 45, "30-00:00:00", "0", "soon"],
    "layout.partition": ["h100", "debug", "nosuch", "bad name"],
    "name": ["my-run", "bad name"],
    "method.lora_target_modules": ["all-linear", ["q_proj", "v_proj"], ["query_key_value", "dense"], []],
}


def _leaves(cls, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue  # set by the loader, not an input
        tp, path = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, path + ".")
        else:
            yield path, tp, f.metadata


def _values(path: str, tp, meta) -> list:
    """Allowed, boundary and invalid values for one field, from its type and bounds."""
    if path in MEANINGFUL:
        return list(MEANINGFUL[path])
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        out = [None] if type(None) in args else []
        for a in args:
            if a is not type(None):
                out += [v for v in _values(path, a, meta) if v is not None and v not in out]
        return out
    if origin is typing.Literal:
        return list(args) + ["not-a-choice"]
    if tp is bool:
        return [True, False, "maybe"]
    if tp in (int, float):
        lo, hi = meta.get("min"), meta.get("max")
        step = 1 if tp is int else 0.5
        out = [lo if lo is not None else 0, (lo or 0) + 2 * step]
        if lo is not None:
            out.append(lo - step)
        if hi is not None:
            out += [hi, hi + step]
        return out + ["many"]
    if tp is str:
        pattern = meta.get("pattern")
        return ["plain-value", "two words"] if pattern else ["plain value", ""]
    if typing.get_origin(tp) is list:
        return [["x"], [], "not-a-list"]
    return ["x"]


def variants() -> list[tuple[str, str, tuple[str, ...]]]:
    rng = random.Random(SEED)
    single = []
    for path, tp, meta in _leaves(recipe_mod.Recipe):
        for value in _values(path, tp, meta):
            single.append((path, value))
    out = []
    for i, (path, value) in enumerate(single):
        rec, prof = PAIRS[i % len(PAIRS)]
        out.append((rec, prof, (f"{path}={json.dumps(value)}",)))
    for _ in range(max(60, 300 - len(out))):
        (p1, v1), (p2, v2) = rng.sample(single, 2)
        rec, prof = rng.choice(PAIRS)
        out.append((rec, prof, (f"{p1}={json.dumps(v1)}", f"{p2}={json.dumps(v2)}")))
    # every rule's own breaking input (tests/cases.py), alone and with a random field on top
    for cluster, rec, overrides, edit, _ in TRIGGERS.values():
        if edit is None:
            out.append((rec, cluster, tuple(overrides)))
            path, value = rng.choice(single)
            out.append((rec, cluster, (*overrides, f"{path}={json.dumps(value)}")))
    return out


def _ids_of(exc: BaseException | None) -> set[str] | None:
    if isinstance(exc, ConfigError):
        errs = getattr(exc, "errors", [exc])
        return {e.rule or f"schema:{e.field}" for e in errs}
    return None


def _login_ids(runner, args: list[str]) -> set[str]:
    result = runner.invoke(cli, args, catch_exceptions=True, standalone_mode=False)
    ids = _ids_of(result.exception)
    if ids is not None:
        return ids
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"hpctune {' '.join(args)} raised {result.exception!r}\n{result.output}")
    if args[0] == "check":
        findings = json.loads(result.stdout)["findings"]
        return {f["rule"] for f in findings if f["severity"] == "error"}
    assert result.exit_code == 0, result.output
    return set()


def _node_ids(recipe_yaml: Path) -> set[str]:
    try:
        preflight.check_recipe(recipe_mod.load(recipe_yaml))
    except ConfigError as e:
        return _ids_of(e)
    return set()


def _node_file(rec: str, prof: str, overrides, folder: Path) -> Path | None:
    """The recipe.yaml render writes for this input (whatever the login rules say), or, when
    no Job can be built, the variant's own recipe data; None after a layout rule."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    try:
        job = prepare(prof, rec, overrides).job
    except ConfigError as e:
        if e.rule:
            return None
        data = yamlfile.apply_overrides(yamlfile.read(recipe_mod.find(rec)), overrides)
        path.write_text(json.dumps(data))
        return path
    path.write_text(recipe_mod.to_yaml(resolved_recipe(job)))
    return path


VARIANTS = variants()


def test_enough_variants_from_the_schema():
    assert len(VARIANTS) >= 300
    fields = {p for p, _, _ in _leaves(recipe_mod.Recipe)}
    covered = {o.split("=", 1)[0] for _, _, ov in VARIANTS for o in ov}
    assert covered == fields and len(fields) == len(schema.field_docs(recipe_mod.Recipe)) - 1  # all but source


def test_check_render_submit_and_node_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    seen_ids, disagreements = set(), []
    for i, (rec, prof, overrides) in enumerate(VARIANTS):
        sets = [f"--set={o}" for o in overrides]
        base = ["-c", prof, str(resources.recipes_dir() / f"{rec}.yaml"), *sets]
        check = _login_ids(runner, ["check", *base, "--json"])
        render = _login_ids(runner, ["render", *base, "-o", str(tmp_path / f"r{i}")])
        submit = _login_ids(runner, ["submit", *base, "--dry-run", "-o", str(tmp_path / f"s{i}")])
        node_file = _node_file(str(resources.recipes_dir() / f"{rec}.yaml"), prof, overrides, tmp_path / f"n{i}")
        node = None if node_file is None else _node_ids(node_file)
        expected_node = {x for x in check if x in RECIPE_SCOPE or x.startswith("schema:")}
        if not (check == render == submit) or (node is not None and node != expected_node):
            disagreements.append(f"{rec} on {prof} {list(overrides)}: check {sorted(check)}, render {sorted(render)}, "
                                 f"submit --dry-run {sorted(submit)}, node {sorted(node) if node is not None else '-'}")
        seen_ids |= check
    assert not disagreements, f"{len(disagreements)} of {len(VARIANTS)} variants disagree:\n" + "\n".join(disagreements[:20])
    # the variants reach the rule book, not only the schema: every recipe rule errs somewhere
    erring = {r.id for r in rules.RULES if r.scope == "recipe"} - {"qlora-offload", "ddp-timeout"}  # warnings
    assert erring <= seen_ids, sorted(erring - seen_ids)


# The issue's five commands (issue #10), as regression tests.
ISSUE = [
    ("check", "example-h100", "llama2-70b-qlora-zero3",
     # storage bfloat16 (the recipe's) under DeepSpeed fp16 is also D1 of the GPU-path review
     ["deepspeed.zero_stage=2", "model.torch_dtype=float16", "layout.gpus_per_node=8", "precision=fp16"],
     {"qlora-storage-dtype", "qlora-storage-precision"}),
    ("check", "example-h100", "llama2-70b-qlora-zero3", ["method.quant_bits=8", "layout.gpus_per_node=8"], {"quant8-zero3"}),
    ("check", "example-h100", "bart-large-lora-zero3-offload",
     ["method.type=qlora", "layout.gpus_per_node=1", "model.attn_implementation=sdpa"], {"seq2seq-lora-only"}),
    ("check", "example-h100", "llama2-70b-lora-zero3",
     ["layout.nodes=auto", "layout.gpus_per_node=2", "deepspeed.zero_stage=2"], set()),
    ("render", "example-h100", "llama2-70b-lora-zero3",
     ["layout.nodes=auto", "layout.gpus_per_node=2", "deepspeed.zero_stage=2"], set()),
]


@pytest.mark.parametrize("command,prof,rec,overrides,expected", ISSUE, ids=[f"{i + 1}-{c[0]}" for i, c in enumerate(ISSUE)])
def test_issue_commands(command, prof, rec, overrides, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    sets = [f"--set={o}" for o in overrides]
    args = [command, "-c", prof, rec, *sets] + (["--json"] if command == "check" else ["-o", str(tmp_path / "x")])
    assert _login_ids(runner, args) == expected
    # ... and the login side and the node now say the same
    other = "render" if command == "check" else "check"
    assert _login_ids(runner, [other, "-c", prof, rec, *sets] + (["--json"] if other == "check" else ["-o", str(tmp_path / "y")])) == expected
    node_file = _node_file(rec, prof, tuple(overrides), tmp_path / "n")
    assert _node_ids(node_file) == expected
    if not expected:  # the auto layout of the review: 1 node x 8 GPUs, ZeRO-3
        job = prepare(prof, rec, overrides).job
        assert (job.nodes, job.procs_per_node, job.recipe.deepspeed.zero_stage) == (1, 8, 3)
