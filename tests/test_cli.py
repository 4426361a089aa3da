"""The command line itself: help with examples, `python -m hpctune`, profile listing, and
that the login-node commands never import the training stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.clitools import REPO, hpctune

HEAVY = ("torch", "transformers", "peft", "trl", "deepspeed", "accelerate", "datasets", "bitsandbytes")


def test_help_lists_commands_with_examples():
    proc = hpctune("--help", check=True)
    for word in ("render", "submit", "plan", "check", "clusters", "hpctune submit -c local tiny-sft --wait"):
        assert word in proc.stdout
    render_help = hpctune("render", "--help", check=True).stdout
    assert "Examples:" in render_help and "--set" in render_help


def test_console_script_and_module_agree():
    exe = REPO / ".venv" / "bin" / "hpctune"
    script = subprocess.run([str(exe) if exe.exists() else "hpctune", "--version"], capture_output=True, text=True)
    assert script.returncode == 0 and "hpctune" in script.stdout
    assert hpctune("--version", check=True).stdout == script.stdout


@pytest.mark.parametrize("args", [
    ["--help"],
    ["render", "-c", "example-a100-80g", "falcon-180b-lora-zero3", "-o", "{tmp}/b"],
    ["clusters"],
])
def test_login_node_commands_import_nothing_heavy(args, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = ("import sys, runpy; sys.argv = ['hpctune'] + " + repr(args) + "\n"
            "try:\n    runpy.run_module('hpctune', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = [m for m in HEAVY if m in modules]
    assert not loaded, f"hpctune {' '.join(args)} imported {loaded}"


@pytest.mark.parametrize("args", [
    ["render", "-c", "example-a100-80g", "falcon-180b-lora-zero3", "-o", "{tmp}/b"],
    ["check", "-c", "example-h100", "llama2-70b-lora-zero3"],
])
def test_render_and_check_do_not_import_submitit(args, tmp_path):
    """submitit (asyncio and more under it, ~0.1 s) is for submitting; render and check only
    ask the backend how a folder is started by hand."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = ("import sys, runpy; sys.argv = ['hpctune'] + " + repr(args) + "\n"
            "try:\n    runpy.run_module('hpctune', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('submitit' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout + proc.stderr


def test_clusters_lists_shipped_profiles():
    out = hpctune("clusters", check=True).stdout
    for name in ("local", "example-h100", "example-a100-80g", "example-a100-40g", "example-t4"):
        assert name in out
    assert "INVALID" not in out


def test_clusters_show_resolves_defaults():
    out = hpctune("clusters", "show", "example-t4", check=True).stdout
    assert "gpu_model: t4" in out and "signal_seconds: 90" in out


def test_user_profiles_shadow_shipped_ones(tmp_path):
    (tmp_path / "example-t4.yaml").write_text("name: example-t4\nscheduler: local\ndescription: mine\n")
    out = hpctune("clusters", "show", "example-t4", env={"HPCTUNE_CLUSTERS": str(tmp_path)}, check=True).stdout
    assert "description: mine" in out


def test_render_prints_where_and_how(tmp_path):
    out = hpctune("render", "-c", "example-h100", "llama2-70b-lora-zero3", "-o", str(tmp_path / "b"), check=True).stdout
    assert "1 node(s) x 8 process(es), DEEPSPEED ZeRO-3" in out
    assert f"sbatch {tmp_path / 'b'}/job.sbatch" in out
