"""Multi-node correctness by running the rendered scripts, not by reading them.

job.sbatch runs on the host: it computes the head address and port once (the REAL
`scontrol show hostnames` parses the node list, from a minimal slurm.conf), then srun starts
launch.sh once per node with the variables Slurm sets there. Only `srun` (which here starts
the task of each node in turn), `accelerate` (no GPU launcher runs here) and the host's
after-step python are recorders; `getent` stands in for the fake cluster's name service.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpctune import render, resources
from hpctune.prepare import prepare
from tests import fakebin

MIN_SLURM_CONF = "ClusterName=t\nSlurmctldHost=localhost\nNodeName=gpu-[001-002] CPUs=1\nPartitionName=p Nodes=gpu-[001-002]\n"


def _flags(argv: list[str]) -> dict:
    assert argv[0] == "launch"
    flags, i = {}, 1
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


def _run_job(bundle: Path, tmp: Path, extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """job.sbatch as Slurm runs it on the first node of a 2-node job."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "slurm.conf"
    conf.write_text(MIN_SLURM_CONF)
    log = tmp / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    real_scontrol = subprocess.run(["bash", "-c", "command -v scontrol"], capture_output=True, text=True).stdout.strip()
    assert real_scontrol, "scontrol (slurm-client) is needed: it parses the node list"
    env.update(fakebin.install(tmp / "bin", log, programs=("accelerate", "getent", "srun", "hostpy", "sbatch", "scontrol")))
    env.update(HOME=str(tmp), SLURM_CONF=str(conf), FAKEBIN_REAL_SCONTROL=real_scontrol, SLURM_JOB_NODELIST="gpu-[001-002]", SLURM_JOB_ID="4242",
               SLURM_JOB_NUM_NODES="2", FAKEBIN_NODES="gpu-001 gpu-002", HPCTUNE_PYTHON=str(tmp / "bin" / "hostpy"),
               **(extra_env or {}))
    proc = subprocess.run(["bash", str(bundle / "job.sbatch")], env=env, capture_output=True, text=True, timeout=120)
    return proc, fakebin.calls(log)


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
    proc, calls = _run_job(falcon_bundle, tmp_path / "job")
    assert proc.returncode == 0, proc.stderr
    launches = [_flags(c["argv"]) for c in calls if c["prog"] == "accelerate"]
    assert [f["machine_rank"] for f in launches] == ["0", "1"]
    assert {f["main_process_ip"] for f in launches} == {"gpu-001i"}  # computed once, on the host
    assert {f["main_process_port"] for f in launches} == {str(20000 + 4242 % 10000)}
    for flags in launches:
        assert flags["num_machines"] == "2" and flags["num_processes"] == "16"
        # accelerate 1.15 ignores these two in the YAML: they must arrive as flags.
        assert flags["rdzv_backend"] == "static" and flags["same_network"] is True
        assert flags["config_file"] == str(falcon_bundle / "accelerate_config.yaml")
        assert flags["rest"] == ["--module", "hpctune.train", str(falcon_bundle / "recipe.yaml")]
    # the host asked what next after the step, and did it (done: nothing)
    (ask,) = [c["argv"] for c in calls if c["prog"] == "hostpy"]
    assert ask == ["-m", "hpctune.run.after_step", str(falcon_bundle), "--job-id", "4242", "--step-rc", "0"]


def test_values_from_the_submitting_shell_never_override_the_jobs(falcon_bundle, tmp_path):
    """sbatch exports the submitting shell's environment (D17): a stray HPCTUNE_NODE_RANK
    gave every node rank 0; a stray head address or port sent the nodes elsewhere."""
    proc, calls = _run_job(falcon_bundle, tmp_path / "job", {"HPCTUNE_NODE_RANK": "0", "HPCTUNE_HEAD_ADDR": "elsewhere",
                                                              "HPCTUNE_MAIN_PORT": "1234"})
    assert proc.returncode == 0, proc.stderr
    launches = [_flags(c["argv"]) for c in calls if c["prog"] == "accelerate"]
    assert [f["machine_rank"] for f in launches] == ["0", "1"]
    assert {(f["main_process_ip"], f["main_process_port"]) for f in launches} == {("gpu-001i", str(20000 + 4242 % 10000))}


