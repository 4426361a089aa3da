"""Containers (issue #11 item 2, D1, D2): pyxis/enroot and apptainer, host side vs inside.

No container runtime can be installed here: tests/container_standin.py stands in for both.
It runs the command in a mount namespace whose root holds an "image" (this machine's /usr,
/etc and Python installation) and the profile's mounts, nothing else of the host's files,
with neither Slurm's commands nor the module system inside. Through it the REAL job.sbatch
runs a REAL tiny training inside the "container" on one node:

- the head address and port come from the host, so launch.sh needs no scontrol inside;
- modules (the one that provides apptainer) load on the host before srun, set-up lines
  (the venv) inside;
- the training stops with a checkpoint (the test hook HPCTUNE_STOP_AFTER_STEPS, as if
  warned), and the requeue happens on the host, after the step: `scontrol requeue` is
  called by job.sbatch (a recorder: this is not a Slurm job), where inside there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpctune import render, resources
from hpctune.prepare import prepare
from tests import container_standin, fakebin
from tests import tiny_assets as ta

PROBE = ('{ for c in scontrol sbatch srun squeue module apptainer; do command -v "$c" && echo "FOUND $c"; done; '
         '[[ -e "$HPCTUNE_TEST_HOST_ONLY" ]] && echo "SEES $HPCTUNE_TEST_HOST_ONLY"; echo probed; } > "$BUNDLE/probe.txt"')


def _site(tmp_path: Path, runtime: str) -> tuple[Path, Path]:
    """A profile running tiny-sft in a container whose mounts hold the run folder, the venv,
    the source tree, the caches; the recipe; both checked by the rules first."""
    work = tmp_path / "work"
    (work / "hf").mkdir(parents=True)
    venv = Path(sys.prefix)
    tiny_cache = Path(os.environ.get("HPCTUNE_CACHE") or Path.home() / ".cache" / "hpctune")
    prof = yaml.safe_load((resources.clusters_dir() / "testcluster.yaml").read_text())
    prof.update(name=f"tc-{runtime}", cache={"hf_home": str(work / "hf")})
    prof["software"] = {
        "modules": ["apptainer/1.3"] if runtime == "apptainer" else [],
        "setup": [f'source "{venv}/bin/activate"', PROBE],
        "container": {"runtime": runtime,
                      "image": "docker://nvcr.io#nvidia/pytorch:24.12-py3" if runtime == "pyxis" else "/images/pt.sif",
                      "mounts": [f"{p}:{p}" for p in (work, venv, ta.REPO, tiny_cache)]},
    }
    (tmp_path / f"tc-{runtime}.yaml").write_text(yaml.safe_dump(prof))
    return tmp_path / f"tc-{runtime}.yaml", work


def _run(tmp_path: Path, runtime: str) -> tuple[Path, subprocess.CompletedProcess, list[dict]]:
    profile, work = _site(tmp_path, runtime)
    prep = prepare(str(profile), "tiny-sft", ("training.max_steps=10", "training.save_steps=5",
                                              "training.eval_strategy=no"))
    assert not [f for f in prep.findings if f.rule.startswith("container-")], prep.findings
    bundle = render.write_bundle(prep.raise_errors().job, work / "run")
    host_only = tmp_path / "host-only"
    host_only.mkdir()
    log = tmp_path / "calls"
    env = ta.env(HPCTUNE_STOP_AFTER_STEPS="5")  # stop with checkpoint-5, as on the time-limit warning
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM", "HPCTUNE_NODE", "HPCTUNE_HEAD", "HPCTUNE_MAIN"))}
    env.update(fakebin.install(host_only / "bin", log, programs=("scontrol", "sbatch")))
    env.update(container_standin.install(host_only / "bin"))
    if runtime == "apptainer":
        # apptainer comes from a module, loaded on the host: a `module` shell function that
        # puts the stand-in on PATH (only a module can find it)
        adir = host_only / "apptainer-module"
        container_standin.install(host_only / "bin", apptainer_dir=adir)
        (host_only / "bin" / "apptainer").unlink()
        env["BASH_FUNC_module%%"] = (f'() {{ printf "module %s\\n" "$*" >> "{tmp_path}/modules.log"; '
                                     f'[[ "$1 $2" == "load apptainer/1.3" ]] && export PATH="{adir}:$PATH"; }}')
    env.update(SLURM_JOB_ID="4343", SLURM_JOB_NODELIST="n1", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1",
               HPCTUNE_PYTHON=sys.executable, HPCTUNE_TEST_HOST_ONLY=str(host_only), HPCTUNE_HOME=str(tmp_path / "home"))
    proc = subprocess.run(["bash", str(bundle / "job.sbatch")], env=env, capture_output=True, text=True, timeout=600,
                          cwd=bundle)
    return bundle, proc, fakebin.calls(log)


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_container_job_trains_inside_and_requeues_on_the_host(tmp_path, runtime):
    bundle, proc, calls = _run(tmp_path, runtime)
    log = (bundle / "logs" / "node-4343-0.out") if (bundle / "logs" / "node-4343-0.out").exists() else None
    assert proc.returncode == 0, proc.stderr[-3000:]
    # inside: no Slurm command, no module system, nothing of the host but the mounts
    probe = (bundle / "probe.txt").read_text()
    assert probe.strip() == "probed", probe
    # the training ran inside and stopped with a checkpoint; the host requeued the job
    out = bundle / "output"
    assert (out / "checkpoint-5" / ".hpctune-complete").is_file() and (out / ".hpctune-interrupted").is_file()
    assert [c["argv"] for c in calls if c["prog"] == "scontrol"] == [["requeue", "4343"]], calls
    assert "requeueing job 4343" in proc.stderr
    if runtime == "pyxis":
        (srun,) = [c["argv"] for c in calls if c["prog"] == "srun"]
        assert any(a.startswith("--container-image=") for a in srun) and any(a.startswith("--container-mounts=") for a in srun)
    else:
        assert (tmp_path / "modules.log").read_text() == "module load apptainer/1.3\n"  # on the host, once
        (app,) = [c["argv"] for c in calls if c["prog"] == "apptainer"]
        assert app[:2] == ["exec", "--nv"] and app[-2:] == ["bash", str(bundle / "launch.sh")]
    del log


def test_rules_name_what_is_outside_the_mounts(tmp_path):
    profile, work = _site(tmp_path, "pyxis")
    prof = yaml.safe_load(profile.read_text())
    prof["software"]["container"]["mounts"] = prof["software"]["container"]["mounts"][:1]  # the venv not mounted
    profile.write_text(yaml.safe_dump(prof))
    (f,) = [f for f in prepare(str(profile), "tiny-sft").findings if f.rule == "container-mounts"]
    assert f.severity == "error" and f.field == "software.setup" and str(Path(sys.prefix)) in f.message
    from tests.clitools import hpctune
    out = hpctune("render", "-c", str(profile), "tiny-sft", "-o", str(tmp_path / "elsewhere"), "--set", "layout.nodes=1")
    assert out.returncode == 2 and "container-mounts" in out.stderr


def test_pyxis_profiles_are_submitted_as_job_sbatch(tmp_path):
    """hpctune submit sends the rendered job.sbatch for pyxis (submitit's batch script would
    run its Python, and so its requeue, inside the image). sbatch is a recorder here: no
    pyxis plugin exists on the test Slurm."""
    from tests.clitools import hpctune
    profile, work = _site(tmp_path, "pyxis")
    log = tmp_path / "calls"
    env = fakebin.install(tmp_path / "bin", log, programs=("sbatch",))
    env.update(HPCTUNE_HOME=str(tmp_path / "home"))
    out = hpctune("submit", "-c", str(profile), "tiny-sft", "-o", str(work / "run"), env=env)
    assert out.returncode == 0 and "Submitted run" in out.stdout and "Slurm job 99999" in out.stdout, out.stderr
    (call,) = [c["argv"] for c in fakebin.calls(log) if c["prog"] == "sbatch"]
    assert call[0] == "--parsable" and call[-1] == str(work / "run" / "job.sbatch")
    assert call[1].startswith("--export=ALL,HPCTUNE_RUN_ID=") and f",HPCTUNE_PYTHON={sys.executable}" in call[1]
    dry = hpctune("submit", "-c", str(profile), "tiny-sft", "--dry-run", "-o", str(work / "dry"), env=env)
    assert "sbatch would submit" in dry.stdout and "--container-image=" in dry.stdout, dry.stdout
