"""Tests of bin/testcluster against the real single-host Slurm cluster it starts.

These do not skip when Slurm is missing: a missing cluster is a failure (run
``bin/testcluster install`` first). Every job has a time limit.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
TESTCLUSTER = REPO / "bin" / "testcluster"


def _env(**overrides: str) -> dict[str, str]:
    """The environment with the default cluster shape: no TC_* knobs, no SLURM_CONF
    (plain commands must find /etc/slurm/slurm.conf)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_") and k != "SLURM_CONF"}
    env.update(overrides)
    return env


def run(*args: str, check: bool = True, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else _env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def cluster():
    run(str(TESTCLUSTER), "start", timeout=180)
    yield
    # Left running on purpose: other work uses it. `bin/testcluster stop` stops it.


def test_nodes_all_usable(cluster):
    out = run("sinfo", "-h", "-N", "-o", "%N %P %t").stdout
    parts: dict[str, set] = {}
    states = {}
    for line in out.splitlines():
        node, part, state = line.split()
        parts.setdefault(node, set()).add(part.rstrip("*"))
        states[node] = state
    expected = {
        "n1": {"debug", "debug3"}, "n2": {"debug", "debug3"}, "n3": {"debug3"},
        "h100-1": {"h100"}, "h100-2": {"h100"},
        "a100-1": {"a100"}, "a100-2": {"a100"},
        "a40g-1": {"a100-40g"}, "a40g-2": {"a100-40g"},
        "t4-1": {"t4"}, "t4-2": {"t4"},
    }
    assert parts == expected
    bad = {n: s for n, s in states.items() if s not in ("idle", "mix", "alloc", "comp")}
    assert not bad, f"nodes not usable: {bad}"


def test_status_and_env(cluster):
    status = run(str(TESTCLUSTER), "status")
    assert "accounting: up" in status.stdout
    env_out = run(str(TESTCLUSTER), "env").stdout
    m = re.search(r"^export SLURM_CONF=(\S+)$", env_out, re.M)
    assert m, env_out
    conf = Path(m.group(1))
    assert conf.read_text() == Path("/etc/slurm/slurm.conf").read_text()


def test_start_is_idempotent(cluster):
    t0 = time.monotonic()
    out = run(str(TESTCLUSTER), "start")
    assert "already up" in out.stderr
    assert time.monotonic() - t0 < 10


def test_srun_two_nodes(cluster):
    out = run(
        "srun", "-l", "-N", "2", "--ntasks-per-node=1", "-p", "debug", "-t", "1",
        "printenv", "SLURMD_NODENAME", "SLURM_NODEID",
        timeout=90,
    ).stdout
    per_task: dict[str, list[str]] = {}
    for line in out.splitlines():
        task, _, value = line.partition(": ")
        per_task.setdefault(task.strip(), []).append(value.strip())
    assert sorted(per_task) == ["0", "1"], out
    pairs = sorted(tuple(v) for v in per_task.values())
    assert pairs == [("n1", "0"), ("n2", "1")], out


def test_netns_nodes_have_their_own_host_address_and_hosts_file(cluster):
    """netns mode (the default): each node is a network namespace with its own host name,
    address and /etc/hosts; `node-hosts` rewrites one node's /etc/hosts in place."""
    from tests.conftest import cluster_net
    if cluster_net() != "netns":
        pytest.fail("the test cluster does not run in netns mode (bin/testcluster start, TC_NET=netns)")
    out = run("srun", "-l", "-N", "2", "--ntasks-per-node=1", "-p", "debug", "-t", "1", "bash", "-c",
              'echo "$(hostname) $(ip -o -4 addr show dev eth0 | awk \'{print $4}\')"', timeout=90).stdout
    seen = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert seen == {"0": "n1 10.213.0.11/24", "1": "n2 10.213.0.12/24"}, out

    def head_on_n2():
        return run("srun", "-N", "1", "-w", "n2", "-t", "1", "getent", "ahostsv4", "n1", timeout=60).stdout.split()[0]
    try:
        run(str(TESTCLUSTER), "node-hosts", "n2", "127.0.1.1 n1")
        assert head_on_n2() == "127.0.1.1"
    finally:
        run(str(TESTCLUSTER), "node-hosts", "n2")
    assert head_on_n2() == "10.213.0.11"


def test_fake_gpus(cluster):
    out = run(
        "srun", "-N", "1", "-p", "debug", "-t", "1", "--gpus-per-node=2",
        "printenv", "CUDA_VISIBLE_DEVICES",
        timeout=90,
    ).stdout
    assert out.strip() == "0,1"


def test_two_jobs_share_a_node(cluster, tmp_path):
    """Two single-task jobs of 2 CPUs each run side by side on one debug node."""
    ids = [
        run(
            "sbatch", "--parsable", "-p", "debug", "-w", "n1", "-N", "1", "-c", "2",
            "-t", "1", "-o", str(tmp_path / "%j.out"), "--wrap", "sleep 30",
        ).stdout.strip().split(";")[0]
        for _ in range(2)
    ]
    try:
        def both_running():
            out = run("squeue", "-h", "-j", ",".join(ids), "-o", "%i %T").stdout
            return out.count("RUNNING") == 2
        wait_until(both_running, 30, "both jobs RUNNING on n1")
    finally:
        run("scancel", *ids, check=False)


def test_sacct_sees_finished_job(cluster, tmp_path):
    job_id = run(
        "sbatch", "--parsable", "-p", "debug", "-t", "1", "-o", str(tmp_path / "%j.out"),
        "--wrap", "echo hello",
    ).stdout.strip().split(";")[0]

    def state():
        out = run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode",
                  check=False).stdout.strip()
        return out if out.endswith("COMPLETED|0:0") else None

    line = wait_until(state, 60, f"sacct to show job {job_id} COMPLETED")
    assert line.startswith(job_id + "|")
    assert (tmp_path / f"{job_id}.out").read_text().strip() == "hello"


