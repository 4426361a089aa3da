"""The login side of `hpctune doctor`: write the probe job, run it, collect the reports.

Sequence (a few minutes at most): render doctor.sbatch + probe.sh into a folder under the
profile's runs_dir (so "shared storage" is tested where runs will go), write a token file,
``sbatch``; wait until every node's report says "ready"; ``scancel --signal=USR2`` (what the
time limit or a preemption sends); wait for the final reports; ``scontrol requeue`` the
still-running job (the batch shell waits for it) and cancel it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

from hpctune import __version__
from hpctune.errors import RunError

LINGER_S = 90


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]}: no answer in {timeout:.0f} s")


def login_packages() -> dict[str, str | None]:
    """The login node's versions, from package metadata (torch is not imported here)."""
    from importlib import metadata

    from hpctune.doctor.probe import PACKAGES
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def render(profile, folder: Path, *, nodes: int, partition: str | None, minutes: int = 5) -> dict[str, str]:
    from hpctune.render import environment

    class _Job:  # what node_environment reads
        pass
    job = _Job()
    job.profile = profile
    job.cpus_per_task = 1
    job.procs_per_node = 1
    from hpctune.render import node_environment
    ctx = dict(version=__version__, profile=profile, software=profile.software,
               container=profile.software.container, folder=str(folder), nodes=nodes, partition=partition,
               cpus=1, mem_mb=2000, gpus=profile.node.gpus_per_node, minutes=minutes, linger_s=LINGER_S,
               env=node_environment(job))
    env = environment()
    return {"doctor.sbatch": env.get_template("doctor.sbatch.j2").render(ctx),
            "probe.sh": env.get_template("probe.sh.j2").render(ctx)}


def run(profile, folder: Path, *, nodes: int, partition: str | None, timeout_s: float = 300,
        echo=print) -> dict:
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    (folder / "token").write_text(token + "\n")
    for name, text in render(profile, folder, nodes=nodes, partition=partition).items():
        (folder / name).write_text(text)
    sub = _run(["sbatch", "--parsable", str(folder / "doctor.sbatch")])
    if sub.returncode != 0:
        raise RunError(f"sbatch refused the doctor's probe job: {(sub.stderr or sub.stdout).strip().splitlines()[-1:]}")
    job_id = sub.stdout.strip().split(";")[0]
    echo(f"probe job {job_id} on {nodes} node(s); its files are in {folder}")
    result = {"job_id": job_id, "nodes": nodes, "folder": str(folder), "login": {"packages": login_packages(), "token": token},
              "usr2_sent": False, "requeue": {}}
    deadline = time.monotonic() + timeout_s
    try:
        ready = _wait(lambda: _reports_in(folder, nodes, "ready") or _gone(job_id), deadline)
        if ready and _reports_in(folder, nodes, "ready"):
            r = _run(["scancel", "--signal=USR2", job_id])
            result["usr2_sent"] = r.returncode == 0
            _wait(lambda: _reports_in(folder, nodes, "done") or _gone(job_id), min(deadline, time.monotonic() + 30))
        else:
            echo("not every node got ready in time (see the node logs in the doctor folder)")
        _wait(lambda: _state(job_id) in ("RUNNING", "") and _step_over(folder) or _gone(job_id),
              min(deadline, time.monotonic() + 90))
        if not _gone(job_id):
            r = _run(["scontrol", "requeue", job_id])
            result["requeue"] = {"ok": r.returncode == 0, "error": (r.stderr or r.stdout).strip() or None}
        else:
            result["requeue"] = {"ok": False, "error": "the probe job ended before it could be requeued"}
    finally:
        _run(["scancel", job_id])
    result["reports"] = {k: _read(folder / f"node-{k}.json") for k in range(nodes)}
    result["setup"] = {k: _text(folder / f"setup-{k}.txt") for k in range(nodes)}
    return result


def _wait(pred, deadline: float, interval: float = 1.0):
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _reports_in(folder: Path, nodes: int, phase: str) -> bool:
    order = ("ready", "done")
    for k in range(nodes):
        r = _read(folder / f"node-{k}.json")
        if r is None or order.index(r.get("phase", "ready")) < order.index(phase):
            return False
    return True


def _step_over(folder: Path) -> bool:
    return any("probes ended" in _text(p) for p in folder.glob("slurm-*.out"))


def _state(job_id: str) -> str:
    r = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    return r.stdout.strip() if r.returncode == 0 else ""


def _gone(job_id: str) -> bool:
    return _state(job_id) in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
