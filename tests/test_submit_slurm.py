"""Real training on the real test Slurm (bin/testcluster): 2 nodes, DeepSpeed ZeRO-3, LoRA.

In the test cluster's netns mode (its default, and CI's) n1 and n2 are network namespaces
with their own addresses and host names on a bridge: the rendezvous crosses a real network.

Every run uses the same recipe (tiny-sft, 2 nodes x 1 process, ZeRO-3, 100 steps), so
the uninterrupted reference run's optimizer steps and final loss are what the requeued,
preempted, resubmitted and plain-sbatch runs must reproduce.

Two test-side nudges keep this fast, and are what an operator could do by hand:
- Slurm holds a requeued job for its credential lifetime (BeginTime, 120 s by default):
  the tests set ``StartTime=now`` on a requeued job.
- The timeout run's second attempt gets a longer limit (``TimeLimit=5``), so that it
  finishes instead of being signalled again a minute later.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from hpctune.run import folder, registry
from hpctune.run.backends import proctree
from tests.clitools import hpctune
from tests.conftest import TESTCLUSTER, cluster_net, wait_until

STEPS = 100
LOGGING_STEPS = 5  # recipes/tiny-sft.yaml
SHAPE = ["--set", "layout.nodes=2", "--set", "layout.gpus_per_node=1", "--set", "deepspeed.zero_stage=3",
         "--set", f"training.max_steps={STEPS}", "--set", "training.save_steps=20"]
TIME_LIMIT = ["--set", 'layout.time="10"']  # generous: a loaded machine starts slowly


class Submission:
    """`hpctune submit ... --wait` running in the background, its output in a file."""

    def __init__(self, env: dict, cwd: Path, name: str, args: list[str]):
        self.env, self.cwd, self.name = env, cwd, name
        self.out_path = cwd / f"{name}.out"
        self._out = open(self.out_path, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [_python(), "-m", "hpctune", "submit", *args, "--wait"], cwd=cwd, env=env,
            stdout=self._out, stderr=subprocess.STDOUT, text=True)
        self.run_id = wait_until(self._id, 60, f"{name}: the submit line")
        self.wall = None

    def _id(self):
        m = re.search(r"^Submitted run (\S+)", self.out_path.read_text(), re.M)
        if m:
            return m.group(1)
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name}: submit ended: {self.out_path.read_text()}")
        return None

    @property
    def run(self) -> registry.Run:
        return registry.load_file(Path(self.env["HPCTUNE_HOME"]) / "runs" / f"{self.run_id}.json")

    def job(self) -> str:
        return self.run.job_ids()[-1]

    def done(self) -> bool:
        if self.proc.poll() is not None and self.wall is None:
            self.wall = time.monotonic() - self.t0
            self._out.close()
        return self.proc.poll() is not None

    @property
    def output(self) -> str:
        return self.out_path.read_text()

    def metrics(self) -> dict:
        return json.loads((Path(self.run.output_dir) / "metrics.json").read_text())

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        for jid in self.run.job_ids():
            subprocess.run(["scancel", jid], capture_output=True)


def _python():
    import sys
    return sys.executable


def _squeue(job: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True).stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


_pending_since: dict[str, float] = {}


def nudge_requeued(job: str, time_limit: int | None = None) -> bool:
    """Start a requeued job now instead of after Slurm's credential delay (BeginTime).

    Not in the same second as the requeue: a job started then is killed with "Job
    credential revoked" (the revocation has a one-second resolution)."""
    state, reason = _squeue(job)
    if state == "PENDING" and reason == "BeginTime":
        first = _pending_since.setdefault(job, time.monotonic())
        if time.monotonic() - first < 3:
            return False
        extra = [f"TimeLimit={time_limit}"] if time_limit else []
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now", *extra], capture_output=True)
        _pending_since.pop(job, None)
        return True
    _pending_since.pop(job, None)
    return False


def _checkpoint_done(sub: Submission, step: int) -> bool:
    return (Path(sub.run.output_dir) / f"checkpoint-{step}" / ".hpctune-complete").exists()


