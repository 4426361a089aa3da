"""Every rule of the registry fires on an input that breaks it (naming the file and field),
through hpctune.prepare, the path every command takes; the shipped recipes pass every rule
on their profiles. Layout rules are raised by job.resolve; bundle rules are triggered by
tampering with a rendered bundle the way a hand edit would, and `hpctune check RUN_DIR`
finds the edit; node rules are raised by train/preflight with their declared ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hpctune import render, resources, rules
from hpctune.errors import ConfigError
from hpctune.prepare import prepare
from hpctune.rules.bundle import Bundle
from tests.clitools import hpctune
from tests.cases import BASE, TRIGGERS
from tests.test_render_golden import FITS

R = lambda name: str(resources.recipes_dir() / f"{name}.yaml")  # noqa: E731


def _prepared(cluster: str, recipe: str, overrides=(), profile_edit=None, tmp: Path | None = None):
    if profile_edit:
        data = yaml.safe_load((resources.clusters_dir() / f"{cluster}.yaml").read_text())
        profile_edit(data)
        path = tmp / "profile.yaml"
        path.write_text(yaml.safe_dump(data))
        cluster = str(path)
    return prepare(cluster, recipe, tuple(overrides))


def test_every_rule_has_a_trigger():
    checked = {r.id for r in rules.RULES if r.fn is not None and r.scope in ("recipe", "job")}
    assert checked == set(TRIGGERS)
    assert {r.id for r in rules.RULES if r.scope == "bundle"} == set(CROSS)
    assert {r.id for r in rules.RULES if r.scope == "job" and r.fn is None} == set(LAYOUT)


@pytest.mark.parametrize("rule_id", sorted(TRIGGERS))
def test_rule_fires(rule_id, tmp_path):
    cluster, recipe, overrides, edit, field = TRIGGERS[rule_id]
    prep = _prepared(cluster, R(recipe), overrides, edit, tmp_path)
    hits = [f for f in prep.findings if f.rule == rule_id]
    assert hits, f"{rule_id} did not fire"
    f = hits[0]
    assert f.field == field
    assert f.source.endswith((".yaml",)), f.source
    assert f.fix
    # and the same input without the breakage does not fire it
    clean = _prepared(cluster, R(recipe), BASE.get(cluster, []))
    assert rule_id not in {x.rule for x in clean.findings}


def test_recipe_rules_read_nothing_but_the_recipe():
    """A recipe rule must give the same answer on the login node and the compute node: it
    takes the Recipe alone (the registry calls it with nothing else)."""
    import inspect
    for r in rules.RULES:
        if r.scope == "recipe":
            assert list(inspect.signature(r.fn).parameters) == ["rec"], r.id
            assert r.fn.__module__ == "hpctune.rules.recipe", r.id


# rule id -> overrides on llama2-70b-lora-zero3 / example-h100 that job.resolve refuses
LAYOUT = {
    "partition-exists": ["layout.partition=nosuch"],
    "partition-nodes": ["layout.nodes=4096"],
    "partition-time": ["layout.time=30-00:00:00"],
    "node-gpus": ["layout.gpus_per_node=9"],
    "node-cpus": ["layout.cpus_per_task=100000"],
    "node-memory": ["layout.mem_gib=100000"],
}


@pytest.mark.parametrize("rule_id", sorted(LAYOUT))
def test_layout_rule_is_raised_with_its_id(rule_id):
    with pytest.raises(ConfigError) as e:
        prepare("example-h100", R("llama2-70b-lora-zero3"), LAYOUT[rule_id])
    assert e.value.rule == rule_id and e.value.field.startswith("layout."), str(e.value)


def test_node_rules_are_the_ones_preflight_raises():
    """Every ConfigError in train/preflight.py names one of the declared node rules, and
    every declared node rule is raised there."""
    import ast
    from hpctune.train import preflight
    tree = ast.parse(Path(preflight.__file__).read_text())
    raised = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError":
            kw = {k.arg: k.value for k in node.keywords}
            assert "rule" in kw, f"preflight.py:{node.lineno}: ConfigError without a rule id"
            raised.add(kw["rule"].value)
    assert raised == {r.id for r in rules.RULES if r.scope == "node"}


@pytest.mark.parametrize("name", sorted(FITS))
def test_shipped_recipes_pass_every_rule(name, tmp_path):
    proc = hpctune("check", "-c", FITS[name], name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 0 error(s), 0 warning(s)" in proc.stdout


def _bundle(tmp_path):
    job = prepare("example-a100-80g", R("falcon-180b-lora-zero3")).raise_errors().job
    return job, render.write_bundle(job, tmp_path / "b")


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


CROSS = {
    "grad-accum-agree": ("accelerate_config.yaml", "gradient_accumulation_steps: 8", "gradient_accumulation_steps: \"8\""),
    "clipping-agree": ("accelerate_config.yaml", "gradient_clipping: 1.0", "gradient_clipping: 0.5"),
    "standard-launcher": ("accelerate_config.yaml", "deepspeed_multinode_launcher: standard", "deepspeed_multinode_launcher: pdsh"),
    "precision-agree": ("accelerate_config.yaml", 'mixed_precision: "bf16"', "mixed_precision: fp16"),
    "processes-agree": ("accelerate_config.yaml", "num_processes: 16", "num_processes: 8"),
    "nodes-agree": ("accelerate_config.yaml", "num_machines: 2", "num_machines: 1"),
    "save-16bit-agree": ("accelerate_config.yaml", "zero3_save_16bit_model: true", "zero3_save_16bit_model: false"),
    "stage-agree": ("accelerate_config.yaml", "zero_stage: 3", "zero_stage: 2"),
    "one-task-per-node": ("job.sbatch", "#SBATCH --ntasks-per-node=1", "#SBATCH --ntasks-per-node=8"),
    "gpus-agree": ("job.sbatch", "#SBATCH --gpus-per-node=8", "#SBATCH --gpus-per-node=4"),
    "sbatch-directives-first": ("job.sbatch", "set -euo pipefail\n", "set -euo pipefail\n#SBATCH --mem=10G\n"),
    "sbatch-literal": ("job.sbatch", "#SBATCH --nodes=2", "#SBATCH --nodes=$NUM_NODES"),
    "rank-per-node": ("job.sbatch", "set -euo pipefail\n", "set -euo pipefail\nexport RANK=$SLURM_NODEID\n"),
    "launch-flags": ("launch.sh", "  --rdzv_backend static \\\n", ""),
}


@pytest.mark.parametrize("rule_id", sorted(CROSS))
def test_cross_file_rule_fires_on_tampered_bundle(rule_id, tmp_path):
    job, bundle = _bundle(tmp_path)
    assert rules.run(bundle=Bundle.read(bundle)) == []
    fname, old, new = CROSS[rule_id]
    _edit(bundle / fname, old, new)
    found = {f.rule for f in rules.run(bundle=Bundle.read(bundle))}
    assert rule_id in found, found


def test_check_run_dir_finds_hand_edits(tmp_path):
    """`hpctune check RUN_DIR`: the cross-file rules, and the recipe rules on recipe.yaml
    (what the node's preflight will run first)."""
    job, bundle = _bundle(tmp_path)
    ok = hpctune("check", str(bundle))
    assert ok.returncode == 0 and "OK: 0 error(s)" in ok.stdout, ok.stdout + ok.stderr
    _edit(bundle / "accelerate_config.yaml", "num_machines: 2", "num_machines: 1")
    _edit(bundle / "recipe.yaml", "zero3_save_16bit_model: true", "zero3_save_16bit_model: false")
    proc = hpctune("check", str(bundle), "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    found = {(f["rule"], f["source"]) for f in json.loads(proc.stdout)["findings"]}
    assert ("nodes-agree", f"{bundle}/accelerate_config.yaml") in found
    assert ("save-16bit", f"{bundle}/recipe.yaml") in found
    assert "--set" in hpctune("check", str(bundle), "--set", "a=1").stderr  # a folder is checked as it is


def test_render_refuses_a_template_that_breaks_a_bundle_rule(tmp_path, monkeypatch):
    """The bundle rules run on every render, before anything is written."""
    job, _ = _bundle(tmp_path)
    real = render.render_files

    def broken(*a, **kw):
        files = real(*a, **kw)
        files["job.sbatch"] = files["job.sbatch"].replace("--ntasks-per-node=1", "--ntasks-per-node=8")
        return files

    monkeypatch.setattr(render, "render_files", broken)
    with pytest.raises(ConfigError) as e:
        render.write_bundle(job, tmp_path / "c")
    assert e.value.rule == "one-task-per-node" and not (tmp_path / "c").exists()


def test_check_exits_2_and_names_the_rule():
    proc = hpctune("check", "-c", "example-h100", "llama2-70b-lora-zero3", "--set", "deepspeed.zero3_save_16bit_model=false")
    assert proc.returncode == 2
    assert re.search(r"ERROR .*llama2-70b-lora-zero3.yaml: deepspeed.zero3_save_16bit_model: .*\[rule save-16bit\]", proc.stdout)
