"""Failure causes on the real test Slurm (#14): two 2-node runs through submitit, side by side.

- hang: the test-only fault hook (hpctune.train.faults) blocks rank 1 after step 3. A real
  hang cannot be produced on demand; the hook blocks the main thread the way a stuck
  collective does (GIL released). The watchdog (profile tc-watch: 15 s) must fire within its
  limit, leave every rank's stack in the run folder, and the attempt must read "hang" with
  rank 1 on n2 as the suspect; the host-side decision then retries without n2.
- error: rank 1 raises after step 3 (rank 0 then sees gloo errors): the cause is "error in
  the training" on rank 1, node n2, with the first line; never retried.
- lost node: the whole process tree of node n2's launcher is killed with SIGKILL mid-run (what
  a node that dies, or a killed launcher, leaves behind): "node failure" on n2, and the host
  side's decision is to resubmit without n2.

Here the host side's decision is checked on the real run folders; the retries themselves
(job.sbatch carrying out after_step's answer, resubmitting with --exclude on the 3-node
partition) are tests/test_failures_retry_slurm.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpctune.run.backends import proctree
from hpctune.run import folder
from tests.clitools import hpctune
from tests.conftest import wait_until
from tests.test_submit_slurm import Submission

SHAPE = ["--set", "layout.nodes=2", "--set", "layout.gpus_per_node=1", "--set", "training.max_steps=40",
         "--set", 'layout.time="10"']


@pytest.fixture(scope="module")
def faulty(slurm, tmp_path_factory, test_clusters):
    import os
    d = tmp_path_factory.mktemp("faults")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    base.update(HPCTUNE_HOME=str(d / "home"), HPCTUNE_CLUSTERS=str(test_clusters), PYTHONUNBUFFERED="1",
                PATH=os.path.dirname(sys.executable) + os.pathsep + base.get("PATH", ""))
    hang = Submission({**base, "HPCTUNE_FAULT": "hang:rank=1:step=3"}, d, "hang", ["-c", "tc-watch", "tiny-sft", *SHAPE])
    err = Submission({**base, "HPCTUNE_FAULT": "raise:rank=1:step=3"}, d, "error", ["-c", "tc", "tiny-sft", *SHAPE])
    lost = Submission(base, d, "lost", ["-c", "tc", "tiny-sft", *SHAPE[:4], "--set", "training.max_steps=2000",
                                        "--set", 'layout.time="10"'])
    killed = None
    try:
        def progress():
            nonlocal killed
            if killed is None:
                beats = folder.heartbeats(Path(lost.run.bundle), 1)
                if len(beats) == 2 and min(b["step"] for b in beats.values()) >= 3:
                    killed = _kill_launcher(lost.run_id, node_id="1")
            return hang.done() and err.done() and lost.done()
        wait_until(progress, 400, "the three faulty runs", interval=0.5)
    finally:
        for sub in (hang, err, lost):
            sub.kill()
    print(f"hang run: {hang.wall:.1f} s; error run: {err.wall:.1f} s; lost-node run: {lost.wall:.1f} s (overlapping)")
    return {"hang": hang, "error": err, "lost": lost, "killed": killed, "env": base, "dir": d}


def _kill_launcher(run_id: str, node_id: str) -> list[int]:
    """SIGKILL the launcher task of one node and everything under it (the node is lost)."""
    import signal
    tasks = [p for p in proctree.find_by_env("HPCTUNE_RUN_ID", run_id)
             if proctree.environ_of(p).get("SLURM_NODEID") == node_id
             and b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert tasks, "no launcher task found on that node"
    for pid in tasks:
        proctree.signal_tree(pid, signal.SIGKILL)
    return tasks


def _status(sub) -> dict:
    proc = hpctune("status", sub.run_id, "--json", env=sub.env, cwd=sub.cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _after_step(sub, rc: int) -> subprocess.CompletedProcess:
    """What the host side runs after the step (as job.sbatch / the launcher will)."""
    env = {k: v for k, v in sub.env.items() if k != "HPCTUNE_FAULT"}
    return subprocess.run([sys.executable, "-m", "hpctune.run.after_step", sub.run.bundle, "--job-id", sub.job(),
                           "--step-rc", str(rc)], capture_output=True, text=True, env=env, timeout=60)


def test_hang_watchdog_fires_dumps_every_stack_and_names_the_node(faulty):
    sub = faulty["hang"]
    assert sub.proc.returncode != 0, sub.output
    bundle = Path(sub.run.bundle)
    wd = folder.read_json(folder.watchdog_path(bundle, 1))
    assert wd, "the watchdog did not fire"
    assert wd["limit_s"] == 15.0
    assert wd["stalled_s"] <= wd["limit_s"] + 5, wd           # fired within its limit (+ one poll)
    beats = folder.heartbeats(bundle, 1)
    assert max(hb["time"] for hb in beats.values()) <= wd["time"] <= max(hb["time"] for hb in beats.values()) + 15 + 10
    stacks = folder.stacks(bundle, 1)
    assert sorted(stacks) == [0, 1], stacks                   # every rank's stack
    assert "faults.py" in stacks[1].read_text() and "_hang_forever" in stacks[1].read_text()
    assert "torch/distributed" in stacks[0].read_text() or "accelerate/utils/operations" in stacks[0].read_text()
    st = _status(sub)
    cause = st["causes"][-1]
    assert (cause["kind"], cause["rank"], cause["node"]) == ("hang", 1, "n2"), cause
    assert "no rank advanced" in st["why"]
    human = hpctune("status", sub.run_id, env=sub.env, cwd=sub.cwd).stdout
    assert "why" in human and "hang on rank 1, node n2" in human
    # submitted through submitit: nothing on the host retries it; `next` gives the command
    assert "nothing retried it" in human and f"`sbatch --exclude=n2 {bundle}/job.sbatch`" in human, human
    decision = _after_step(sub, 1)
    assert decision.stdout == "resubmit --exclude=n2\n", decision.stdout + decision.stderr


def test_error_in_rank_1_is_named_and_not_retried(faulty):
    sub = faulty["error"]
    assert sub.proc.returncode != 0, sub.output
    st = _status(sub)
    cause = st["causes"][-1]
    assert (cause["kind"], cause["rank"], cause["node"]) == ("error", 1, "n2"), cause
    assert cause["first_line"] == "RuntimeError: fault injected by HPCTUNE_FAULT: an error in the training on rank 1 at step 3"
    assert cause["log"].endswith(f"node-{sub.job()}-1.out")
    errors = hpctune("logs", sub.run_id, "--errors", env=sub.env, cwd=sub.cwd).stdout
    lines = [ln for ln in errors.splitlines() if "rank " in ln and ":" in ln.split()[0]]
    assert lines and "rank 1" in lines[0] and "n2" in lines[0] and "fault injected" in lines[0], errors
    assert any("rank 0" in ln and "gloo" in ln.lower() for ln in lines[1:]), errors   # a consequence, listed after
    decision = _after_step(sub, 1)
    assert decision.stdout == "stop\n" and "never retried" in decision.stderr, decision.stderr
    listing = hpctune("runs", env=sub.env, cwd=sub.cwd).stdout
    assert "error in the training" in listing and "hang" in listing, listing


def test_a_lost_node_is_a_node_failure_retried_without_it(faulty):
    sub = faulty["lost"]
    assert faulty["killed"], "the run ended before its launcher on n2 could be killed"
    assert sub.proc.returncode != 0, sub.output
    st = _status(sub)
    cause = st["causes"][-1]
    assert (cause["kind"], cause["node"]) == ("node_failure", "n2"), st["causes"]
    assert "srun" in cause["evidence"] and cause["log"].endswith(f"{sub.job()}_0_log.out")  # submitit's batch log
    decision = _after_step(sub, 1)
    assert decision.stdout == "resubmit --exclude=n2\n", decision.stdout + decision.stderr
    gh = st["gpu_hours"]
    assert gh["lost"] > 0 and gh["lost"] == pytest.approx(gh["allocated"] - gh["kept"], abs=3e-4)  # all but its kept steps
