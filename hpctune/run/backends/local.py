"""The ``local`` backend (``-c local``): run a bundle on this machine, no Slurm: the same
``launch.sh`` as on a node.

``start`` spawns a small supervisor, ``python -m hpctune.run.backends.local RUN_DIR RUN_ID``,
in a session of its own (it outlives ``hpctune submit``). The supervisor is a child
subreaper: it runs ``bash RUN/launch.sh`` (node rank 0, output in ``RUN/logs/node-local-0.out``),
and on SIGTERM (``hpctune cancel``) it stops the whole process tree, the training processes
that torchrun starts in sessions of their own included, then records how it ended in
``RUN/logs/local-exit.json``. ``RUN/logs/local.json`` says which host and pid run it.

A sweep (``submit_array``) starts a detached queue runner, ``python -m
hpctune.run.backends.local --queue FOLDER N``, that starts each bundle of
``FOLDER/logs/local-queue.json`` through ``start`` when one of N slots is free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hpctune.run import folder as layout
from hpctune.run.backends import Handle, RunStatus, stopped
from hpctune.run.backends import proctree
from hpctune.run.folder import RunFolder

CANCEL_GRACE_S = 15.0
QUEUE = "logs/local-queue.json"


def start(bundle: Path, run_id: str) -> int:
    """Start the supervisor detached; return its pid."""
    bundle = Path(bundle)
    (bundle / layout.LOGS).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["HPCTUNE_RUN_ID"] = run_id
    with open(bundle / layout.LOGS / "supervisor.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpctune.run.backends.local", str(bundle), run_id],
                                cwd=str(bundle), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    RunFolder(bundle).write_local_supervisor(proc.pid, socket.gethostname())
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
    with open(bundle / layout.LOCAL_NODE_LOG, "ab", buffering=0) as out:
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
    RunFolder(bundle).write_local_exit(rc, cancelled)
    return 0 if rc == 0 else 1


def state(run) -> tuple[str, str]:
    """(state, detail) of a local run, from the supervisor's files and /proc."""
    folder = run.folder
    ended = folder.local_exit()
    if ended is not None:
        if ended.get("cancelled"):
            return "CANCELLED", ""
        rc = ended.get("exit_code")
        return ("COMPLETED", "") if rc == 0 else ("FAILED", f"launch.sh exited with code {rc}")
    host, pid = _supervisor(run)
    if host and host != socket.gethostname():
        return "UNKNOWN", f"runs on host {host}: ask there"
    if pid and proctree.alive(int(pid)) and proctree.environ_of(int(pid)).get("HPCTUNE_RUN_ID") == run.id:
        return "RUNNING", f"pid {pid} on {host}"
    if pid is None:
        if getattr(run, "sweep", None) and folder.local_supervisor() is None:
            return "PENDING", f"waiting for its turn in sweep {run.sweep}"
        return "UNKNOWN", "no supervisor recorded"
    return "FAILED", f"its supervisor (pid {pid}) ended without recording an exit (killed?)"


def _supervisor(run) -> tuple[str | None, int | None]:
    """(host, pid) of the run's supervisor; a pid that is not a plain positive number (a
    tampered file: 0 or -1 would signal a whole process group) reads as none."""
    sup = run.folder.local_supervisor() or run.local or {}
    host, pid = sup.get("host"), sup.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 < pid < 2**31:
        pid = None
    return (host if isinstance(host, str) else None), pid


def cancel(run, timeout: float = 30.0) -> bool:
    """Stop a local run: SIGTERM its supervisor (which stops the tree), then make sure."""
    from hpctune.errors import RunError

    folder = run.folder
    host, pid = _supervisor(run)
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
    if folder.local_exit() is None:
        folder.write_local_exit(None, True)
    return not proctree.find_by_env("HPCTUNE_RUN_ID", run.id)


# --- a sweep: a queue runner, at most N at a time -------------------------------------------

def start_queue(items: list[tuple[Path, str]], group_folder: Path, max_parallel: int, group_id: str) -> int:
    """Write the queue and start its detached runner; return the runner's pid."""
    group_folder = Path(group_folder)
    layout.write_json(group_folder / QUEUE, {"runs": [{"bundle": str(b), "run_id": r} for b, r in items]})
    with open(group_folder / layout.LOGS / "local-queue.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpctune.run.backends.local", "--queue", str(group_folder),
                                 str(max_parallel)],
                                cwd=str(group_folder), env={**os.environ, "HPCTUNE_SWEEP_ID": group_id},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc.pid


def run_queue(group_folder: Path, max_parallel: int) -> int:
    """Start each queued bundle when a slot is free; skip runs cancelled before their turn
    (``hpctune cancel`` writes their exit file)."""
    queue = layout.read_json(Path(group_folder) / QUEUE) or {"runs": []}
    pending = [(Path(r["bundle"]), r["run_id"]) for r in queue["runs"]]
    active: dict[int, Path] = {}
    while pending or active:
        for pid in list(active):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del active[pid]
        while pending and len(active) < max_parallel:
            bundle, run_id = pending.pop(0)
            folder = RunFolder(bundle)
            if folder.cancel_requested() or folder.local_exit() is not None:
                continue
            active[start(bundle, run_id)] = bundle
            print(f"started {run_id}", flush=True)
        time.sleep(0.5)
    return 0


# --- the backend ------------------------------------------------------------------------------

class LocalBackend:
    name = "local"
    one_request_per_group = False  # each queued run asks for nothing: this machine runs them in turn

    def submit(self, job, folder: Path, run_id: str) -> Handle:  # noqa: ARG002 - the interface
        return Handle(local={"host": socket.gethostname(), "pid": start(folder, run_id)}, state="RUNNING")

    def submit_array(self, items, max_parallel: int | None, group_id: str, group_folder: Path) -> list[Handle]:
        n = max(1, min(max_parallel or 1, len(items)))
        start_queue([(folder, run_id) for _, folder, run_id in items], group_folder, n, group_id)
        return [Handle(local={"host": socket.gethostname(), "pid": None}, state="PENDING") for _ in items]

    def dry_run_text(self, job, folder: Path, run_id: str) -> str:  # noqa: ARG002
        return self.by_hand(folder)

    def dry_run_array_text(self, items, max_parallel: int | None, group_id: str, group_folder: Path) -> str:  # noqa: ARG002
        return f"{max(1, min(max_parallel or 1, len(items)))} at a time: " + "; ".join(
            self.by_hand(folder) for _, folder, _ in items)

    def by_hand(self, folder) -> str:
        return f"bash {folder}/{layout.LAUNCH}"

    def dry_run_lines(self, what: str, folder, text: str, job=None) -> list[str]:  # noqa: ARG002
        return [f"Would run on this machine ({what}): {text}"]

    def status(self, run) -> RunStatus:
        st, detail = state(run)
        return stopped(run, RunStatus(state=st, nodes=(run.local or {}).get("host", ""), detail=detail,
                                      attempts=len(run.attempts())))

    def states(self, runs) -> tuple[dict, list]:
        return {r.id: self.status(r).state for r in runs}, []

    def cancel(self, run) -> None:
        cancel(run)


BACKEND = LocalBackend()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--queue":
        return run_queue(Path(argv[1]), int(argv[2]))
    if len(argv) != 2:
        print("usage: python -m hpctune.run.backends.local RUN_DIR RUN_ID | --queue FOLDER N", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]), argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
