"""Every shipped recipe renders on a fitting shipped profile; rendered files equal the
checked-in golden files and are accepted by their real consumers (accelerate's config
loader and DeepSpeedPlugin, bash -n, shellcheck).

Golden files live in tests/golden/<recipe>/. To regenerate on purpose, delete the folder
(or run with HPCTUNE_UPDATE_GOLDEN=1) and review the diff before committing.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpctune.prepare import prepare
from hpctune import render, resources
from tests.clitools import REPO

GOLDEN = Path(__file__).parent / "golden"
# recipe name -> the shipped profile it is meant for (every shipped recipe must be listed)
FITS = {
    "llama2-70b-lora-zero3": "example-h100",
    "llama2-70b-qlora-zero3": "example-a100-40g",
    "falcon-180b-lora-zero3": "example-a100-80g",
    "bart-large-lora-zero3-offload": "example-a100-40g",
    "tiny-sft": "local",
}
COMPARED = ("job.sbatch", "launch.sh", "accelerate_config.yaml", "recipe.yaml")


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in resources.recipes_dir().glob("*.yaml"))


def test_every_shipped_recipe_has_a_profile():
    assert set(shipped_recipes()) <= set(FITS), "add new recipes to FITS"
    for name in ("llama2-70b-lora-zero3", "llama2-70b-qlora-zero3", "falcon-180b-lora-zero3",
                 "bart-large-lora-zero3-offload"):
        assert name in shipped_recipes()


def _render(name: str, tmp_path: Path, force: bool = False) -> Path:
    job = prepare(FITS[name], str(resources.recipes_dir() / f"{name}.yaml")).raise_errors().job
    return render.write_bundle(job, tmp_path / "bundle", force=force)


def _normalise(text: str, tmp_path: Path) -> str:
    return text.replace(str(tmp_path.resolve()), "@TMP@").replace(str(REPO), "@REPO@")


@pytest.mark.parametrize("name", shipped_recipes())
def test_golden(name, tmp_path):
    bundle = _render(name, tmp_path)
    golden_dir = GOLDEN / name
    update = os.environ.get("HPCTUNE_UPDATE_GOLDEN") == "1" or not golden_dir.exists()
    if update and os.environ.get("CI"):
        pytest.fail(f"golden files for {name} are missing in CI: render them locally and commit")
    mismatches = []
    for fname in COMPARED:
        got = _normalise((bundle / fname).read_text(), tmp_path)
        if update:
            golden_dir.mkdir(parents=True, exist_ok=True)
            (golden_dir / fname).write_text(got)
            continue
        want = (golden_dir / fname).read_text()
        if got != want:
            diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                f"golden/{name}/{fname}", f"rendered/{fname}"))
            mismatches.append(diff)
    assert not mismatches, "rendered files differ from golden files:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("name", shipped_recipes())
def test_render_is_deterministic(name, tmp_path):
    a = _render(name, tmp_path / "a")
    files_a = {f: (a / f).read_bytes() for f in render.BUNDLE_FILES}
    b = _render(name, tmp_path / "a", force=True)  # same inputs, same folder (replaced): same bytes
    assert files_a == {f: (b / f).read_bytes() for f in render.BUNDLE_FILES}
    manifest = json.loads((a / "manifest.json").read_text())
    import hashlib
    for fname, digest in manifest["files"].items():
        assert hashlib.sha256((a / fname).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", shipped_recipes())
def test_accelerate_loads_rendered_config(name, tmp_path):
    """accelerate's own loader (as `accelerate launch` uses it) and DeepSpeedPlugin."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    bundle = _render(name, tmp_path)
    job = prepare(FITS[name], str(resources.recipes_dir() / f"{name}.yaml")).raise_errors().job
    cfg = load_config_from_file(str(bundle / "accelerate_config.yaml"))
    assert cfg.num_machines == job.nodes
    assert cfg.num_processes == job.nodes * job.procs_per_node
    assert str(cfg.mixed_precision) == job.recipe.precision
    assert cfg.distributed_type.value == job.distributed_type
    if job.uses_deepspeed:
        ds = dict(cfg.deepspeed_config)
        assert ds.pop("deepspeed_multinode_launcher") == "standard"
        assert ds["zero_stage"] == job.recipe.deepspeed.zero_stage
        assert ds["gradient_accumulation_steps"] == job.recipe.training.gradient_accumulation_steps
        plugin = DeepSpeedPlugin(**ds)
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == job.recipe.deepspeed.zero_stage
        assert zero["offload_param"]["device"] == job.recipe.deepspeed.offload_param_device
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == job.recipe.training.gradient_accumulation_steps


@pytest.mark.parametrize("name", shipped_recipes())
def test_scripts_pass_bash_n_and_shellcheck(name, tmp_path):
    bundle = _render(name, tmp_path)
    assert shutil.which("shellcheck"), "shellcheck must be installed (apt-get install shellcheck)"
    for script in ("job.sbatch", "launch.sh"):
        path = bundle / script
        subprocess.run(["bash", "-n", str(path)], check=True)
        proc = subprocess.run(["shellcheck", "-s", "bash", "-S", "style", str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_reference_accelerate_settings(tmp_path):
    """The four reference workloads' accelerate settings, as in PEFT's DeepSpeed guide."""
    import yaml
    want = {
        "llama2-70b-lora-zero3": dict(num_processes=8, num_machines=1, mixed_precision="bf16",
                                      ds=dict(zero_stage=3, gradient_accumulation_steps=4, offload_optimizer_device="none",
                                              offload_param_device="none", zero3_init_flag=True, zero3_save_16bit_model=True)),
        "llama2-70b-qlora-zero3": dict(num_processes=2, num_machines=1, mixed_precision="bf16",
                                       ds=dict(zero_stage=3, zero3_init_flag=True)),
        "falcon-180b-lora-zero3": dict(num_processes=16, num_machines=2, mixed_precision="bf16",
                                       ds=dict(zero_stage=3, deepspeed_multinode_launcher="standard")),
        "bart-large-lora-zero3-offload": dict(num_processes=1, num_machines=1, mixed_precision="no",
                                              ds=dict(zero_stage=3, offload_optimizer_device="cpu", offload_param_device="cpu",
                                                      gradient_accumulation_steps=1, gradient_clipping=1.0,
                                                      zero3_init_flag=True, zero3_save_16bit_model=True)),
    }
    for name, exp in want.items():
        bundle = _render(name, tmp_path / name)
        text = (bundle / "accelerate_config.yaml").read_text()
        assert "mixed_precision: \"" in text  # always quoted (a bare no is a boolean)
        cfg = yaml.safe_load(text)
        assert cfg["distributed_type"] == "DEEPSPEED"
        for key in ("num_processes", "num_machines", "mixed_precision"):
            assert cfg[key] == exp[key], (name, key)
        for key, value in exp["ds"].items():
            assert cfg["deepspeed_config"][key] == value, (name, key)
