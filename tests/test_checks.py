"""Every named rule fires on an input that breaks it (naming the file and field), and the
shipped recipes pass every rule on their profiles. Cross-file rules are triggered by
tampering with a rendered bundle the way a hand edit would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hpctune import checks, crosscheck, resources
from hpctune import job as job_mod
from hpctune import profile as profile_mod
from hpctune import recipe as recipe_mod
from hpctune import render
from tests.clitools import hpctune
from tests.test_render_golden import FITS

R = lambda name: str(resources.recipes_dir() / f"{name}.yaml")  # noqa: E731


def _job(cluster: str, recipe: str, overrides=(), profile_edit=None, tmp: Path | None = None):
    if profile_edit:
        data = yaml.safe_load((resources.clusters_dir() / f"{cluster}.yaml").read_text())
        profile_edit(data)
        path = tmp / "profile.yaml"
        path.write_text(yaml.safe_dump(data))
        cluster = str(path)
    return job_mod.resolve(profile_mod.load(cluster), recipe_mod.load(recipe, tuple(overrides)))


def _ifname_off(p):
    p["network"]["socket_ifname"] = None


def _c10d(p):
    p["rendezvous"] = "c10d"


# A T4 layout that passes every rule; the T4 triggers add one breaking override to it.
T4_BASE = ["layout.gpus_per_node=4", "layout.time=1:00:00", "precision=fp16", "model.attn_implementation=sdpa"]
BASE = {"example-t4": T4_BASE}

# rule id -> (cluster, recipe, overrides, profile edit, field named in the finding)
TRIGGERS = {
    "offload-stage": ("example-h100", "llama2-70b-lora-zero3", ["deepspeed.zero_stage=2", "deepspeed.offload_param_device=cpu"], None, "deepspeed.offload_param_device"),
    "nvme-path": ("example-a100-40g", "llama2-70b-qlora-zero3", ["deepspeed.offload_optimizer_device=nvme"], None, "deepspeed.nvme_path"),
    "save-16bit": ("example-h100", "llama2-70b-lora-zero3", ["deepspeed.zero3_save_16bit_model=false"], None, "deepspeed.zero3_save_16bit_model"),
    "qlora-storage-dtype": ("example-a100-40g", "llama2-70b-qlora-zero3", ["model.torch_dtype=float16"], None, "method.bnb_4bit_quant_storage_dtype"),
    "qlora-zero3-init": ("example-a100-40g", "llama2-70b-qlora-zero3", ["deepspeed.zero3_init_flag=false"], None, "deepspeed.zero3_init_flag"),
    "qlora-offload": ("example-a100-40g", "llama2-70b-qlora-zero3", ["deepspeed.offload_param_device=cpu", "deepspeed.offload_optimizer_device=cpu"], None, "deepspeed.offload_param_device"),
    "gpu-bf16": ("example-t4", "llama2-70b-lora-zero3", T4_BASE + ["precision=bf16"], None, "precision"),
    "gpu-flash-attn": ("example-t4", "llama2-70b-lora-zero3", T4_BASE + ["model.attn_implementation=flash_attention_2"], None, "model.attn_implementation"),
    "lora-targets": ("example-a100-80g", "falcon-180b-lora-zero3", ["method.lora_target_modules=[q_proj, k_proj]"], None, "method.lora_target_modules"),
    "local-paths": ("example-h100", "llama2-70b-lora-zero3", ["model.model_name_or_path=/no/such/model"], None, "model.model_name_or_path"),
    "precision-dtype": ("example-h100", "llama2-70b-lora-zero3", ["model.torch_dtype=float16"], None, "model.torch_dtype"),
    "eval-split": ("example-h100", "llama2-70b-lora-zero3", ["data.splits=train"], None, "training.eval_strategy"),
    "ddp-timeout": ("example-h100", "llama2-70b-lora-zero3", ["training.ddp_timeout=1800"], None, "training.ddp_timeout"),
    "push-to-hub": ("example-h100", "llama2-70b-lora-zero3", ["training.push_to_hub=true"], None, "training.hub_model_id"),
    "multinode-network": ("example-a100-80g", "falcon-180b-lora-zero3", [], _ifname_off, "network.socket_ifname"),
    "c10d-timeout": ("example-a100-80g", "falcon-180b-lora-zero3", [], _c10d, "rendezvous"),
    "memory-fits": ("example-h100", "llama2-70b-lora-zero3", ["layout.gpus_per_node=2", "deepspeed.zero_stage=2"], None, "layout"),
    "resume-checkpoints": ("example-h100", "llama2-70b-lora-zero3", ["training.save_strategy=no"], None, "training.save_strategy"),
}


def test_every_rule_has_a_trigger():
    assert {r.id for r in checks.RULES} == set(TRIGGERS)


@pytest.mark.parametrize("rule_id", sorted(TRIGGERS))
def test_rule_fires(rule_id, tmp_path):
    cluster, recipe, overrides, edit, field = TRIGGERS[rule_id]
    job = _job(cluster, R(recipe), overrides, edit, tmp_path)
    hits = [f for f in checks.run(job) if f.rule == rule_id]
    assert hits, f"{rule_id} did not fire"
    f = hits[0]
    assert f.field == field
    assert f.source.endswith((".yaml",)), f.source
    assert f.fix
    # and the same input without the breakage does not fire it
    clean = _job(cluster, R(recipe), BASE.get(cluster, []))
    assert rule_id not in {x.rule for x in checks.run(clean)}


@pytest.mark.parametrize("name", sorted(FITS))
def test_shipped_recipes_pass_every_rule(name, tmp_path):
    proc = hpctune("check", "-c", FITS[name], name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 0 error(s), 0 warning(s)" in proc.stdout


def _bundle(tmp_path):
    job = job_mod.load("example-a100-80g", R("falcon-180b-lora-zero3"))
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
    "save-16bit": ("accelerate_config.yaml", "zero3_save_16bit_model: true", "zero3_save_16bit_model: false"),
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
    assert crosscheck.check_bundle(bundle, job) == []
    fname, old, new = CROSS[rule_id]
    _edit(bundle / fname, old, new)
    rules = {f.rule for f in crosscheck.check_bundle(bundle, job)}
    assert rule_id in rules, rules


def test_check_exits_2_and_names_the_rule():
    proc = hpctune("check", "-c", "example-h100", "llama2-70b-lora-zero3", "--set", "deepspeed.zero3_save_16bit_model=false")
    assert proc.returncode == 2
    assert re.search(r"ERROR .*llama2-70b-lora-zero3.yaml: deepspeed.zero3_save_16bit_model: .*\[rule save-16bit\]", proc.stdout)
