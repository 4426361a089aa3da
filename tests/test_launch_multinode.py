"""Multi-node correctness by running the rendered launch.sh, not by reading it.

Each node of a real job runs the same launch.sh with its own Slurm variables. Here it runs
twice with the variables Slurm sets on node 0 and on node 1 of a 2-node job; the real
`scontrol` parses the node list (a minimal slurm.conf is enough for that). Only
`accelerate` is a recorder: GPUs and a second host do not exist here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from hpctune.prepare import prepare
from hpctune import render, resources
from tests import fakebin

MIN_SLURM_CONF = "ClusterName=t\nSlurmctldHost=localhost\nNodeName=gpu-[001-002] CPUs=1\nPartitionName=p Nodes=gpu-[001-002]\n"


def _run_node(bundle: Path, tmp: Path, node_id: int, extra_env: dict | None = None) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "slurm.conf"
    conf.write_text(MIN_SLURM_CONF)
    log = tmp / f"calls-{node_id}.jsonl"
    env = {
        "HOME": str(tmp), "SLURM_CONF": str(conf),
        "SLURM_NODEID": str(node_id), "SLURM_JOB_NODELIST": "gpu-[001-002]", "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": f"gpu-00{node_id + 1}",
        # the node names of this fake cluster resolve through a stand-in name service
        **fakebin.install(tmp / "bin", log, programs=("accelerate", "getent")),
        **(extra_env or {}),
    }
    import os
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}, **env}
    proc = subprocess.run(["bash", str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (call,) = [c for c in fakebin.calls(log) if c["prog"] == "accelerate"]
    argv = call["argv"]
    assert argv[0] == "launch"
    flags = {}
    i = 1
    while i < len(argv):
        if argv[i] == "--same_network":
            flags["same_network"] = True
            i += 1
        elif argv[i].startswith("--") and argv[i] != "--module":
            flags[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            flags["rest"] = argv[i:]
            break
    return flags


@pytest.fixture
def falcon_bundle(tmp_path):
    # The shipped 2-node recipe, on a copy of the 2-node profile with a head suffix (JSC style).
    prof = yaml.safe_load((resources.clusters_dir() / "example-a100-80g.yaml").read_text())
    prof["network"]["hostname_suffix"] = "i"
    prof["software"]["setup"] = []
    prof_path = tmp_path / "site.yaml"
    prof_path.write_text(yaml.safe_dump(prof))
    job = prepare(str(prof_path), str(resources.recipes_dir() / "falcon-180b-lora-zero3.yaml")).raise_errors().job
    return render.write_bundle(job, tmp_path / "bundle")


def test_two_nodes_get_ranks_0_and_1_and_one_head(falcon_bundle, tmp_path):
    node0 = _run_node(falcon_bundle, tmp_path / "n0", 0)
    node1 = _run_node(falcon_bundle, tmp_path / "n1", 1)
    assert node0["machine_rank"] == "0"
    assert node1["machine_rank"] == "1"
    assert node0["main_process_ip"] == node1["main_process_ip"] == "gpu-001i"
    assert node0["main_process_port"] == node1["main_process_port"] == str(20000 + 4242 % 10000)
    for flags in (node0, node1):
        assert flags["num_machines"] == "2" and flags["num_processes"] == "16"
        # accelerate 1.15 ignores these two in the YAML: they must arrive as flags.
        assert flags["rdzv_backend"] == "static" and flags["same_network"] is True
        assert flags["config_file"] == str(falcon_bundle / "accelerate_config.yaml")
        assert flags["rest"] == ["--module", "hpctune.train", str(falcon_bundle / "recipe.yaml")]


def test_rank_is_not_fixed_in_the_batch_script(falcon_bundle):
    """The batch script never expands the node rank (it would be 0 on every node)."""
    sbatch = (falcon_bundle / "job.sbatch").read_text()
    assert "SLURM_NODEID" not in sbatch and "machine_rank" not in sbatch
    assert "--ntasks-per-node=1" in sbatch


def test_missing_scontrol_fails_fast(falcon_bundle, tmp_path):
    """Inside a container without Slurm's binaries: a clear error, not a localhost hang."""
    import os
    bindir = tmp_path / "onlybash"
    bindir.mkdir()
    for prog in ("bash", "head", "hostname", "mkdir", "date", "dirname"):
        src = subprocess.run(["bash", "-c", f"command -v {prog}"], capture_output=True, text=True).stdout.strip()
        if src:
            os.symlink(src, bindir / prog)
    env = {"PATH": str(bindir), "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu-[001-002]", "SLURM_JOB_ID": "7"}
    proc = subprocess.run([str(bindir / "bash"), str(falcon_bundle / "launch.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "scontrol is not on PATH" in proc.stderr


def test_single_node_without_slurm_uses_localhost(tmp_path):
    job = prepare("example-a100-40g", str(resources.recipes_dir() / "llama2-70b-qlora-zero3.yaml")).raise_errors().job
    bundle = render.write_bundle(job, tmp_path / "b")
    log = tmp_path / "calls.jsonl"
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    env.update(fakebin.install(tmp_path / "bin", log, programs=("accelerate",)), HOME=str(tmp_path))
    text = (bundle / "launch.sh").read_text().replace('source "$HOME/venvs/hpctune/bin/activate"', ":")
    (bundle / "launch.sh").write_text(text)
    proc = subprocess.run(["bash", str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    argv = fakebin.calls(log)[0]["argv"]
    assert argv[argv.index("--main_process_ip") + 1] == "127.0.0.1"
    assert argv[argv.index("--machine_rank") + 1] == "0"
    assert argv[argv.index("--num_processes") + 1] == "2"