@pytest.mark.parametrize("action,expect", [
    ("requeue", None), ("resubmit --exclude=gpu-002", None), ("stop", None),
])
def test_host_side_decision_after_the_step(falcon_bundle, tmp_path, action, expect):
    """The after-step answer is carried out by job.sbatch, on the host: scontrol requeue, or a
    new job after this one (afterany) from an environment without this job's SLURM_*/SRUN_*
    (they would pass on to the new job and srun there would obey them, D8)."""
    proc, calls = _run_job(falcon_bundle, tmp_path / "job", {
        "FAKEBIN_AFTER_STEP": action, "SLURM_DISTRIBUTION": "cyclic", "SLURM_STEP_ID": "0", "SRUN_DEBUG": "3",
        "SLURM_CPU_BIND": "quiet,mask_cpu:0x1", "PATH_EXTRA": "x"})
    assert proc.returncode == 0, proc.stderr
    requeues = [c["argv"][1:] for c in calls if c["prog"] == "scontrol" and c["argv"][:1] == ["requeue"]]
    sbatches = [c for c in calls if c["prog"] == "sbatch"]
    if action == "requeue":
        assert requeues == [["4242"]] and not sbatches
    elif action == "stop":
        assert not requeues and not sbatches
    else:
        (sb,) = sbatches
        assert sb["argv"] == ["--parsable", "--dependency=afterany:4242", "--exclude=gpu-002",
                              "--export=ALL,HPCTUNE_RESUBMISSIONS=1", str(falcon_bundle / "job.sbatch")]
        env = fakebin.environment(tmp_path / "job" / "calls", prog="sbatch")
        leaked = sorted(k for k in env if k.startswith(("SLURM_", "SRUN_")) and k != "SLURM_CONF")
        assert leaked == [], leaked


def test_resubmission_drops_the_oldest_exclusions_when_too_few_nodes_are_left(falcon_bundle, tmp_path):
    """Exclusions add up over the attempts (a node failure on gpu-001, then a hang on gpu-002):
    when sbatch refuses the list (too few nodes left for the job; the fake refuses more than
    one), job.sbatch submits again without the oldest one, the node that failed last stays out."""
    proc, calls = _run_job(falcon_bundle, tmp_path / "job", {
        "FAKEBIN_AFTER_STEP": "resubmit --exclude=gpu-001,gpu-002", "FAKEBIN_SBATCH_MAX_EXCLUDE": "1"})
    assert proc.returncode == 0, proc.stderr
    tried = [[a for a in c["argv"] if a.startswith("--exclude")] for c in calls if c["prog"] == "sbatch"]
    assert tried == [["--exclude=gpu-001,gpu-002"], ["--exclude=gpu-002"]], tried
    assert "trying again with --exclude=gpu-002\n" in proc.stderr
    assert "submitted job 99999 to continue (attempt 2, without gpu-002)" in proc.stderr
    # none at all when even one is too many
    proc, calls = _run_job(falcon_bundle, tmp_path / "job0", {
        "FAKEBIN_AFTER_STEP": "resubmit --exclude=gpu-001,gpu-002", "FAKEBIN_SBATCH_MAX_EXCLUDE": "0"})
    assert proc.returncode == 0, proc.stderr
    tried = [[a for a in c["argv"] if a.startswith("--exclude")] for c in calls if c["prog"] == "sbatch"]
    assert tried == [["--exclude=gpu-001,gpu-002"], ["--exclude=gpu-002"], []], tried
    assert "trying again without --exclude" in proc.stderr and "submitted job 99999" in proc.stderr


def test_rank_is_not_fixed_in_the_batch_script(falcon_bundle):
    """The batch script never expands the node rank (it would be 0 on every node)."""
    sbatch = (falcon_bundle / "job.sbatch").read_text()
    assert "SLURM_NODEID" not in sbatch and "machine_rank" not in sbatch
    assert "--ntasks-per-node=1" in sbatch