def _node_log(sub: Submission, node: int) -> str:
    return "".join(p.read_text(errors="replace") for p in sub.run.node_logs(node=node))


def _assert_same_training(sub: Submission, ref: dict):
    m = sub.metrics()
    assert m["status"] == "completed", m
    assert m["optimizer_steps"] == ref["optimizer_steps"] == STEPS
    assert m["world_size"] == ref["world_size"] == 2
    assert m["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6, abs=1e-6)
    got = dict((s, loss) for s, loss in m["loss_curve"])
    want = dict((s, loss) for s, loss in ref["loss_curve"])
    assert got.keys() == want.keys()
    # A logged loss averages the steps since the last log; after a resume at step r that
    # window starts at r, so the first log after a resume between two logs differs.
    resumed = [int(r) for r in re.findall(r"resuming from checkpoint-(\d+)", _node_log(sub, 0))]
    every = LOGGING_STEPS
    compared = 0
    for step in want:
        if any(step - every < r < step for r in resumed):
            continue
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), step
        compared += 1
    assert compared >= len(want) - len(resumed)


def _status(sub: Submission) -> dict:
    proc = hpctune("status", sub.run_id, "--json", env=sub.env, cwd=sub.cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, test_clusters):
    import os
    import sys
    d = tmp_path_factory.mktemp("slurmruns")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    env.update(HPCTUNE_HOME=str(d / "home"), HPCTUNE_CLUSTERS=str(test_clusters), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    return d, env


# `reference` (the acceptance command: a 2-node ZeRO-3 run through submitit, --wait) is in
# conftest.py: one per session, tests/test_failures_retry_slurm.py compares with it too.


def test_two_node_zero3_run_through_submitit(reference):
    sub = reference
    out = sub.output
    assert "RUNNING on n[1-2]" in out, out
    assert re.search(rf"step \d+ of {STEPS}", out), out
    assert "COMPLETED" in out
    # one launcher per node, machine ranks 0 and 1, one world of 2 processes
    node0, node1 = _node_log(sub, 0), _node_log(sub, 1)
    assert "node 0 of 2 (n1)" in node0 and "node 1 of 2 (n2)" in node1
    assert "hpctune launch: node rank 0 of 2, head n1:" in node0
    assert "hpctune launch: node rank 1 of 2, head n1:" in node1
    assert "world size 2, DeepSpeed ZeRO-3" in node0
    if cluster_net() == "netns":
        # each node its own host and address: n2 reached the head across the bridge, and
        # both chose the interface that routes there (no socket_ifname in the profile)
        assert "the head node n1 is 10.213.0.11, reached through eth0" in node0, node0
        assert "the head node n1 is 10.213.0.11, reached through eth0" in node1, node1
    m = sub.metrics()
    assert m["status"] == "completed" and m["world_size"] == 2 and m["optimizer_steps"] == STEPS
    assert len(m["ranks"]) == 2
    out_dir = Path(sub.run.output_dir)
    assert (out_dir / "adapter_model.safetensors").stat().st_size > 1000
    assert m["adapter"], "the saved adapter was checked"
    st = _status(sub)
    assert st["state"] == "COMPLETED" and st["attempts"] == 1 and st["progress"]["finished"]
    listing = hpctune("runs", env=sub.env, cwd=sub.cwd).stdout
    assert re.search(rf"{sub.run_id}\s+COMPLETED\s+completed\s+tc\s+tiny-sft\s+2\s", listing), listing
    logs1 = hpctune("logs", sub.run_id, "--node", "1", env=sub.env, cwd=sub.cwd).stdout
    assert "node rank 1 of 2" in logs1


def test_same_bundle_through_plain_sbatch(reference, workdir):
    """`sbatch RUN/job.sbatch` by hand: the same launch.sh, the same training."""
    d, env = workdir
    dry = hpctune("submit", "-c", "tc", "tiny-sft", *SHAPE, *TIME_LIMIT, "--dry-run", "-o", str(d / "byhand"),
                  env=env, cwd=d)
    assert dry.returncode == 0, dry.stderr
    bundle = d / "byhand"
    t0 = time.monotonic()
    jid = subprocess.run(["sbatch", "--parsable", str(bundle / "job.sbatch")], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()

    def ended():
        state, _ = _squeue(jid)
        return state in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    try:
        wait_until(ended, 300, f"job {jid}", interval=1)
    finally:
        subprocess.run(["scancel", jid], capture_output=True)
    print(f"plain sbatch 2-node run: {time.monotonic() - t0:.1f} s")
    m = json.loads((bundle / "output" / "metrics.json").read_text())
    node0 = (bundle / "logs" / f"node-{jid}-0.out").read_text()
    node1 = (bundle / "logs" / f"node-{jid}-1.out").read_text()
    assert "node rank 0 of 2" in node0 and "node rank 1 of 2" in node1
    st = json.loads(hpctune("status", str(bundle), "--json", env=env, cwd=d).stdout)
    assert st["state"] == "COMPLETED" and st["jobs"] == [jid]  # a run folder works as RUN too
    ref = reference.metrics()
    assert m["status"] == "completed" and m["world_size"] == 2
    assert m["optimizer_steps"] == ref["optimizer_steps"]
    assert m["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6, abs=1e-6)


@pytest.fixture(scope="module")
def interrupted(reference, workdir):
    """Two runs that overlap:

    - timeout: a 1-minute limit with USR2 55 s before it (profile tc-timeout), so Slurm
      signals it 5..36 s after it starts (it checks limits about every 30 s): during its
      start-up, since the profile's empty folder of pre-built ops makes it JIT-build
      DeepSpeed's CPU communication op first (40 s or more here), as on a fresh site;
    - preempt: `scontrol requeue` (what a requeueing preemption does) after checkpoint 20.

    The preempt run is submitted once the timeout run trains: the two then share the 2
    CPU cores, which makes the timeout run's training last longer than its time limit
    while its start-up (before the training can checkpoint) stays quick.
    """
    d, env = workdir
    timeout = Submission(env, d, "timeout", ["-c", "tc-timeout", "tiny-sft", *SHAPE, "--set", 'layout.time="1"'])
    preempt = None
    requeued_at = None
    try:
        deadline = time.monotonic() + 420
        while not (timeout.done() and preempt is not None and preempt.done()):
            assert time.monotonic() < deadline, "interrupted runs did not finish in 420 s"
            nudge_requeued(timeout.job(), time_limit=5)
            if preempt is None:
                events = [e["event"] for e in timeout.run.events()]
                if "hpctune train: starting" in _node_log(timeout, 0) or "signal" in events or timeout.done():
                    preempt = Submission(env, d, "preempt", ["-c", "tc", "tiny-sft", *SHAPE, *TIME_LIMIT])
            elif requeued_at is None and _checkpoint_done(preempt, 20):
                subprocess.run(["scontrol", "requeue", preempt.job()], check=True, capture_output=True)
                requeued_at = time.monotonic()
            elif requeued_at is not None:
                nudge_requeued(preempt.job())
            time.sleep(0.5)
    finally:
        timeout.kill()
        if preempt is not None:
            preempt.kill()
    print(f"timeout run: {timeout.wall:.1f} s; preempted run: {preempt.wall:.1f} s (overlapping)")
    return {"timeout": timeout, "preempt": preempt}


def test_timeout_signal_during_startup_requeues_then_completes(interrupted, reference):
    """Issue #11 item 5: the warning came while DeepSpeed was JIT-building an op (the
    compiler, signalled with the whole step, died of it): the attempt ended cleanly, was
    requeued as attempt 2, and that one trained from the start to the reference result."""
    sub = interrupted["timeout"]
    assert sub.proc.returncode == 0, sub.output
    events = [e["event"] for e in sub.run.events()]
    assert "signal" in events and "checkpointed" in events and "requeue" in events, events
    assert "failed_during_stop" not in events
    attempts = sub.run.attempts()
    assert len(attempts) >= 2 and attempts[-1]["attempt"] >= 2, attempts
    assert len(sub.run.job_ids()) == 1  # requeued: the same Slurm job
    node0 = _node_log(sub, 0)
    assert "stopped during start-up" in node0 and "SIGUSR2" in node0, node0[-3000:]
    assert "resuming from" not in node0  # nothing had been trained: attempt 2 starts at step 0
    # the op attempt 2 had to build (attempt 1's build was killed) went to the shared folder
    # for the next job (hpctune.train.compile_cache.publish)
    assert "published built DeepSpeed ops deepspeed_shm_comm" in node0 + _node_log(sub, 1)  # the first node to finish
    assert list(Path(sub.env["HPCTUNE_CLUSTERS"], "cold-ops").glob("*/deepspeed_shm_comm/deepspeed_shm_comm.so"))
    _assert_same_training(sub, reference.metrics())
    st = _status(sub)
    assert st["state"] == "COMPLETED" and st["attempts"] >= 2
    assert "attempt 2" in sub.output  # --wait showed the second attempt
    human = hpctune("status", sub.run_id, env=sub.env, cwd=sub.cwd).stdout
    assert "requeued (attempt 2)" in human
    # #14: why attempt 1 ended (the time limit, stopped cleanly: it continued), and its GPU-hours:
    # nothing was trained in it, every kept step is attempt 2's
    first = st["causes"][0]
    assert (first["kind"], first["checkpointed"]) == ("time_limit", True), st["causes"]
    assert st["causes"][-1]["kind"] == "completed"
    gh = st["gpu_hours"]
    assert len(gh["attempts"]) == len(st["causes"]) >= 2 and gh["attempts"][0]["source"] == "sacct"
    assert 0 < gh["kept"] <= gh["allocated"] and gh["attempts"][0]["steps_kept"] == 0
    assert sum(a["steps_kept"] for a in gh["attempts"]) == STEPS    # every kept step counted once
    assert "GPU-hours" in human and "training kept" in human


def test_preemption_requeue_resumes(interrupted, reference):
    sub = interrupted["preempt"]
    assert sub.proc.returncode == 0, sub.output
    attempts = sub.run.attempts()
    assert len(attempts) >= 2, attempts
    assert re.search(r"resuming from checkpoint-\d+", _node_log(sub, 0))
    _assert_same_training(sub, reference.metrics())
    st = _status(sub)
    assert st["state"] == "COMPLETED"
    assert st["causes"][0]["kind"] == "preempted", st["causes"]   # #14: requeued early, not at the limit
    # #14: GPU-hours and the reproducibility record of a requeued run whose first attempt trained
    gh = st["gpu_hours"]
    assert 0 < gh["kept"] <= gh["allocated"] and gh["attempts"][0]["steps_kept"] > 0
    assert sum(a["steps_kept"] for a in gh["attempts"]) == STEPS    # every kept step counted once
    bundle = Path(sub.run.bundle)
    records = [folder.read_json(folder.env_record_path(bundle, a)) for a in (1, 2)]
    assert all(records), records
    assert records[0]["hosts"] == ["n1", "n2"] and records[0]["packages"].get("torch")
    assert records[0]["dataset_fingerprint"] and records[1]["dataset_fingerprint"] == records[0]["dataset_fingerprint"]
    assert records[1]["differs_from_attempt"] == 1 and records[1]["differences"] == []


def test_cancel_mode_profile_resubmits(reference, workdir):
    """A site whose preemption cancels jobs: on the signal the run is submitted again."""
    d, env = workdir
    sub = Submission(env, d, "cancelmode", ["-c", "tc-cancel", "tiny-sft", *SHAPE, *TIME_LIMIT])
    first = sub.job()
    try:
        wait_until(lambda: _checkpoint_done(sub, 20), 240, "checkpoint-20", interval=1)
        # the user signal a site sends on preemption (PreemptParameters=send_user_signal)
        subprocess.run(["scancel", "--signal=USR2", first], check=True, capture_output=True)
        wait_until(sub.done, 300, "the resubmitted run", interval=1)
    finally:
        sub.kill()
    print(f"cancel-mode run: {sub.wall:.1f} s")
    assert sub.proc.returncode == 0, sub.output
    jobs = sub.run.job_ids()
    assert len(jobs) == 2 and jobs[0] == first, jobs
    resub = [e for e in sub.run.events() if e["event"] == "resubmitted"]
    assert resub and resub[0]["job_id"] == jobs[1] and resub[0]["attempt"] == 2
    assert [a["attempt"] for a in sub.run.attempts()] == [1, 2]
    assert re.search(r"resuming from checkpoint-\d+", _node_log(sub, 0))
    _assert_same_training(sub, reference.metrics())
    st = _status(sub)
    assert st["state"] == "COMPLETED" and st["job_id"] == jobs[1]


def test_head_resolving_to_loopback_on_one_node_fails_fast(slurm, workdir):
    """Issue #11 item 9: the common /etc/hosts mistake, on n2 only ("127.0.1.1 n1"): n2 would
    connect to itself and the run died after a gloo timeout, with a traceback in one log.
    Now n2's launch.sh stops before anything loads, naming the host, the address and the fix."""
    if cluster_net() != "netns":
        pytest.fail("needs the test cluster's netns mode (the default of bin/testcluster start)")
    d, env = workdir
    subprocess.run([str(TESTCLUSTER), "node-hosts", "n2", "127.0.1.1 n1"], check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        proc = hpctune("submit", "-c", "tc", "tiny-sft", *SHAPE, *TIME_LIMIT, "--wait", env=env, cwd=d, timeout=240)
        took = time.monotonic() - t0
    finally:
        subprocess.run([str(TESTCLUSTER), "node-hosts", "n2"], check=True, capture_output=True)
    print(f"2-node run with the /etc/hosts mistake on n2: failed after {took:.1f} s")
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    rid = re.search(r"^Submitted run (\S+)", proc.stdout, re.M).group(1)
    run = registry.load_file(Path(env["HPCTUNE_HOME"]) / "runs" / f"{rid}.json")
    node1 = "".join(p.read_text(errors="replace") for p in run.node_logs(node=1))
    assert "the head node n1 resolves to 127.0.1.1, a loopback address, on n2" in node1, node1
    assert "Fix /etc/hosts on n2" in node1
    assert "hpctune train" not in node1 and "Traceback" not in node1  # stopped before python started
    assert took < 90, took  # no rendezvous timeout waited for


def test_cancel_stops_a_two_node_run_within_30s(slurm, workdir):
    d, env = workdir
    proc = hpctune("submit", "-c", "tc", "tiny-sft", *SHAPE[:6], "--set", "training.max_steps=100000",
                   *TIME_LIMIT, env=env, cwd=d)
    assert proc.returncode == 0, proc.stderr
    rid = re.search(r"^Submitted run (\S+)", proc.stdout, re.M).group(1)
    run = registry.load_file(Path(env["HPCTUNE_HOME"]) / "runs" / f"{rid}.json")
    try:
        wait_until(lambda: "hpctune train: starting" in "".join(p.read_text() for p in run.node_logs(node=0))
                   and any("node rank 1" in p.read_text() for p in run.node_logs(node=1)), 180, "training on both nodes")
        assert proctree.find_by_env("HPCTUNE_RUN_ID", rid)
        t0 = time.monotonic()
        out = hpctune("cancel", rid, env=env, cwd=d)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: not proctree.find_by_env("HPCTUNE_RUN_ID", rid), 30, "no process of the run left",
                   interval=0.2)
        took = time.monotonic() - t0
        print(f"cancel of a running 2-node job: {took:.1f} s")
        assert took < 30
        assert "CANCELLED" in out.stdout
        st = json.loads(hpctune("status", rid, "--json", env=env, cwd=d).stdout)
        assert st["state"] == "CANCELLED"
    finally:
        for jid in run.job_ids():
            subprocess.run(["scancel", jid], capture_output=True)
