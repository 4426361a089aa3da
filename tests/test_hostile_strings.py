"""Hostile strings in every string field that reaches a rendered script must not run.

For each field, a value that would create a marker file if a shell ever evaluated it is
put into a profile or recipe. Either hpctune refuses it (exit 2, nothing written), or it
renders, and then the REAL rendered job.sbatch and launch.sh are executed with bash
(srun, sbatch, module and accelerate are recorders: see tests/fakebin.py). The marker must
never appear. The profile's `software.setup` lines are shell code by design (like a
.bashrc) and are therefore not part of this test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpctune.prepare import prepare
from hpctune import render, resources
from hpctune.errors import ConfigError
from tests import fakebin

PAYLOADS = [
    "$(touch {m})",
    "`touch {m}`",
    "x; touch {m}",
    "x\ntouch {m}",
    "x' ; touch {m}; echo '",
    'x" ; touch {m}; echo "',
    "x && touch {m} #",
    "$'\\x41'$(touch {m})",
]

# (which file, dotted field, how to set it)
PROFILE_FIELDS = [
    "name", "account", "qos", "constraint", "reservation", "network.socket_ifname",
    "network.gloo_socket_ifname", "network.ib_hca", "network.hostname_suffix",
    "network.nccl_env.NCCL_DEBUG", "software.modules[0]", "software.container.image",
    "software.container.mounts[0]", "sbatch_extra.comment", "partitions[0].name", "node.local_scratch",
    "runs_dir",
]
RECIPE_FIELDS = [
    "name", "model.model_name_or_path", "data.dataset_name", "data.dataset_text_field",
    "training.output_dir", "layout.partition", "training.hub_model_id", "method.lora_target_modules[0]",
]


def _assign(data: dict, dotted: str, value):
    parts = dotted.replace("[0]", ".[0]").split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if part == "[0]":
            continue
        want = [] if nxt == "[0]" else {}
        if not isinstance(node.get(part), type(want)):
            node[part] = want
        if nxt == "[0]":
            lst = node[part]
            if parts[i + 1] == parts[-1]:
                lst[:] = [value]
                return
            if not lst:
                lst.append({})
            node = lst[0]
        else:
            node = node[part]
    node[parts[-1]] = value


def _render(tmp: Path, field_kind: str, field: str, value: str):
    prof = yaml.safe_load((resources.clusters_dir() / "example-a100-80g.yaml").read_text())
    prof["software"]["setup"] = []
    rec = yaml.safe_load((resources.recipes_dir() / "falcon-180b-lora-zero3.yaml").read_text())
    rec["method"]["lora_target_modules"] = "all-linear"
    if field_kind == "profile":
        if field.startswith("software.container"):
            prof["software"]["container"] = {"image": "docker://x", "runtime": "apptainer", "mounts": []}
        if field == "node.local_scratch":
            rec["deepspeed"]["offload_param_device"] = "nvme"
            rec["deepspeed"]["offload_optimizer_device"] = "nvme"
        _assign(prof, field, value)
    else:
        _assign(rec, field, value)
    (tmp / "p.yaml").write_text(yaml.safe_dump(prof))
    (tmp / "r.yaml").write_text(yaml.safe_dump(rec))
    # In-process for speed (200 renders); exit codes of the CLI are covered in test_bad_input.
    os.environ["HF_TOKEN"] = "hf_SECRET_must_not_leak"
    try:
        job = prepare(str(tmp / "p.yaml"), str(tmp / "r.yaml")).raise_errors().job
        render.write_bundle(job, tmp / "bundle")
        return 0
    except ConfigError:
        return 2
    finally:
        del os.environ["HF_TOKEN"]


def _execute(bundle: Path, tmp: Path):
    log = tmp / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    env.update(fakebin.install(tmp / "bin", log, programs=("accelerate", "srun", "sbatch", "module", "apptainer", "scontrol")))
    env.update(HOME=str(tmp), SLURM_NODEID="0", SLURM_JOB_ID="99", SLURM_JOB_NODELIST="n1",
               HPCTUNE_HEAD_ADDR="127.0.0.1", HF_TOKEN="hf_SECRET_must_not_leak")
    # job.sbatch runs srun (a recorder that runs its command: bash launch.sh).
    subprocess.run(["bash", str(bundle / "job.sbatch")], env=env, cwd=tmp, capture_output=True, timeout=60)
    subprocess.run(["bash", str(bundle / "launch.sh")], env=env, cwd=tmp, capture_output=True, timeout=60)


@pytest.mark.parametrize("kind,field", [("profile", f) for f in PROFILE_FIELDS] + [("recipe", f) for f in RECIPE_FIELDS])
def test_hostile_value_never_runs(kind, field, tmp_path):
    rendered = 0
    for i, payload in enumerate(PAYLOADS):
        tmp = tmp_path / str(i)
        tmp.mkdir()
        marker = tmp / "PWNED"
        if _render(tmp, kind, field, payload.format(m=marker)) == 2:
            assert not (tmp / "bundle").exists()
        else:
            rendered += 1
            bundle = tmp / "bundle"
            for f in bundle.iterdir():
                if f.is_file():
                    assert "hf_SECRET" not in f.read_text()
            _execute(bundle, tmp)
        assert not marker.exists(), f"{kind} field {field} with {payload!r} ran a command"
    # Record (for the reader of a failure) how many payloads made it through to execution.
    print(f"{kind}.{field}: {rendered} of {len(PAYLOADS)} payloads rendered and executed safely")


def test_some_hostile_values_are_rendered_and_executed(tmp_path):
    """Guard against a vacuous pass: free-text fields DO render hostile text (quoted)."""
    marker = tmp_path / "PWNED"
    assert _render(tmp_path, "profile", "network.nccl_env.NCCL_DEBUG", f"$(touch {marker})") == 0
    launch = (tmp_path / "bundle" / "launch.sh").read_text()
    assert f"export NCCL_DEBUG='$(touch {marker})'" in launch
    _execute(tmp_path / "bundle", tmp_path)
    assert not marker.exists()
