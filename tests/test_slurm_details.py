"""The Slurm details of issue #11 (review-bundles.md D6-D18), one test each, on the REAL
rendered scripts. Where a test needs what Slurm does to a step's processes, it does it the
way the named Slurm plugin does (killpg for proctrack/pgid, every process for linuxproc and
cgroup) to a real launch.sh; only the launcher it starts is a stand-in (a bash "agent" that
starts one Python "worker" in a session of its own, as torchrun does), since no GPU
launcher runs here. The host-side details (D8, D12, D16, D17) are tested with job.sbatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hpctune import render, resources
from hpctune.prepare import prepare
from tests import fakebin

# A stand-in for `accelerate launch` (the torchrun agent): counts the TERMs it gets and
# starts one worker in a session of its own, which catches USR2 and TERM like the training.
AGENT = r'''#!/usr/bin/env bash
rec=$FAKE_REC
echo 0 > "$rec/agent.terms"
trap 'echo $(( $(cat "$rec/agent.terms") + 1 )) > "$rec/agent.terms"' TERM
setsid python3 - "$rec" <<'PY' &
import os, signal, sys, time
rec = sys.argv[1]
def usr2(s, f):
    with open(os.path.join(rec, "worker.usr2"), "a") as fh:
        fh.write("x")
signal.signal(signal.SIGUSR2, usr2)
signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
open(os.path.join(rec, "worker.ready"), "w").write(str(os.getpid()))
t = time.time()
while time.time() - t < 20 and not os.path.exists(os.path.join(rec, "worker.usr2")):
    time.sleep(0.05)
PY
worker=$!
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; done
'''


def _profile(tmp_path: Path, base: str = "testcluster", **edit) -> str:
    prof = yaml.safe_load((resources.clusters_dir() / f"{base}.yaml").read_text())
    for dotted, value in edit.items():
        node = prof
        *parts, last = dotted.split("__")
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(prof))
    return str(path)


def _bundle(tmp_path: Path, profile: str, recipe: str = "tiny-sft", *overrides: str) -> Path:
    job = prepare(profile, recipe, overrides).raise_errors().job
    return render.write_bundle(job, tmp_path / "bundle")


def _tree(root: int) -> list[int]:
    kids, changed = {root}, True
    while changed:
        changed = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(stat.parent.name), int(fields[1])
            if ppid in kids and pid not in kids:
                kids.add(pid)
                changed = True
    return sorted(kids)


def _start_launch(tmp_path: Path, bundle: Path, **env_extra) -> tuple[subprocess.Popen, Path]:
    rec = tmp_path / "rec"
    rec.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "accelerate").write_text(AGENT)
    (bindir / "accelerate").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    env.update(PATH=f"{bindir}:{env['PATH']}", FAKE_REC=str(rec), HOME=str(tmp_path), **env_extra)
    # its own process group, as a Slurm step's task is
    proc = subprocess.Popen(["bash", str(bundle / "launch.sh")], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (rec / "worker.ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # the worker's handlers are set before it writes worker.ready
    return proc, rec


def test_d14_usr2_reaches_the_workers_with_proctrack_pgid(tmp_path):
    """proctrack/pgid signals the step's process group only (killpg); the workers live in
    sessions of their own. launch.sh passes the warning on to them."""
    bundle = _bundle(tmp_path, _profile(tmp_path))
    proc, rec = _start_launch(tmp_path, bundle, SLURM_JOB_ID="77", SLURM_NODEID="0")
    os.killpg(proc.pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # the launcher and the agent survived the warning
    assert (rec / "worker.usr2").exists(), "the worker never got USR2"


def test_d15_term_reaches_the_agent_once(tmp_path):
    """linuxproc/cgroup: Slurm's TERM reaches every process of the step; launch.sh does not
    send the agent a second one (which made torchrun fail inside its own handler)."""
    bundle = _bundle(tmp_path, _profile(tmp_path))
    proc, rec = _start_launch(tmp_path, bundle, SLURM_JOB_ID="77", SLURM_NODEID="0")
    for pid in _tree(proc.pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=30)
    assert (rec / "agent.terms").read_text().strip() == "1"


def test_d15_without_slurm_term_is_passed_on(tmp_path):
    """Run by hand or by `hpctune submit -c local`: nothing else signals the agent."""
    bundle = _bundle(tmp_path, _profile(tmp_path))
    proc, rec = _start_launch(tmp_path, bundle)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert (rec / "agent.terms").read_text().strip() == "1"


def _accelerate_argv(tmp_path: Path, bundle: Path, rank: int) -> list[str]:
    log = tmp_path / f"calls-{rank}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    env.update(fakebin.install(tmp_path / f"bin{rank}", log, programs=("accelerate", "getent")),
               HOME=str(tmp_path), HPCTUNE_NODE_RANK=str(rank), HPCTUNE_HEAD_ADDR="gpu-001", HPCTUNE_MAIN_PORT="29555")
    proc = subprocess.run(["bash", str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (call,) = [c for c in fakebin.calls(log) if c["prog"] == "accelerate"]
    return call["argv"]


def test_d9_c10d_gets_a_join_timeout_and_node_0_hosts_the_store(tmp_path):
    prof = _profile(tmp_path, "example-a100-80g", rendezvous="c10d", network__hostname_suffix="i", software__setup=[])
    bundle = _bundle(tmp_path, prof, "falcon-180b-lora-zero3")
    for rank, host in ((0, "true"), (1, "false")):
        argv = _accelerate_argv(tmp_path, bundle, rank)
        assert argv[argv.index("--rdzv_backend") + 1] == "c10d" and "--same_network" not in argv
        assert argv[argv.index("--rdzv_conf") + 1] == f"join_timeout=1800,is_host={host}"


def test_d10_nccl_error_handling_left_to_torch_and_nccl_warns(tmp_path):
    text = (_bundle(tmp_path, "example-h100", "llama2-70b-lora-zero3") / "launch.sh").read_text()
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in text
    assert "export NCCL_DEBUG=WARN" in text
    # the profile's own value wins
    prof = _profile(tmp_path, "example-h100", network__nccl_env={"NCCL_DEBUG": "INFO"})
    job = prepare(prof, "llama2-70b-lora-zero3").job
    assert render.node_environment(job)["NCCL_DEBUG"] == "INFO"
    # CPU-only profiles run no NCCL
    assert "NCCL_DEBUG" not in render.node_environment(prepare("local", "tiny-sft").job)


@pytest.mark.parametrize("recipe,cluster", [("tiny-sft", "testcluster"), ("llama2-70b-lora-zero3", "example-h100")])
def test_d6_no_wckey_in_either_script(recipe, cluster, tmp_path):
    """--wckey is refused on sites that enforce wckeys: hpctune never sets one (D6)."""
    from hpctune.slurm_request import slurm_request
    job = prepare(cluster, recipe).job
    assert "wckey" not in slurm_request(job).options()
    assert "--wckey" not in (_bundle(tmp_path, cluster, recipe) / "job.sbatch").read_text()


def test_d16_whole_nodes_take_all_memory_partial_nodes_their_share():
    from hpctune.slurm_request import slurm_request
    whole = slurm_request(prepare("example-a100-80g", "falcon-180b-lora-zero3").job).options()
    assert whole["exclusive"] is True and whole["mem"] == 0
    # bart uses 1 GPU of 8 on an exclusive profile: its share, not a whole node booked
    part_job = prepare("example-a100-80g", "bart-large-lora-zero3-offload").job
    part = slurm_request(part_job).options()
    assert "exclusive" not in part and part["mem"] == f"{int(960 * 0.95 / 8)}G" and part["cpus-per-task"] == 16


def test_d16_both_shapes_accepted_by_sbatch(slurm, tmp_path):
    for cluster, recipe in (("example-a100-80g", "falcon-180b-lora-zero3"),
                            ("example-a100-80g", "bart-large-lora-zero3-offload")):
        bundle = _bundle(tmp_path / recipe, cluster, recipe)
        proc = subprocess.run(["sbatch", "--test-only", str(bundle / "job.sbatch")], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


def test_d12_srun_waits_for_the_other_nodes_then_ends(tmp_path):
    """One node's launcher ended (rank 0's save done) while another hangs in a collective:
    the step ends 120 s later, not at the time limit, in both scripts."""
    from hpctune.run.backends import slurm as slurm_dispatch
    job = prepare("example-a100-80g", "falcon-180b-lora-zero3").job
    bundle = _bundle(tmp_path, "example-a100-80g", "falcon-180b-lora-zero3")
    assert "  --wait=120 \\\n" in (bundle / "job.sbatch").read_text()
    sub = slurm_dispatch.submission_script(job, bundle, "RID")
    srun = next(line for line in sub.splitlines() if line.startswith("srun "))
    assert "--wait=120" in srun and "--kill-on-bad-exit=1" in srun


def test_d18_run_folder_on_a_node_local_disk_is_warned_about(tmp_path):
    """`-o /tmp/...` on a Slurm profile: the nodes do not see this machine's /tmp."""
    from tests.clitools import hpctune
    out = hpctune("render", "-c", "example-h100", "llama2-70b-lora-zero3", "-o", str(tmp_path / "b"))
    assert out.returncode == 0, out.stderr
    assert f"warning: -o/--output: {tmp_path / 'b'} is in /tmp" in out.stderr and "--chdir" in out.stderr
    shared = Path.home() / ".cache" / "hpctune-test-d18"
    try:
        out = hpctune("render", "-c", "example-h100", "llama2-70b-lora-zero3", "-o", str(shared))
        assert out.returncode == 0 and "-o/--output" not in out.stderr, out.stderr
    finally:
        import shutil
        shutil.rmtree(shared, ignore_errors=True)
    # a profile's node-local folder counts too; a profile without a scheduler is left alone
    prof = prepare("example-h100", "llama2-70b-lora-zero3").job.profile
    from hpctune.rules.site import node_local_reason
    assert node_local_reason("/local/scratch/run1", prof) and node_local_reason("/tmp/x", prof)
    assert node_local_reason(str(Path.home() / "runs"), prof) is None
