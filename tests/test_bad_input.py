"""Broken profiles and recipes: each gives exit code 2 and ONE message naming the file and
the field (and what is allowed), no traceback, and no file written.

Each case starts from a shipped profile and recipe, breaks one thing, and runs the real
`hpctune render` in a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpctune import resources
from tests.clitools import hpctune

H100, T4 = "example-h100", "example-t4"
LLAMA = "llama2-70b-lora-zero3"
QLORA = "llama2-70b-qlora-zero3"


def _set(path: str, value):
    def edit(data):
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return edit


def _delete(path: str):
    def edit(data):
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return edit


# id, profile (name) , profile edit, recipe (name), recipe edit or raw text, --set overrides,
# expected file (profile|recipe|cli), expected field text, expected words in the message
CASES = [
    ("recipe-bad-yaml", H100, None, LLAMA, "name: x\ntraining: [unclosed\n", [], "recipe", "", "not valid YAML: line"),
    ("profile-bad-yaml", H100, "name: x\nnode: {gpus_per_node: 8\n", LLAMA, None, [], "profile", "", "not valid YAML"),
    ("unknown-recipe-key", H100, None, LLAMA, _set("training.learning_rat", 1.0), [], "recipe", "training.learning_rat", "did you mean 'learning_rate'"),
    ("unknown-profile-key", H100, _set("node.gpus_per_nod", 8), LLAMA, None, [], "profile", "node.gpus_per_nod", "did you mean 'gpus_per_node'"),
    ("unknown-section", H100, None, LLAMA, _set("trainng", {}), [], "recipe", "trainng", "did you mean 'training'"),
    ("wrong-type-int", H100, None, LLAMA, _set("training.per_device_train_batch_size", "eight"), [], "recipe", "training.per_device_train_batch_size", "expected an integer"),
    ("string-grad-accum", H100, None, LLAMA, _set("training.gradient_accumulation_steps", "8"), [], "recipe", "training.gradient_accumulation_steps", "the string '8'"),
    ("wrong-type-bool", H100, None, LLAMA, _set("training.gradient_checkpointing", "yes please"), [], "recipe", "training.gradient_checkpointing", "true or false"),
    ("negative-gpus", H100, _set("node.gpus_per_node", -1), LLAMA, None, [], "profile", "node.gpus_per_node", "at least 0"),
    ("too-many-gpus", H100, None, LLAMA, None, ["layout.gpus_per_node=16"], "recipe", "layout.gpus_per_node", "nodes have 8"),
    ("too-many-nodes", H100, None, LLAMA, None, ["layout.nodes=32"], "recipe", "layout.nodes", "at most 16"),
    ("time-over-limit", H100, None, LLAMA, None, ["layout.time=3-00:00:00"], "recipe", "layout.time", "over the time limit of partition 'h100'"),
    ("bad-time-format", H100, None, LLAMA, None, ["layout.time=2 hours"], "recipe", "layout.time", "not a Slurm time"),
    ("unknown-partition", H100, None, LLAMA, None, ["layout.partition=gpu"], "recipe", "layout.partition", "allowed: h100"),
    ("param-offload-zero2", H100, None, LLAMA, None, ["deepspeed.zero_stage=2", "deepspeed.offload_param_device=cpu"], "recipe", "deepspeed.offload_param_device", "zero_stage 3"),
    ("optim-offload-zero1", H100, None, LLAMA, None, ["deepspeed.zero_stage=1", "deepspeed.offload_optimizer_device=cpu"], "recipe", "deepspeed.offload_optimizer_device", "zero_stage 2 or 3"),
    ("bad-offload-device", H100, None, LLAMA, None, ["deepspeed.offload_param_device=gpu"], "recipe", "deepspeed.offload_param_device", "allowed: 'none', 'cpu', 'nvme'"),
    ("zero-stage-4", H100, None, LLAMA, None, ["deepspeed.zero_stage=4"], "recipe", "deepspeed.zero_stage", "at most 3"),
    ("qlora-storage-dtype", "example-a100-40g", None, QLORA, None, ["model.torch_dtype=float16"], "recipe", "method.bnb_4bit_quant_storage_dtype", "loaded as 'float16'"),
    ("qlora-no-zero3-init", "example-a100-40g", None, QLORA, None, ["deepspeed.zero3_init_flag=false"], "recipe", "deepspeed.zero3_init_flag", "zero3_init_flag"),
    ("bf16-on-t4", T4, None, LLAMA, None, ["layout.gpus_per_node=4", "model.attn_implementation=sdpa", "layout.time=10:00:00"], "recipe", "precision", "not supported by t4"),
    ("flash-attn-on-t4", T4, None, LLAMA, None, ["precision=fp16", "layout.gpus_per_node=4", "layout.time=10:00:00"], "recipe", "model.attn_implementation", "flash_attention_2 is not available"),
    ("boolean-precision", H100, None, LLAMA, _set("precision", False), [], "recipe", "precision", "write it in quotes"),
    ("secret-in-recipe", H100, None, LLAMA, _set("hf_token", "hf_abc"), [], "recipe", "hf_token", "export HF_TOKEN"),
    ("lora-r-zero", H100, None, LLAMA, None, ["method.lora_r=0"], "recipe", "method.lora_r", "at least 1"),
    ("missing-model", H100, None, LLAMA, _delete("model.model_name_or_path"), [], "recipe", "model.model_name_or_path", "is required"),
    ("falcon-llama-targets", "example-a100-80g", None, "falcon-180b-lora-zero3", _set("method.lora_target_modules", ["q_proj", "v_proj"]), [], "recipe", "method.lora_target_modules", "do not exist in Falcon"),
    ("save-16bit-off", H100, None, LLAMA, None, ["deepspeed.zero3_save_16bit_model=false"], "recipe", "deepspeed.zero3_save_16bit_model", "empty adapter"),
    ("missing-local-dataset", H100, None, LLAMA, None, ["data.dataset_name=./nowhere/train.jsonl"], "recipe", "data.dataset_name", "does not exist"),
    ("slurm-profile-no-partitions", H100, _set("partitions", []), LLAMA, None, [], "profile", "partitions", "at least one partition"),
    ("gpus-without-memory", H100, _delete("node.gpu_mem_gib"), LLAMA, None, [], "profile", "node.gpu_mem_gib", "must be set"),
    ("sbatch-extra-owned", H100, _set("sbatch_extra", {"time": "10"}), LLAMA, None, [], "profile", "sbatch_extra.time", "set by hpctune; use layout.time"),
    ("account-with-space", H100, _set("account", "my account"), LLAMA, None, [], "profile", "account", "letters, digits"),
    ("bad-preemption-mode", H100, _set("preemption.mode", "resubmit"), LLAMA, None, [], "profile", "preemption.mode", "allowed: 'requeue', 'cancel', 'none'"),
    ("set-without-equals", H100, None, LLAMA, None, ["layout.nodes"], "cli", "layout.nodes", "KEY=VALUE"),
]


def test_at_least_25_cases():
    assert len(CASES) >= 25


def _materialise(tmp: Path, base: str, edit, kind: str) -> str:
    folder = resources.clusters_dir() if kind == "profile" else resources.recipes_dir()
    if edit is None:
        return base if kind == "profile" else str(folder / f"{base}.yaml")
    out = tmp / f"broken-{kind}.yaml"
    if isinstance(edit, str):
        out.write_text(edit)
    else:
        data = yaml.safe_load((folder / f"{base}.yaml").read_text())
        edit(data)
        out.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(out)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path):
    _id, prof, prof_edit, rec, rec_edit, overrides, where, field, words = case
    cluster = _materialise(tmp_path, prof, prof_edit, "profile")
    recipe = _materialise(tmp_path, rec, rec_edit, "recipe")
    out = tmp_path / "bundle"
    args = ["render", "-c", cluster, recipe, "-o", str(out)]
    for o in overrides:
        args += ["--set", o]
    proc = hpctune(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    msg = lines[0]
    assert msg.startswith("hpctune: error: ")
    expected_file = {"profile": cluster if cluster.endswith(".yaml") else f"{cluster}.yaml",
                     "recipe": Path(recipe).name, "cli": "--set"}[where]
    assert expected_file in msg, msg
    if field:
        assert f": {field}:" in msg, msg
    assert words in msg, msg
    assert not out.exists(), "nothing may be written on bad input"


def test_unknown_cluster_lists_known_names(tmp_path):
    proc = hpctune("render", "-c", "exmple-h100", "llama2-70b-lora-zero3", "-o", str(tmp_path / "b"))
    assert proc.returncode == 2
    assert "unknown cluster 'exmple-h100'; did you mean 'example-h100'?" in proc.stderr
    assert "local" in proc.stderr and not (tmp_path / "b").exists()


def test_missing_recipe_file(tmp_path):
    proc = hpctune("render", "-c", "local", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "b"))
    assert proc.returncode == 2 and "nope.yaml: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
