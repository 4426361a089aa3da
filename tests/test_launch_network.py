"""Multi-node network checks of launch.sh, run for real on this machine (issue #11 item 9).

Before anything loads, each node resolves the head node (``getent``, the real name service)
and refuses a loopback answer on a node other than the head; without a profile interface it
picks the one that routes to the head (``ip route get``) for NCCL and gloo, and says which.
Only ``accelerate`` is a recorder. The same on the real Slurm in netns mode, with the
/etc/hosts loopback mistake on one node: tests/test_submit_slurm.py.
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


def _bundle(tmp_path: Path, network: dict) -> Path:
    prof = yaml.safe_load((resources.clusters_dir() / "testcluster.yaml").read_text())
    prof["network"] = network
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(prof))
    job = prepare(str(path), "tiny-sft", ("layout.nodes=2",)).raise_errors().job
    return render.write_bundle(job, tmp_path / "bundle")


def _run(bundle: Path, tmp_path: Path, rank: int, head: str) -> tuple[subprocess.CompletedProcess, dict]:
    log = tmp_path / f"calls-{rank}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE", "NCCL", "GLOO"))}
    env.update(fakebin.install(tmp_path / "bin", log, programs=("accelerate",)), HOME=str(tmp_path),
               HPCTUNE_NODE_RANK=str(rank), HPCTUNE_HEAD_ADDR=head, HPCTUNE_MAIN_PORT="29555")
    proc = subprocess.run(["bash", str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=60)
    return proc, fakebin.environment(log)


def _global_address() -> tuple[str, str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        return parts[3].split("/")[0], parts[1]
    pytest.fail("this machine has no global IPv4 address to route to")


def test_head_resolving_to_loopback_on_another_node_fails_fast(tmp_path):
    bundle = _bundle(tmp_path, {})
    proc, env = _run(bundle, tmp_path, 1, "localhost")
    assert proc.returncode == 1 and not env, proc.stderr  # accelerate never started
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    msg = proc.stderr
    assert "the head node localhost resolves to 127.0.0.1, a loopback address, on " + host in msg, msg
    assert "Fix /etc/hosts on " + host in msg


def test_unresolvable_head_names_host_and_fix(tmp_path):
    bundle = _bundle(tmp_path, {})
    proc, _ = _run(bundle, tmp_path, 1, "no-such-head.invalid")
    assert proc.returncode == 1
    assert "the head node no-such-head.invalid does not resolve on" in proc.stderr, proc.stderr


def test_interface_that_routes_to_the_head_is_chosen_and_said(tmp_path):
    addr, iface = _global_address()
    bundle = _bundle(tmp_path, {})
    for rank in (0, 1):  # the head itself (a local route) and another node
        proc, env = _run(bundle, tmp_path, rank, addr)
        assert proc.returncode == 0, proc.stderr
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == iface
        assert f"the head node {addr} is {addr}, reached through {iface}" in proc.stderr


def test_profile_interface_wins_and_lo_declares_one_host(tmp_path):
    bundle = _bundle(tmp_path, {"socket_ifname": "lo"})  # every node is this host (test cluster, loopback mode)
    proc, env = _run(bundle, tmp_path, 1, "localhost")
    assert proc.returncode == 0, proc.stderr
    assert env["NCCL_SOCKET_IFNAME"] == "lo" and "reached through" not in proc.stderr
