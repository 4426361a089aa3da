"""A regular (non-editable) install ships templates, profiles and recipes, so that
`hpctune render` works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.clitools import REPO


def test_wheel_install_renders_from_anywhere(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=300)
    assert (target / "hpctune" / "_data" / "templates" / "launch.sh.j2").is_file()
    assert (target / "hpctune" / "_data" / "clusters" / "example-h100.yaml").is_file()
    assert (target / "hpctune" / "_data" / "recipes" / "falcon-180b-lora-zero3.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "hpctune", "render", "-c", "example-a100-80g",
                           "falcon-180b-lora-zero3", "-o", str(elsewhere / "run")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run([sys.executable, "-c", "import hpctune.resources as r; print(r.templates_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert str(target) in check.stdout  # the installed copy, not the checkout
    assert (elsewhere / "run" / "job.sbatch").is_file()


def test_one_list_of_version_floors():
    """setup.cfg's [train] extra and the node preflight's gates name the same floors, so
    `pip install 'hpctune[train]'` never installs a version the compute node then refuses."""
    import configparser

    from hpctune.train import preflight

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extra = {}
    for line in cfg["options.extras_require"]["train"].split("\n"):
        if line.strip():
            name, _, version = line.strip().partition(">=")
            extra[name] = version
    gates = {pkg: want for pkg, op, want in preflight.BASE_GATES + preflight.QLORA_GATES + preflight.DEEPSPEED_GATES
             if op == ">="}
    assert extra == gates
