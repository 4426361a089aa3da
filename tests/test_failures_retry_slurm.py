"""#14 acceptance: retries through job.sbatch on the real 3-node test Slurm (partition debug3).

ONE 2-node run (the reference's shape: ZeRO-3, 100 steps, a checkpoint every 20), submitted
as `sbatch RUN/job.sbatch`: the path whose host side asks ``python -m hpctune.run.after_step``
after srun and carries out its answer (scontrol requeue, or sbatch --exclude). submitit's
launcher does not retry failed attempts, so this is the path the retries go through.

- attempt 1, node failure: after checkpoint 20 the launcher of node index 1 (its whole process
  tree) is killed with SIGKILL, what a node that dies leaves behind (killing slurmd instead
  would only be noticed after SlurmdTimeout, a minute here). The attempt is "node failure" on
  that node and job.sbatch resubmits with --exclude of it: attempt 2 runs on the two other nodes.
- attempt 2, hang: the test-only fault hook (hpctune.train.faults; a real hang cannot be
  produced on demand) blocks rank 1 after step 42, in attempt 2 only. The watchdog (15 s,
  profile tc3) fires within its limit, every rank's stack is in the run folder, the attempt is
  "hang" on rank 1's node, and after_step answers resubmit without both failed nodes. On 3
  nodes that leaves one for a 2-node job: sbatch refuses, and job.sbatch submits again without
  the oldest exclusion (the node of the hang stays out).
- attempt 3 resumes from checkpoint 40 and completes with the reference's final loss
  (tests/conftest.py's `reference`, the uninterrupted run tests/test_submit_slurm.py checks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpctune.run import folder
from hpctune.run.backends import proctree
from tests.clitools import hpctune
from tests.conftest import wait_until
from tests.test_submit_slurm import SHAPE, STEPS, TIME_LIMIT

HANG_STEP = 42  # after checkpoint 40: attempt 3 resumes from there
FAULT = f"hang:rank=1:step={HANG_STEP}:attempt=2"


def _attempt_jobs(bundle: Path) -> dict[int, str]:
    """attempt -> its Slurm job (launch.sh of node 0 records each attempt)."""
    return {int(rec["attempt"]): str(rec["job_id"]) for rec in folder.read_jsonl(bundle / folder.ATTEMPTS)}


def _attempt_nodes(bundle: Path) -> dict[int, list[str]]:
    """attempt -> the nodes Slurm gave its job, in node-index order (sacct's node list)."""
    out = {}
    for attempt, job in _attempt_jobs(bundle).items():
        nodelist = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList", "-j", job], capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1]
        out[attempt] = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                      text=True).stdout.split()
    return out


