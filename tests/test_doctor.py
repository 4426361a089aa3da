"""`hpctune doctor` (#14): the verdicts on node reports (pure), and the probe job on the real
test Slurm: it passes on the 2-node test cluster, and a broken profile (a venv that does
not exist, an interface that does not exist, requeue refused) gets each failure named with
its fix. Requeue refusal is produced with SBATCH_NO_REQUEUE=1 in the doctor's environment
(sbatch then submits with --no-requeue, as a site that forbids requeueing does); the test
cluster itself allows requeue. This machine's nodes have no internet: the passing profile
says so (network.offline: true)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import yaml

from hpctune import profile as profile_mod
from hpctune.doctor import checks
from tests.clitools import hpctune
from tests.conftest import _BASE, _merge


def report(node, k, **over):
    r = {"node_index": k, "node": node, "host": "h", "token": "T", "packages": {"torch": "2.1", "hpctune": "0.2"},
         "interfaces": ["eth0", "lo"], "env": {"GLOO_SOCKET_IFNAME": "lo"},
         "head": {"ok": True, "addr": "n1", "ip": ["127.0.0.1"]}, "scratch": {"ok": None},
         "hf_cache": {"ok": True, "path": "/h"}, "internet": {"reachable": False},
         "gpus": {"slurm_visible": 0, "cuda_available": False, "devices": []},
         "gloo": {"ok": True, "busbw_gbps": 1.5, "mib": 64}, "usr2": True, "phase": "done"}
    r.update(over)
    return r


def _profile(tmp_path, **over):
    data = _merge(_merge(_BASE, {"node": {"gpus_per_node": 0}, "network": {"offline": True}}), over)
    data["name"] = "p"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    return profile_mod.load(str(tmp_path / "p.yaml"))


def _rows(prof, nodes, setup=None, **job):
    job = {"nodes": 2, "usr2_sent": True, "requeue": {"ok": True}, "folder": "/f", **job}
    return {r.check: r for r in checks.evaluate(prof, login={"packages": {"torch": "2.1", "hpctune": "0.2"}, "token": "T"},
                                                nodes=nodes, setup=setup or {}, job=job)}


def test_verdicts_all_pass(tmp_path):
    rows = _rows(_profile(tmp_path), {0: report("n1", 0), 1: report("n2", 1)})
    assert {r.status for r in rows.values()} <= {"PASS", "SKIP"}, rows
    assert "1.50 GB/s" in rows["gloo all-reduce"].detail


def test_verdicts_name_each_failure_with_its_fix(tmp_path):
    prof = _profile(tmp_path, network={"offline": False})
    nodes = {0: report("n1", 0, packages={"torch": "2.0", "hpctune": "0.2"}, env={"GLOO_SOCKET_IFNAME": "ib9"},
                       gloo={"ok": False, "error": "RuntimeError: Unable to find address for: ib9"}, usr2=False),
             1: None}
    rows = _rows(prof, nodes, setup={0: "n1: exit code 1: source /no/venv/bin/activate\n"},
                 requeue={"ok": False, "error": "Requested operation is presently disabled"})
    want = {"set-up lines": "software.setup", "shared run folder": "runs_dir", "package versions": "same versions",
            "network interface": "socket_ifname", "gloo all-reduce": "socket_ifname", "USR2 signal": "time-limit warning",
            "scontrol requeue": "preemption.mode: cancel", "internet": "network.offline: true"}
    for check, fix in want.items():
        assert rows[check].status == "FAIL", (check, rows[check])
        assert fix in rows[check].fix, (check, rows[check].fix)
    assert "torch 2.0 (login 2.1)" in rows["package versions"].detail
    assert "ib9" in rows["network interface"].detail


def test_figures_recorded_in_the_profile_keep_its_comments(tmp_path):
    from hpctune.commands.doctor import record
    path = tmp_path / "p.yaml"
    path.write_text("# my site\nname: p\nscheduler: local\n")
    rows = [checks.Row("gloo all-reduce", "PASS", "2 node(s): 1.00 GB/s")]
    for _ in range(2):  # a second run replaces the block
        record(str(path), checks.figures(rows, job_id="12", nodes=2, date="2026-12-02 07:00:00"))
    text = path.read_text()
    assert text.startswith("# my site\n") and text.count("verified:") == 1
    p = profile_mod.load(str(path))
    assert p.verified.passed and p.verified.job_id == "12" and "1.00 GB/s" in p.verified.checks["gloo all-reduce"]


def test_detect_name_must_be_the_file_name(tmp_path):
    proc = hpctune("clusters", "detect", "--name", "other", "-o", str(tmp_path / "mysite.yaml"))
    assert proc.returncode == 2 and "--name" in proc.stderr and "mysite" in proc.stderr, proc.stderr


# --- on the real test Slurm --------------------------------------------------------------

def _write(d, name, over):
    data = _merge(_BASE, over)
    data["name"] = name
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_doctor_on_the_test_cluster(slurm, tmp_path, hpctune_env):
    d = tmp_path / "clusters"
    d.mkdir()
    good = _write(d, "tcdoc", {"network": {"offline": True}})
    _write(d, "tcbroken", {"software": {"setup": ["source /nonexistent/venv/bin/activate"]},
                           "network": {"socket_ifname": "nosuch0"}})
    env = {**hpctune_env, "HPCTUNE_CLUSTERS": str(d)}
    before = hpctune("check", "-c", "tcdoc", "tiny-sft", "--json", env=env, cwd=tmp_path)
    assert "profile-verified" in {f["rule"] for f in json.loads(before.stdout)["findings"]}

    results = {}

    def run(name, extra):
        results[name] = subprocess.run([sys.executable, "-m", "hpctune", "doctor", "-c", name, "--nodes", "2", "--json"],
                                       capture_output=True, text=True, cwd=tmp_path, env={**env, **extra}, timeout=420)
    threads = [threading.Thread(target=run, args=("tcdoc", {})),
               threading.Thread(target=run, args=("tcbroken", {"SBATCH_NO_REQUEUE": "1"}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    ok = results["tcdoc"]
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads(ok.stdout)
    status = {c["check"]: c for c in data["checks"]}
    assert {c["status"] for c in data["checks"]} <= {"PASS", "SKIP", "WARN"}, data["checks"]
    for check in ("set-up lines", "shared run folder", "package versions", "head address", "gloo all-reduce",
                  "USR2 signal", "scontrol requeue", "internet", "HF cache"):
        assert status[check]["status"] == "PASS", status[check]
    assert "GB/s" in status["gloo all-reduce"]["detail"]
    assert status["GPUs"]["status"] == "WARN"  # Slurm's fake GPU devices: torch sees none, and says so
    p = profile_mod.load(str(good))
    assert p.verified and p.verified.passed and p.verified.job_id == data["job_id"] and p.verified.nodes == 2
    after = hpctune("check", "-c", "tcdoc", "tiny-sft", "--json", env=env, cwd=tmp_path)
    assert "profile-verified" not in {f["rule"] for f in json.loads(after.stdout)["findings"]}

    bad = results["tcbroken"]
    assert bad.returncode == 1, bad.stdout + bad.stderr
    rows = {c["check"]: c for c in json.loads(bad.stdout)["checks"]}
    assert rows["set-up lines"]["status"] == "FAIL" and "/nonexistent/venv/bin/activate" in rows["set-up lines"]["detail"]
    assert "software.setup" in rows["set-up lines"]["fix"]
    assert rows["network interface"]["status"] == "FAIL" and "nosuch0" in rows["network interface"]["detail"]
    assert "socket_ifname" in rows["network interface"]["fix"]
    assert rows["gloo all-reduce"]["status"] == "FAIL"
    assert rows["scontrol requeue"]["status"] == "FAIL" and "preemption.mode: cancel" in rows["scontrol requeue"]["fix"]
    human_fix = [c for c in rows.values() if c["status"] == "FAIL"]
    assert len(human_fix) >= 4
    assert os.path.exists(json.loads(bad.stdout)["folder"])
