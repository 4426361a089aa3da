"""The cause classifier (hpctune.run.causes) and the retry decision (hpctune.run.retry): pure.

Log texts under tests/fixtures/causes/ are real output captured from this project's runs
(local 2-process runs with the test-only fault hook, and the test Slurm), except those
named ``published-*``: NCCL errors and Slurm states this machine cannot produce (no GPU, no
cgroup memory limit), copied in the formats torch and Slurm print them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hpctune.run import causes, evidence, retry
from hpctune.run.causes import Cause, Evidence, classify

FIX = Path(__file__).parent / "fixtures" / "causes"


def fx(name: str) -> str:
    return (FIX / name).read_text()


def hb(rank, step, node, *, start=0, t=1000.0, in_step=False, world=2):
    return {"rank": rank, "step": step, "start_step": start, "node": node, "time": t, "in_step": in_step,
            "world_size": world, "max_gap_s": 1.0}


TWO = {0: hb(0, 7, "n1"), 1: hb(1, 7, "n2")}


def test_completed_wins_over_teardown_noise():
    # a finished run's node log holds a TCPStore "connection closed" stack from the teardown
    ev = Evidence(attempt=1, slurm_state="COMPLETED", completed=True, heartbeats=TWO,
                  logs={"node-15-1.out": fx("completed-teardown-noise.out")})
    assert classify(ev).kind == "completed"


def test_running():
    assert classify(Evidence(attempt=2, running=True)).kind == "running"


@pytest.mark.parametrize("state,requested", [("CANCELLED by 0", False), ("FAILED", True)])
def test_cancelled(state, requested):
    c = classify(Evidence(attempt=1, slurm_state=state, cancel_requested=requested, heartbeats=TWO))
    assert c.kind == "cancelled" and c.label == "cancelled by the user"


def test_hang_names_the_lagging_rank_and_its_node():
    wd = {"stalled_s": 31.0, "limit_s": 30.0, "steps": {"0": 3, "1": 3},
          "suspect": {"ranks": [1], "nodes": ["n2"], "why": "rank(s) 1 on n2 after step 3, the others in step 4"}}
    c = classify(Evidence(attempt=1, slurm_state="FAILED", watchdog=wd, heartbeats=TWO))
    assert (c.kind, c.rank, c.node) == ("hang", 1, "n2")
    assert "no rank advanced for 31.0 s" in c.why() and "logs/attempt-1" in c.why()


def test_time_limit_checkpointed_vs_preempted():
    marker = {"global_step": 40, "reason": "SIGUSR2", "time": 1000 + 600 - 60}
    tl = classify(Evidence(attempt=1, started=1000, time_limit_s=600, signal_seconds=60, interrupted=marker,
                           slurm_state="REQUEUED", heartbeats=TWO))
    assert (tl.kind, tl.checkpointed) == ("time_limit", True) and tl.label == "time limit (checkpointed)"
    early = dict(marker, time=1000 + 100)
    pre = classify(Evidence(attempt=1, started=1000, time_limit_s=600, signal_seconds=60, interrupted=early,
                            slurm_state="REQUEUED", heartbeats=TWO))
    assert (pre.kind, pre.checkpointed) == ("preempted", True)
    assert classify(Evidence(attempt=1, interrupted=dict(marker, reason="SIGTERM", time=1100), started=1000,
                             time_limit_s=600)).kind == "preempted"


def test_time_limit_without_checkpoint():
    c = classify(Evidence(attempt=1, slurm_state="TIMEOUT", exit_code="0:0", heartbeats=TWO))
    assert (c.kind, c.checkpointed) == ("time_limit", False) and c.label == "time limit (no checkpoint)"


def test_node_fail_names_the_down_node():
    c = classify(Evidence(attempt=1, slurm_state="NODE_FAIL", exit_code="0:0", nodes=["n1", "n3"],
                          down_nodes=["n3"], heartbeats=TWO))
    assert (c.kind, c.node) == ("node_failure", "n3")


def test_node_fail_without_sinfo_uses_the_stalest_heartbeats():
    beats = {0: hb(0, 9, "n1", t=2000.0), 1: hb(1, 5, "n3", t=1900.0)}
    c = classify(Evidence(attempt=1, slurm_state="NODE_FAIL", heartbeats=beats))
    assert (c.kind, c.node) == ("node_failure", "n3")


def test_out_of_memory_state():
    c = classify(Evidence(attempt=1, slurm_state="OUT_OF_MEMORY", exit_code="0:125",
                          batch_log=fx("published-slurm-oom.err"), heartbeats=TWO))
    assert (c.kind, c.detail, c.node) == ("oom", "host memory", "n2")
    assert c.label == "out of memory (host memory)"


def test_error_in_one_rank_from_its_record():
    errs = {1: {"rank": 1, "node": "n2", "time": 5.0, "first_line": "RuntimeError: boom", "traceback": []},
            0: {"rank": 0, "node": "n1", "time": 6.0,
                "first_line": "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242",
                "traceback": []}}
    c = classify(Evidence(attempt=1, slurm_state="FAILED", exit_code="1:0", errors=errs, heartbeats=TWO,
                          logs={"/r/logs/node-7-0.out": "hpctune: node 0 of 2 (n1)", "/r/logs/node-7-1.out": "hpctune: node 1 of 2 (n2)"}))
    assert (c.kind, c.rank, c.node, c.first_line) == ("error", 1, "n2", "RuntimeError: boom")
    assert c.log == "/r/logs/node-7-1.out"
    assert c.why() == "error in the training on rank 1, node n2: RuntimeError: boom (see /r/logs/node-7-1.out)"


def test_error_before_the_first_step():
    errs = {0: {"rank": 0, "node": "n1", "time": 1.0, "first_line": "ConfigError: model.name_or_path: not found"}}
    c = classify(Evidence(attempt=1, slurm_state="FAILED", errors=errs))
    assert c.kind == "before_first_step" and c.first_line.startswith("ConfigError")
    resumed = {0: hb(0, 40, "n1", start=40), 1: hb(1, 40, "n2", start=40)}  # no step done in THIS attempt
    assert classify(Evidence(attempt=2, slurm_state="FAILED", errors=errs, heartbeats=resumed)).kind == "before_first_step"


def test_cuda_oom_from_a_rank():
    errs = {1: {"rank": 1, "node": "n2", "time": 1.0,
                "first_line": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"}}
    c = classify(Evidence(attempt=1, slurm_state="FAILED", errors=errs, heartbeats=TWO))
    assert (c.kind, c.detail, c.rank) == ("oom", "CUDA", 1)


@pytest.mark.parametrize("name,detail", [("published-nccl-timeout.out", "NCCL timeout"),
                                         ("published-nccl-error.out", "NCCL error"),
                                         ("published-nccl-abort.out", "NCCL timeout")])  # SIGABRT: no traceback
def test_nccl_from_logs(name, detail):
    c = classify(Evidence(attempt=1, slurm_state="FAILED", exit_code="1:0", heartbeats=TWO,
                          logs={"/r/logs/node-9-1.out": fx(name)}))
    assert (c.kind, c.detail) == ("nccl", detail), c
    assert c.rank == 1 and c.label == detail


def test_comm_errors_are_consequences_of_a_lost_launcher():
    # node n2's launcher was killed: n1's ranks see gloo errors, srun says the task was killed
    c = classify(Evidence(attempt=1, slurm_state="COMPLETED", step_states=["CANCELLED"], heartbeats=TWO,
                          errors={0: {"rank": 0, "node": "n1", "time": 1.0,
                                      "first_line": "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1"}},
                          batch_log=fx("slurm-lost-task.err"), batch_log_path="/r/logs/slurm-113.out"))
    assert (c.kind, c.node) == ("node_failure", "n2") and c.detail == "the launcher on the node was lost"


def test_log_parsers():
    tbs = causes.tracebacks("x\n[rank1]: Traceback (most recent call last):\n[rank1]:   File \"a.py\", line 1\n"
                            "[rank1]: ValueError: bad\nTraceback (most recent call last):\n  File \"b\"\n"
                            "KeyError: 'k'\n")
    assert [(t["rank"], t["first_line"]) for t in tbs] == [(1, "ValueError: bad"), (None, "KeyError: 'k'")]
    assert causes.lost_tasks(fx("slurm-lost-task.err")) == [{"node": "n2", "how": "Killed"}, {"node": "n1", "how": "Terminated"}]
    assert causes.first_launch_error("hpctune launch: error: scontrol is not on PATH\n") == "scontrol is not on PATH"


def test_split_attempts():
    text = ("hpctune: node 0 of 2 (n1) in job 5, hosts n1,n2, attempt 1\nhpctune launch: node rank 0 of 2, head n1:1, 2 processes, attempt 1\n"
            "a1\nhpctune: node 0 of 2 (n1) in job 5, hosts n1,n2, attempt 2\nhpctune launch: node rank 0 of 2, head n1:1, 2 processes, attempt 2\na2\n")
    parts = evidence.split_attempts(text)
    assert sorted(parts) == [1, 2] and "a1" in parts[1] and "a2" not in parts[1] and "a2" in parts[2]


def test_parse_sacct_runs_of_a_requeued_job():
    runs = evidence.parse_sacct(fx("sacct-requeued.txt"))
    r = runs["120"]
    assert [x.state for x in r] == ["REQUEUED", "COMPLETED"]
    assert r[0].gpus == 2 and r[0].elapsed_s == 30 and r[1].steps == ["COMPLETED"]


# --- the retry decision: every cause x attempt position x mode -------------------------------

POLICY = retry.Policy(max_retries=2, max_attempts=4, preemption_mode="requeue")


def test_decide_table():
    d = retry.decide
    assert d(Cause("completed"), attempt=1, retries_used=0, policy=POLICY).kind == "done"
    assert d(Cause("cancelled"), attempt=1, retries_used=0, policy=POLICY).kind == "stop"
    a = d(Cause("node_failure", node="n3"), attempt=1, retries_used=0, policy=POLICY)
    assert (a.kind, a.how, a.exclude, a.shell()) == ("retry", "resubmit", ("n3",), "resubmit --exclude=n3")
    a = d(Cause("hang", node="n2"), attempt=2, retries_used=1, policy=POLICY, excluded=("n3",))
    assert a.exclude == ("n3", "n2")
    a = d(Cause("nccl"), attempt=1, retries_used=0, policy=POLICY)
    assert (a.kind, a.how, a.shell()) == ("retry", "requeue", "requeue")
    a = d(Cause("preempted", node="n1", checkpointed=False), attempt=1, retries_used=0, policy=POLICY)
    assert (a.kind, a.exclude) == ("retry", ())  # preemption is not the node's fault
    a = d(Cause("time_limit", checkpointed=True), attempt=1, retries_used=2, policy=POLICY)
    assert (a.kind, a.how) == ("continue", "requeue")  # continuations are not retries
    a = d(Cause("oom", detail="CUDA"), attempt=1, retries_used=0, policy=POLICY)
    assert a.kind == "stop" and "per_device_train_batch_size" in a.advice
    a = d(Cause("oom"), attempt=1, retries_used=0, policy=retry.Policy(on_oom="replan", max_attempts=3))
    assert a.kind == "replan"
    for kind in ("error", "before_first_step", "unknown"):
        assert d(Cause(kind), attempt=1, retries_used=0, policy=POLICY).kind == "stop"
    assert "never retried" in d(Cause("error"), attempt=1, retries_used=0, policy=POLICY).reason
    with pytest.raises(ValueError):
        d(Cause("running"), attempt=1, retries_used=0, policy=POLICY)


@pytest.mark.parametrize("kind,checkpointed,mode,attempt,used",
                         list(itertools.product(causes.KINDS[1:], (False, True), ("requeue", "cancel", "none"),
                                                (1, 3, 4), (0, 2))))
def test_decide_exhaustive(kind, checkpointed, mode, attempt, used):
    """Invariants over every cause, mode, attempt position and retries used."""
    policy = retry.Policy(max_retries=2, max_attempts=4, preemption_mode=mode)
    a = retry.decide(Cause(kind, node="n2", checkpointed=checkpointed), attempt=attempt, retries_used=used, policy=policy)
    assert a.kind in ("done", "continue", "retry", "replan", "stop") and a.reason
    if a.kind in ("continue", "retry", "replan"):
        assert attempt < policy.max_attempts                      # never past max_attempts
    if a.kind == "retry":
        assert kind in retry.TRANSIENT and used < policy.max_retries
        assert a.how == "resubmit" if (a.exclude or mode != "requeue") else a.how == "requeue"
        assert ("n2" in a.exclude) == (kind != "preempted")
    if kind in ("error", "before_first_step", "cancelled", "unknown"):
        assert a.kind == "stop"                                   # never retried
    if kind == "completed":
        assert a.kind == "done"
    if a.kind == "continue":
        assert mode != "none" and (kind == "time_limit" or (checkpointed and kind == "preempted"))
        assert a.how == ("requeue" if mode == "requeue" else "resubmit")
    assert a.shell().split()[0] in ("requeue", "resubmit", "stop", "done")


def test_policy_from_manifest():
    man = {"run": {"preemption": {"mode": "cancel", "max_attempts": 5},
                   "retry": {"causes": ["hang"], "max_retries": 1, "exclude_failing_node": False, "on_oom": "replan"}}}
    p = retry.Policy.from_manifest(man)
    assert (p.causes, p.max_retries, p.exclude_failing_node, p.on_oom, p.max_attempts, p.preemption_mode) == \
        (("hang",), 1, False, "replan", 5, "cancel")


# --- real run folders: 2-process local runs with the test-only fault hook -----------------------
# (captured from `HPCTUNE_FAULT=KIND:rank=1:step=3 hpctune submit -c local... --set
# layout.gpus_per_node=2`; the CUDA OOM is the hook's torch.OutOfMemoryError: no GPU here, and
# "kill" is a SIGKILL the way the kernel's OOM killer sends it: no cgroup limit on this machine)

@pytest.mark.parametrize("name,kind,detail", [("raise", "error", ""), ("hang", "hang", ""),
                                              ("kill", "oom", "host memory"), ("oom", "oom", "CUDA")])
def test_real_local_runs(name, kind, detail):
    bundle = FIX / f"local-{name}"
    (ev,) = evidence.gather(bundle, state="FAILED", output_dir=str(bundle / "output"))
    c = classify(ev)
    assert (c.kind, c.rank, c.detail) == (kind, 1, detail), c
    assert c.node == "vm" and c.log
    if kind == "error":
        assert c.first_line.startswith("RuntimeError: fault injected")
    if kind == "hang":
        assert "rank(s) 1 on vm not in a collective" in c.first_line  # suspect from the stacks
    fails = evidence.rank_failures(bundle, 1, ev.logs, ev.batch_log)
    if kind in ("error", "oom") and detail != "host memory":
        assert fails[0]["rank"] == 1 and fails[0]["time"]            # the cause comes first in time
    assert not any("ChildFailedError" in f["line"] for f in fails)    # the launcher's summary is no failure
