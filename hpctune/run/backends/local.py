"""``-c local``: run a bundle on this machine, no Slurm: the same ``launch.sh`` as on a node.

``start`` spawns a small supervisor, ``python -m hpctune.dispatch.local RUN_DIR RUN_ID``, in
a session of its own (it outlives ``hpctune submit``). The supervisor is a child subreaper:
it runs ``bash RUN/launch.sh`` (node rank 0, output in ``RUN/logs/node-local-0.out``), and on
SIGTERM (``hpctune cancel``) it stops the whole process tree, the training processes that
torchrun starts in sessions of their own included, then records how it ended in
``RUN/logs/local-exit.json``. ``RUN/logs/local.json`` says which host and pid run it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hpctune.dispatch import proctree

SUPERVISOR = "logs/local.json"
EXIT = "logs/local-exit.json"
NODE_LOG = "logs/node-local-0.out"
CANCEL_GRACE_S = 15.0


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def start(bundle: Path, run_id: str) -> int:
    """Start the supervisor detached; return its pid."""
    bundle = Path(bundle)
    (bundle / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["HPCTUNE_RUN_ID"] = run_id
    with open(bundle / "logs" / "supervisor.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpctune.dispatch.local", str(bundle), run_id],
                                cwd=str(bundle), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _write_json(bundle / SUPERVISOR, {"pid": proc.pid, "host": socket.gethostname(), "started": time.time()})
    # Not waited for here: when `hpctune submit` exits, init (or the session's reaper) collects it.
    return proc.pid


def supervise(bundle: Path, run_id: str) -> int:
    bundle = Path(bundle)
    proctree.become_subreaper()
    stop: dict = {"sig": None}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["sig"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    env = dict(os.environ)
    env.update({"HPCTUNE_RUN_ID": run_id, "HPCTUNE_NODE_RANK": "0", "HPCTUNE_HEAD_ADDR": "127.0.0.1",
                "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del env[key]  # started from inside a Slurm job: this run is not part of it
    cancelled = False
    with open(bundle / NODE_LOG, "ab", buffering=0) as out:
        out.write(f"hpctune: local run {run_id} on {socket.gethostname()}\n".encode())
        child = subprocess.Popen(["bash", str(bundle / "launch.sh")], cwd=str(bundle), env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        while child.poll() is None:
            if stop["sig"] is not None and not cancelled:
                cancelled = True
                out.write(b"hpctune: cancel requested: stopping the run\n")
                proctree.kill_tree(child.pid, grace=CANCEL_GRACE_S, keep=child.pid)
            proctree.reap_orphans(keep=child.pid)
            time.sleep(0.3)
    # Anything adopted from the tree (a process whose parent died) goes too.
    proctree.kill_tree(os.getpid(), grace=5, include_root=False, keep=child.pid)
    rc = child.returncode
    _write_json(bundle / EXIT, {"exit_code": rc, "cancelled": cancelled, "ended": time.time()})
    return 0 if rc == 0 else 1


def state(run) -> tuple[str, str]:
    """(state, detail) of a local run, from the supervisor's files and /proc."""
    bundle = run.path
    ended = _read_json(bundle / EXIT)
    if ended is not None:
        if ended.get("cancelled"):
            return "CANCELLED", ""
        rc = ended.get("exit_code")
        return ("COMPLETED", "") if rc == 0 else ("FAILED", f"launch.sh exited with code {rc}")
    sup = _read_json(bundle / SUPERVISOR) or run.local or {}
    host, pid = sup.get("host"), sup.get("pid")
    if host and host != socket.gethostname():
        return "UNKNOWN", f"runs on host {host}: ask there"
    if pid and proctree.alive(int(pid)) and proctree.environ_of(int(pid)).get("HPCTUNE_RUN_ID") == run.id:
        return "RUNNING", f"pid {pid} on {host}"
    if pid is None:
        if getattr(run, "sweep", None) and not (bundle / SUPERVISOR).exists():
            return "PENDING", f"waiting for its turn in sweep {run.sweep}"
        return "UNKNOWN", "no supervisor recorded"
    return "FAILED", f"its supervisor (pid {pid}) ended without recording an exit (killed?)"


def cancel(run, timeout: float = 30.0) -> bool:
    """Stop a local run: SIGTERM its supervisor (which stops the tree), then make sure."""
    from hpctune.errors import RunError

    bundle = run.path
    sup = _read_json(bundle / SUPERVISOR) or run.local or {}
    host, pid = sup.get("host"), sup.get("pid")
    if host and host != socket.gethostname():
        raise RunError(f"run {run.id} runs on host {host}: cancel it there")
    if pid and proctree.alive(int(pid)) and proctree.environ_of(int(pid)).get("HPCTUNE_RUN_ID") == run.id:
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proctree.alive(int(pid)):
            time.sleep(0.2)
    # Whatever is left of the run (found by the HPCTUNE_RUN_ID every process inherits).
    left = proctree.find_by_env("HPCTUNE_RUN_ID", run.id)
    for p in left:
        proctree.kill_tree(p, grace=2)
    if not (bundle / EXIT).exists():
        _write_json(bundle / EXIT, {"exit_code": None, "cancelled": True, "ended": time.time()})
    return not proctree.find_by_env("HPCTUNE_RUN_ID", run.id)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m hpctune.dispatch.local RUN_DIR RUN_ID", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]), argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