H100_OK = ["-p", "h100", "-N", "2", "--ntasks-per-node=1", "--gpus-per-node=8",
           "--cpus-per-task=90", "--mem=1500G", "-t", "10:00:00"]


def _test_only(args):
    return run("sbatch", "--test-only", *args, "--wrap", "true", check=False)


def test_test_only_h100_fits(cluster):
    proc = _test_only(H100_OK)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr and "h100-[1-2]" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "change",
    [("-N", "3"), ("--gpus-per-node=8", "--gpus-per-node=9"), ("-t", "2-00:00:01")],
    ids=["3-nodes", "9-gpus", "over-time-limit"],
)
def test_test_only_h100_refuses(cluster, change):
    args = list(H100_OK)
    if change[0].startswith("--"):
        args[args.index(change[0])] = change[1]
    else:
        args[args.index(change[0]) + 1] = change[1]
    proc = _test_only(args)
    assert proc.returncode != 0, f"{args} was accepted:\n{proc.stderr}"


@pytest.mark.parametrize(
    "part,gpus,cpus,mem,limit,over",
    [
        ("a100", 8, 120, "900G", "2-00:00:00", "2-00:01:00"),
        ("a100-40g", 4, 40, "450G", "1-00:00:00", "1-00:01:00"),
        ("t4", 4, 30, "180G", "12:00:00", "12:01:00"),
    ],
)
def test_test_only_other_profiles(cluster, part, gpus, cpus, mem, limit, over):
    def args(gpus_per_node, time_limit):
        return ["-p", part, "-N", "2", "--ntasks-per-node=1",
                f"--gpus-per-node={gpus_per_node}", f"--cpus-per-task={cpus}",
                f"--mem={mem}", "-t", time_limit]

    ok = _test_only(args(gpus, limit))
    assert ok.returncode == 0, ok.stderr
    assert _test_only(args(gpus, over)).returncode != 0
    assert _test_only(args(gpus + 1, "1:00:00")).returncode != 0


def test_env_knobs_reshape_debug(cluster):
    """TC_* knobs change the debug nodes; start notices and restarts Slurm. Runs last in
    this module and puts the default shape back."""
    knobs = {"TC_GPUS_PER_NODE": "3", "TC_CPUS_PER_NODE": "6",
             "TC_MEM_MB_PER_NODE": "7001", "TC_MAX_TIME": "47"}
    try:
        run(str(TESTCLUSTER), "start", env=_env(**knobs), timeout=180)
        node = run("scontrol", "show", "node", "n2").stdout
        assert "CPUTot=6 " in node and "RealMemory=7001 " in node and "Gres=gpu:3" in node, node
        part = run("scontrol", "show", "partition", "debug").stdout
        assert "MaxTime=00:47:00" in part, part
        out = run("srun", "-N", "1", "-p", "debug", "-t", "1", "--gpus-per-node=3",
                  "printenv", "CUDA_VISIBLE_DEVICES", timeout=90).stdout
        assert out.strip() == "0,1,2"
        assert _test_only(["-p", "debug", "-N", "1", "-t", "48"]).returncode != 0
    finally:
        run(str(TESTCLUSTER), "start", timeout=180)
    node = run("scontrol", "show", "node", "n2").stdout
    assert "CPUTot=4 " in node and "Gres=gpu:2" in node, node
