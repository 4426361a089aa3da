"""`hpctune sweep` against the real test Slurm (bin/testcluster).

A 2x2 grid of tiny-sft (1 node x 1 process, 5 steps) is ONE `sbatch --array` call: four
array tasks of one array job, four registered runs tagged with the sweep id, each with
its own bundle, adapter and metrics.json; `hpctune runs --sweep ID` shows them with their
grid values and losses. A grid with one combination that fails a check submits nothing,
registers nothing and leaves no folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from hpctune.run import registry
from tests.clitools import hpctune

GRID = ["--grid", "training.learning_rate=1e-4,5e-4", "--grid", "method.lora_r=4,8"]
SHAPE = ["--set", "training.max_steps=5", "--set", "training.save_steps=5", "--set", "layout.nodes=1",
         "--set", "layout.gpus_per_node=1", "--set", 'layout.time="5"']


def _registered(env) -> list[registry.Run]:
    d = Path(env["HPCTUNE_HOME"]) / "runs"
    return [registry.load_file(p) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def _sacct_array(array_id: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "--parsable2", "-o", "JobID,State", "-j", array_id],
                         capture_output=True, text=True, timeout=30).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def swept(slurm, tmp_path_factory, test_clusters):
    import os
    import sys
    d = tmp_path_factory.mktemp("sweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    env.update(HPCTUNE_HOME=str(d / "home"), HPCTUNE_CLUSTERS=str(test_clusters), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    proc = hpctune("sweep", "-c", "tc", "tiny-sft", *GRID, *SHAPE, "--max-parallel", "4", "--wait",
                   env=env, cwd=d, timeout=300)
    return d, env, proc


def test_grid_is_one_job_array_and_every_run_completes(swept):
    d, env, proc = swept
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"^Submitted sweep (\S+): 4 run\(s\) \(Slurm job array (\d+)\)", proc.stdout, re.M)
    assert m, proc.stdout
    sweep_id, array_id = m.groups()
    regs = _registered(env)
    assert len(regs) == 4 and all(r.sweep == sweep_id for r in regs)
    # one sbatch: every run is a task of the same array job, 0..3
    assert sorted(r.jobs[0] for r in regs) == [f"{array_id}_{i}" for i in range(4)]
    acct = _sacct_array(array_id)
    assert sorted(j for j, _ in acct) == [f"{array_id}_{i}" for i in range(4)], acct
    assert all(state == "COMPLETED" for _, state in acct), acct
    # the array's submission script carries --array with the parallelism
    scripts = list((Path(regs[0].bundle).parent / "logs" / "submitit").glob("*submission.sh"))
    assert scripts and "#SBATCH --array=0-3%4" in scripts[0].read_text()
    # four combinations, each a run of its own: grid values, bundle, output, adapter, metrics
    grids = {(r.grid["training.learning_rate"], r.grid["method.lora_r"]) for r in regs}
    assert grids == {("1e-4", "4"), ("1e-4", "8"), ("5e-4", "4"), ("5e-4", "8")}
    assert len({r.bundle for r in regs}) == len({r.output_dir for r in regs}) == 4
    adapters, losses = set(), set()
    for r in regs:
        recipe = (Path(r.bundle) / "recipe.yaml").read_text()
        assert f"lora_r: {r.grid['method.lora_r']}" in recipe
        out = Path(r.output_dir)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["optimizer_steps"] == 5, metrics
        adapters.add(hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest())
        losses.add(metrics["train_loss"])
        assert any(ev.get("event") == "submitted" and ev.get("sweep") == sweep_id for ev in r.events())
    assert len(adapters) == 4, "each combination trained its own adapter"
    assert len(losses) >= 2


def test_runs_sweep_lists_the_runs_with_losses(swept):
    d, env, proc = swept
    sweep_id = re.search(r"^Submitted sweep ([^\s:]+):", proc.stdout, re.M).group(1)
    listing = hpctune("runs", "--sweep", sweep_id[:-2], env=env, cwd=d, check=True).stdout
    rows = [ln for ln in listing.splitlines() if ln.startswith(sweep_id)]
    assert len(rows) == 4, listing
    head = next(ln for ln in listing.splitlines() if ln.startswith("RUN"))
    assert re.search(r"training\.learning_rate\s+method\.lora_r\s+STATE\s+TRAIN_LOSS\s+EVAL_LOSS\s+JOB", head), head
    for row in rows:
        assert re.search(r"\s(1e-4|5e-4)\s+(4|8)\s+COMPLETED\s+\d+\.\d{4}\s+(\d+\.\d{4}|-)\s+\d+_\d", row), row
    data = json.loads(hpctune("runs", "--sweep", sweep_id, "--json", env=env, cwd=d, check=True).stdout)
    assert data["sweep"] == sweep_id and len(data["runs"]) == 4
    assert all(r["state"] == "COMPLETED" and isinstance(r["train_loss"], float) for r in data["runs"])
    # `hpctune status` understands an array task's run
    st = json.loads(hpctune("status", data["runs"][0]["id"], "--json", env=env, cwd=d, check=True).stdout)
    assert st["state"] == "COMPLETED"


def test_one_bad_combination_submits_nothing(slurm, hpctune_env, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    proc = hpctune("sweep", "-c", "tc", "tiny-sft", "--grid", "deepspeed.offload_param_device=none,cpu",
                   "--grid", "training.learning_rate=1e-4,2e-4", "--set", "deepspeed.zero_stage=2", *SHAPE,
                   env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert "sweep combination 3 of 4 (deepspeed.offload_param_device=cpu, training.learning_rate=1e-4)" in err[0]
    assert "zero_stage 3" in err[0] and "Nothing was submitted" in err[0]
    assert "1 other combination(s) fail too" in err[0]
    assert not _registered(hpctune_env)
    assert not (tmp_path / "hpctune-runs").exists() or not any((tmp_path / "hpctune-runs").iterdir())
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before


def test_grid_that_changes_the_resources_is_refused(slurm, hpctune_env, tmp_path):
    proc = hpctune("sweep", "-c", "tc", "tiny-sft", "--grid", "layout.nodes=1,2", "--set", "layout.gpus_per_node=1",
                   env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--grid: layout.nodes: " in proc.stderr and "nodes 1 vs 2" in proc.stderr
    assert "one Slurm job array share one request" in proc.stderr
    assert not _registered(hpctune_env) and not (tmp_path / "hpctune-runs").exists()