def _only(bindir: Path, progs) -> str:
    bindir.mkdir(exist_ok=True)
    for prog in progs:
        src = subprocess.run(["bash", "-c", f"command -v {prog}"], capture_output=True, text=True).stdout.strip()
        if src and not (bindir / prog).exists():
            os.symlink(src, bindir / prog)
    return str(bindir)


def test_launch_needs_no_slurm_command(falcon_bundle, tmp_path):
    """Inside a container without Slurm's binaries: the head and port come from the host."""
    log = tmp_path / "calls"
    fakebin.install(tmp_path / "bin", log, programs=("accelerate", "getent"))
    path = _only(tmp_path / "bin", ("bash", "head", "hostname", "mkdir", "date", "dirname", "awk", "id", "rm", "cat",
                                         "basename", "env", "printf", "sed", "tr"))
    assert not any((Path(path) / p).exists() for p in ("scontrol", "sbatch", "squeue", "srun"))
    env = {"PATH": path, "FAKEBIN_LOG": str(log), "HOME": str(tmp_path), "SLURM_NODEID": "1", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "gpu-[001-002]", "HPCTUNE_HEAD_ADDR": "gpu-001i", "HPCTUNE_MAIN_PORT": "20007"}
    proc = subprocess.run([str(Path(path) / "bash"), str(falcon_bundle / "launch.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (call,) = [c for c in fakebin.calls(log) if c["prog"] == "accelerate"]
    flags = _flags(call["argv"])
    assert (flags["machine_rank"], flags["main_process_ip"], flags["main_process_port"]) == ("1", "gpu-001i", "20007")
    # without them (started by hand, not through job.sbatch or hpctune submit): a clear error
    env.pop("HPCTUNE_HEAD_ADDR")
    proc = subprocess.run([str(Path(path) / "bash"), str(falcon_bundle / "launch.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "compute them on the host" in proc.stderr


def test_single_node_without_slurm_uses_localhost(tmp_path):
    job = prepare("example-a100-40g", str(resources.recipes_dir() / "llama2-70b-qlora-zero3.yaml")).raise_errors().job
    bundle = render.write_bundle(job, tmp_path / "b")
    log = tmp_path / "calls.jsonl"
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


def test_time_limit_with_the_step_still_running_requeues_before_the_end(falcon_bundle, tmp_path):
    """The warning came, but the checkpoint did not finish before the limit (D7): Slurm would
    kill this script with the job, so job.sbatch decides 15 s before the end while the step
    still runs: the real after_step answers requeue (attempts left; the next attempt resumes
    from the last periodic checkpoint) and job.sbatch runs scontrol requeue. Here squeue says
    the job ends in 20 s and the training (a stand-in) does not end."""
    import signal
    import sys
    import time as _time
    tmp = tmp_path / "job"
    tmp.mkdir()
    (tmp / "slurm.conf").write_text(MIN_SLURM_CONF)
    log = tmp / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE"))}
    env.update(fakebin.install(tmp / "bin", log, programs=("getent", "srun", "sbatch", "scontrol", "squeue")))
    (tmp / "bin" / "accelerate").write_text("#!/usr/bin/env bash\nexec sleep 120\n")  # a step that hangs on
    (tmp / "bin" / "accelerate").chmod(0o755)
    end = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.localtime(_time.time() + 20))
    env.update(HOME=str(tmp), SLURM_CONF=str(tmp / "slurm.conf"), SLURM_JOB_NODELIST="gpu-[001-002]", SLURM_JOB_ID="5151",
               FAKEBIN_HOSTS="gpu-001 gpu-002", FAKEBIN_NODES="gpu-001", FAKEBIN_SQUEUE=end,
               HPCTUNE_PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(sys.path))
    t0 = _time.monotonic()
    with open(tmp / "out", "w") as out:
        proc = subprocess.Popen(["bash", str(falcon_bundle / "job.sbatch")], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=90)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the hanging stand-in step
    took = _time.monotonic() - t0
    text = (tmp / "out").read_text()
    assert "its save did not finish in time): deciding now" in text, text
    assert [c["argv"] for c in fakebin.calls(log) if c["prog"] == "scontrol" and c["argv"][0] == "requeue"] == [["requeue", "5151"]]
    assert 3 <= took < 30, took  # at the deadline, not when the step ended