def _queued(bundle: Path) -> list[str]:
    """The run's jobs still in Slurm's queue (job.sbatch's --chdir is the run folder)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    return [jid for jid, _, wd in (ln.partition("|") for ln in out.splitlines()) if wd == str(bundle)]


def _launcher_tree(job: str, node_id: str) -> tuple[list[int], str | None]:
    """The srun task of one node of the training step (bash launch.sh), and its host."""
    found, host = [], None
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        env = proctree.environ_of(pid)
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_NODEID") == node_id and env.get("SLURM_STEP_ID") == "0":
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            argv = cmd.rstrip(b"\0").split(b"\0")
            if os.path.basename(argv[0]) == b"bash" and argv[-1].endswith(b"/launch.sh"):   # srun gives bash's path
                found.append(pid)
                host = env.get("SLURMD_NODENAME")
    return found, host


@pytest.fixture(scope="module")
def retried(slurm, tmp_path_factory, test_clusters, reference):
    d = tmp_path_factory.mktemp("retries")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    env.update(HPCTUNE_HOME=str(d / "home"), HPCTUNE_CLUSTERS=str(test_clusters), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    bundle = d / "retry"
    r = hpctune("submit", "-c", "tc3", "tiny-sft", *SHAPE, *TIME_LIMIT, "--dry-run", "-o", str(bundle), env=env, cwd=d)
    assert r.returncode == 0, r.stderr
    # As `hpctune submit` does for the job.sbatch path: the host's python for after_step.
    # The fault reaches every attempt (sbatch exports the environment); it acts in attempt 2.
    t0 = time.monotonic()
    first = subprocess.run(["sbatch", "--parsable", str(bundle / "job.sbatch")],
                           env={**env, "HPCTUNE_PYTHON": sys.executable, "HPCTUNE_FAULT": FAULT},
                           capture_output=True, text=True, check=True).stdout.strip()
    killed: dict = {}

    def step():
        if not killed and (bundle / "output" / "checkpoint-20" / folder.COMPLETE).exists():
            pids, host = _launcher_tree(first, "1")
            if pids:
                for pid in pids:
                    proctree.signal_tree(pid, signal.SIGKILL)
                killed.update(pids=pids, node=host, after_s=round(time.monotonic() - t0, 1))
        if _queued(bundle):
            return False
        metrics = folder.read_json(bundle / "output" / folder.METRICS) or {}
        decided = [c for c in folder.read_jsonl(bundle / folder.CAUSES) if c.get("by") == "after_step"]
        return metrics.get("status") == "completed" or any(c.get("action") in ("stop", "done") for c in decided)
    try:
        wait_until(step, 420, "the run through its three attempts", interval=0.5)
    finally:
        for jid in _queued(bundle) or []:
            subprocess.run(["scancel", jid], capture_output=True)
    wall = time.monotonic() - t0
    print(f"2-node run with a node failure and a hang, three attempts: {wall:.1f} s, "
          f"launcher killed {killed.get('after_s')} s in")
    return {"bundle": bundle, "first": first, "killed": killed, "env": env, "dir": d}


def _status(retried) -> dict:
    proc = hpctune("status", str(retried["bundle"]), "--json", env=retried["env"], cwd=retried["dir"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _decisions(bundle: Path) -> dict[int, dict]:
    return {e["attempt"]: e for e in folder.read_jsonl(bundle / folder.EVENTS) if e.get("event") == "after_step"}


def test_node_failure_is_retried_without_the_node(retried):
    bundle, killed = retried["bundle"], retried["killed"]
    assert killed.get("pids") and killed.get("node"), "the launcher of node 1 was never killed"
    lost = killed["node"]
    st = _status(retried)
    first = st["causes"][0]
    assert (first["attempt"], first["kind"], first["node"]) == (1, "node_failure", lost), st["causes"]
    assert _decisions(bundle)[1]["action"] == f"resubmit --exclude={lost}"
    jobs = _attempt_jobs(bundle)
    assert jobs[1] == retried["first"] and len(set(jobs.values())) == len(jobs) == 3, jobs   # resubmissions
    nodes = _attempt_nodes(bundle)
    assert lost in nodes[1] and lost not in nodes[2] and len(nodes[2]) == 2, nodes   # went on without it


def test_hang_is_caught_retried_and_the_run_completes_like_the_reference(retried, reference):
    bundle = retried["bundle"]
    st = _status(retried)
    hang = st["causes"][1]
    jobs, nodes = _attempt_jobs(bundle), _attempt_nodes(bundle)
    # rank 1 is the training process of node index 1 (one per node), the second of the node list
    hung_node = nodes[2][1]
    assert (hang["attempt"], hang["kind"], hang["rank"], hang["node"]) == (2, "hang", 1, hung_node), st["causes"]
    wd = folder.read_json(folder.watchdog_path(bundle, 2))
    assert wd and wd["limit_s"] == 15.0 and wd["stalled_s"] <= wd["limit_s"] + 5, wd   # within its limit (+ a poll)
    stacks = folder.stacks(bundle, 2)
    assert sorted(stacks) == [0, 1], stacks                                            # every rank's stack
    assert "_hang_forever" in stacks[1].read_text()
    # both failed nodes asked for; too few left for 2 nodes: sbatch refused, the older one dropped
    lost = retried["killed"]["node"]
    assert _decisions(bundle)[2]["action"] == f"resubmit --exclude={lost},{hung_node}"
    batch_log = (bundle / "logs" / f"slurm-{jobs[2]}.out").read_text()
    assert f"trying again with --exclude={hung_node}" in batch_log, batch_log[-3000:]
    assert hung_node not in nodes[3], nodes
    # attempt 3 completed from checkpoint 40, with the uninterrupted run's result
    last = st["causes"][-1]
    assert (last["attempt"], last["kind"]) == (3, "completed"), st["causes"]
    assert st["state"] == "COMPLETED"
    node0 = (bundle / "logs" / f"node-{jobs[3]}-0.out").read_text()
    assert "resuming from checkpoint-40" in node0
    m = json.loads((bundle / "output" / folder.METRICS).read_text())
    ref = reference.metrics()
    assert m["status"] == "completed" and m["optimizer_steps"] == ref["optimizer_steps"] == STEPS
    assert m["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6, abs=1e-6)
    assert m["loss_curve"][-1] == pytest.approx(ref["loss_curve"][-1], rel=1e-5, abs=1e-5)
    gh = st["gpu_hours"]
    assert gh["lost"] > 0 and len(gh["attempts"]) == 3, gh
