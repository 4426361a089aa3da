"""The profile's set-up lines run as a site writes them: conda's activate reads unset variables.

conda's ``activate`` and its ``activate.d`` hooks read variables that are often unset (PS1:
conda/conda#8186; PROJ_LIB: conda/conda#9979) and abort in a ``set -u`` shell. No conda is
installed here: the stand-in below is a shell script with those very constructs, sourced by
the REAL rendered launch.sh. Only ``accelerate`` is a recorder (no GPU launcher runs here).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from hpctune import render, resources
from hpctune.prepare import prepare
from tests import fakebin

# What conda's activate does, reduced to the lines that break under `set -u`.
FAKE_ACTIVATE = r'''# stand-in for conda's bin/activate (not installed here)
if [ -n "$PS1" ]; then PS1="(env) $PS1"; fi
export CONDA_PREFIX="$HPCTUNE_TEST_ENV"
for hook in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do . "$hook"; done
'''
# an activate.d hook as GDAL/PROJ packages ship them
FAKE_HOOK = r'''if [ -n "$PROJ_LIB" ]; then export _CONDA_SET_PROJ_LIB="$PROJ_LIB"; fi
export PROJ_LIB="$CONDA_PREFIX/share/proj"
'''


def _bundle(tmp_path: Path, setup: list[str]) -> Path:
    prof = yaml.safe_load((resources.clusters_dir() / "testcluster.yaml").read_text())
    prof["software"] = {"setup": setup}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(prof))
    job = prepare(str(path), "tiny-sft").raise_errors().job
    return render.write_bundle(job, tmp_path / "bundle")


def test_setup_lines_may_read_unset_variables(tmp_path):
    env_dir = tmp_path / "env"
    (env_dir / "etc/conda/activate.d").mkdir(parents=True)
    (env_dir / "bin").mkdir()
    (env_dir / "bin/activate").write_text(FAKE_ACTIVATE)
    (env_dir / "etc/conda/activate.d/proj.sh").write_text(FAKE_HOOK)
    bundle = _bundle(tmp_path, [f'source "{env_dir}/bin/activate"', 'echo "PROJ_LIB=$PROJ_LIB" >&2'])
    text = (bundle / "launch.sh").read_text()
    assert text.index("\nset +u") < text.index(f"source \"{env_dir}") < text.index("\nset -u")

    log = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM", "HPCTUNE")) and k not in ("PS1", "PROJ_LIB")}
    env.update(fakebin.install(tmp_path / "bin", log, programs=("accelerate",)),
               HOME=str(tmp_path), HPCTUNE_TEST_ENV=str(env_dir))
    proc = subprocess.run(["bash", str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"PROJ_LIB={env_dir}/share/proj" in proc.stderr
    assert [c["argv"][0] for c in fakebin.calls(log)] == ["launch"]


def test_nounset_is_back_after_the_setup_lines(tmp_path):
    """The script's own code after the set-up block still stops on an unset variable."""
    bundle = _bundle(tmp_path, [])
    text = (bundle / "launch.sh").read_text()
    before, _, after = text.partition("\nset -u\n")
    assert "set +u" in before and after and "set +u" not in after
    proc = subprocess.run(["bash", "-n", str(bundle / "launch.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
