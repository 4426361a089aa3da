"""The host side's decision after a training step (python -m hpctune.run.after_step), on a
real rendered run folder whose attempts leave the files the training and launchers write.
Slurm is not asked here (job_runs/down are given): the Slurm tests run it for real."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hpctune.prepare import prepare
from hpctune.render import write_bundle
from hpctune.run import after_step, evidence, folder


@pytest.fixture
def bundle(tmp_path, test_clusters):
    job = prepare(str(test_clusters / "tc.yaml"), "tiny-sft", ("layout.nodes=2", "layout.gpus_per_node=1")).raise_errors().job
    return write_bundle(job, tmp_path / "run")


def attempt(bundle, n, job_id, *, step=5, start=0, nodes=("n1", "n2")):
    folder.append_jsonl(bundle / folder.ATTEMPTS, {"attempt": n, "job_id": job_id, "node": nodes[0], "started": time.time() - 60})
    for rank, node in enumerate(nodes):
        folder.write_json(folder.heartbeat_path(bundle, n, rank), {
            "rank": rank, "node": node, "step": step, "start_step": start, "time": time.time(),
            "train_begin": time.time() - 50, "world_size": len(nodes), "job_id": job_id, "attempt": n})


def decide(bundle, job_id, rc, resubmissions=0, **kw):
    env = {"HPCTUNE_RESUBMISSIONS": str(resubmissions)}
    cause, action = after_step.verdict(bundle, job_id=job_id, step_rc=rc, environ=env, job_runs={}, down=[], **kw)
    evidence.record(bundle, cause, action=action.kind, exclude=list(action.exclude), by="after_step")  # as the host does
    return cause, action


def test_a_lost_node_then_a_hang_then_an_error(bundle):
    attempt(bundle, 1, "77")
    (bundle / "logs" / "slurm-77.out").write_text("srun: error: n2: task 1: Killed\nsrun: error: n1: task 0: Terminated\n")
    cause, action = decide(bundle, "77", 143)
    assert (cause.kind, cause.node) == ("node_failure", "n2")
    assert action.shell() == "resubmit --exclude=n2"

    attempt(bundle, 2, "78", nodes=("n1", "n3"))
    folder.write_json(folder.watchdog_path(bundle, 2), {"stalled_s": 40, "limit_s": 30,
                                                         "suspect": {"ranks": [0], "nodes": ["n1"], "why": "x"}})
    cause, action = decide(bundle, "78", 1, resubmissions=1)
    assert (cause.kind, cause.node) == ("hang", "n1")
    assert action.shell() == "resubmit --exclude=n2,n1"  # the excluded nodes add up

    attempt(bundle, 3, "79", nodes=("n3", "n4"))
    (bundle / "logs" / "slurm-79.out").write_text("srun: error: n4: task 1: Killed\n")
    cause, action = decide(bundle, "79", 143, resubmissions=2)
    assert (cause.kind, cause.node, action.shell()) == ("node_failure", "n4", "stop")
    assert "attempt 3 of 3" in action.reason or "2 of 2 retries" in action.reason


def test_error_is_never_retried_and_startup_signal_continues(bundle):
    attempt(bundle, 1, "90")
    folder.write_json(folder.error_path(bundle, 1, 1), {"rank": 1, "node": "n2", "time": time.time(),
                                                        "first_line": "RuntimeError: boom"})
    cause, action = decide(bundle, "90", 1)
    assert (cause.kind, cause.rank, action.shell()) == ("error", 1, "stop")
    assert "never retried" in action.reason


def test_signal_during_startup_continues(bundle):
    # site (#11): USR2 before the first step ends the attempt cleanly with a startup marker
    attempt(bundle, 1, "91", step=0)
    out = folder.read_manifest(bundle)["output_dir"]
    folder.write_json(f"{out}/{folder.INTERRUPTED}", {"global_step": 0, "phase": "startup", "checkpoint": None,
                                                      "reason": "SIGUSR2 during start-up", "time": time.time()})
    cause, action = decide(bundle, "91", 0)
    assert cause.kind in ("time_limit", "preempted") and cause.checkpointed
    assert action.shell() == "requeue"


def test_deadline_and_cli(bundle):
    attempt(bundle, 1, "92")
    proc = subprocess.run([sys.executable, "-m", "hpctune.run.after_step", str(bundle), "--job-id", "92", "--deadline"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/nonexistent", "PYTHONPATH": ":".join(sys.path)})  # no sacct: degrade
    assert proc.stdout == "requeue\n", proc.stdout + proc.stderr
    assert "time limit" in proc.stderr
    rec = folder.read_jsonl(bundle / folder.CAUSES)[-1]
    assert rec["kind"] == "time_limit" and rec["action"] == "continue" and rec["by"] == "after_step"
    ev = [e for e in folder.read_jsonl(bundle / folder.EVENTS) if e["event"] == "after_step"][-1]
    assert ev["action"] == "requeue" and json.dumps(ev)


def test_out_of_memory_advice_is_the_planners_next_layout(tmp_path):
    from hpctune.plan import job_plan
    from hpctune.run import replan
    job = prepare("example-h100", "llama2-70b-lora-zero3", ()).raise_errors().job
    run = write_bundle(job, tmp_path / "h100")
    sets, what = replan.next_layout(run)
    again = prepare("example-h100", "llama2-70b-lora-zero3", tuple(sets)).raise_errors().job
    assert job_plan.plan(again).per_gpu_peak_gib < job_plan.plan(job).per_gpu_peak_gib   # more headroom
    assert what == job_plan.describe(job_plan.plan_input(again))
