"""Shared fixtures for tests that talk to the real single-host Slurm (bin/testcluster).

- ``slurm``: starts the test cluster (idempotent) and FAILS, never skips, when it cannot.
- ``test_clusters``: cluster profiles for it, written into a folder on ``HPCTUNE_CLUSTERS``.
- ``hpctune_env``: the environment for running ``hpctune`` (its own registry, the
  profiles above, this venv first on PATH so that jobs, which inherit the submitting
  shell's environment, find ``accelerate``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TESTCLUSTER = REPO / "bin" / "testcluster"

# The host has 2 cores shared by both test "nodes": one CPU (one OpenMP thread) per
# training process keeps two processes from oversubscribing them (4 threads on 2 cores
# made each ZeRO-3 step ~5x slower). Each node still advertises 4 CPUs to Slurm.
_BASE = {
    "description": "bin/testcluster (tests)",
    "scheduler": "slurm",
    "partitions": [{"name": "debug", "max_nodes": 2, "max_time": "30", "default": True}],
    "exclusive": False,
    "node": {"gpus_per_node": 2, "gpu_model": "none", "gpu_mem_gib": 16, "cpus_per_node": 2, "ram_gib": 10},
    "preemption": {"mode": "requeue", "max_attempts": 3, "signal_seconds": 60},
    "rendezvous": "static",
    # netns mode (the default): each node has its own address on a bridge, and launch.sh
    # picks the interface that routes to the head; loopback mode: see test_clusters.
    "network": {"nccl_env": {}},
}

PROFILES = {
    # the plain test cluster, requeue on timeout/preemption
    "tc": {},
    # USR2 55 s before the limit: with a 1-minute limit it comes 5..35 s after the start; an
    # empty folder of pre-built DeepSpeed ops (set in test_clusters) makes every attempt build
    # its op just in time first, so the warning comes during start-up, as on a fresh site
    "tc-timeout": {"preemption": {"mode": "requeue", "max_attempts": 3, "signal_seconds": 55}},
    # a hang watchdog of 15 s (#14's fault-hook tests)
    "tc-watch": {"watchdog": {"minutes": 0.25}},
    # the 3-node partition debug3 (n3 only there), with that watchdog: #14's retries that go
    # on without a failed node
    "tc3": {"partitions": [{"name": "debug3", "max_nodes": 3, "max_time": "30", "default": True}],
            "watchdog": {"minutes": 0.25}},
    # a site whose preemption cancels: hpctune submits again
    "tc-cancel": {"preemption": {"mode": "cancel", "max_attempts": 3, "signal_seconds": 60}},
    # errors Slurm must refuse (the profile itself is valid)
    "tc-nopart": {"partitions": [{"name": "nosuch", "max_nodes": 2, "max_time": "30", "default": True}]},
    "tc-wide": {"partitions": [{"name": "debug", "max_nodes": 8, "max_time": "30", "default": True}]},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def slurm():
    """The real test cluster, started if needed. A cluster that cannot start is a failure."""
    if not TESTCLUSTER.exists():
        pytest.fail(f"{TESTCLUSTER} is missing: the Slurm tests need the project's test cluster")
    try:
        proc = subprocess.run([str(TESTCLUSTER), "start"], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("bin/testcluster start did not finish in 240 s")
    if proc.returncode != 0:
        pytest.fail(f"bin/testcluster start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer after bin/testcluster start: {ping.stdout}{ping.stderr}")
    return True


def cluster_net() -> str:
    """The test cluster's network mode: netns (each node its own namespace) or loopback."""
    proc = subprocess.run([str(TESTCLUSTER), "env"], capture_output=True, text=True, timeout=30)
    for line in proc.stdout.splitlines():
        if line.startswith("export HPCTUNE_TESTCLUSTER_NET="):
            return line.split("=", 1)[1].strip()
    return "loopback"  # a bin/testcluster without network modes: every node is this host


@pytest.fixture(scope="session")
def test_clusters(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clusters")
    loopback = cluster_net() == "loopback"
    for name, over in PROFILES.items():
        data = _merge(_BASE, over)
        if name == "tc-timeout":
            data["cache"] = {"extensions_dir": str(d / "cold-ops")}
        if loopback:
            # every test node is this host: rendezvous and gloo traffic stay on loopback
            data["network"]["socket_ifname"] = "lo"
        data["name"] = name
        (d / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return d


@pytest.fixture
def hpctune_env(tmp_path, test_clusters) -> dict:
    """Environment for `hpctune` subprocesses: own registry, test profiles, venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    env["HPCTUNE_HOME"] = str(tmp_path / "home")
    env["HPCTUNE_CLUSTERS"] = str(test_clusters)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def reference(slurm, tmp_path_factory, test_clusters):
    """The uninterrupted 2-node ZeRO-3 run (tests/test_submit_slurm.py's shape) whose steps and
    final loss the interrupted, requeued and retried runs must reproduce: `hpctune submit
    --wait` through submitit. Here, once per session, for every file that compares with it."""
    from tests.test_submit_slurm import SHAPE, TIME_LIMIT, Submission
    d = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCTUNE_", "SUBMITIT_"))}
    env.update(HPCTUNE_HOME=str(d / "home"), HPCTUNE_CLUSTERS=str(test_clusters), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    sub = Submission(env, d, "reference", ["-c", "tc", "tiny-sft", *SHAPE, *TIME_LIMIT])
    try:
        wait_until(sub.done, 300, "the reference run", interval=1)
    finally:
        sub.kill()
    print(f"reference 2-node run: {sub.wall:.1f} s")
    assert sub.proc.returncode == 0, sub.output
    return sub


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
