"""Process trees on Linux, read from /proc: find, signal and reap every descendant.

``accelerate launch`` (torchrun) starts each training process in a session of its own, so a
process group never holds a whole node's run; and when a parent dies first its children
are re-parented away from the tree that Slurm's ``proctrack/linuxproc`` walks. The node
launchers therefore (1) make themselves a child subreaper, so orphans stay in their tree,
and (2) signal and kill by walking the tree, never by process group alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return int(rest[1]), rest[0]


def _all() -> dict[int, tuple[int, str]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                table[int(name)] = st
    return table


def descendants(root: int, include_root: bool = False) -> list[int]:
    """Every live (non-zombie) process below ``root``, parents before children."""
    table = _all()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        for child in sorted(children.get(pid, [])):
            todo.append(child)
            if table[child][1] != "Z":
                out.append(child)
    if include_root and root in table and table[root][1] != "Z":
        out.insert(0, root)
    return out


def signal_tree(root: int, sig: int, include_root: bool = True) -> int:
    """Send ``sig`` to ``root`` and every descendant; return how many were signalled."""
    n = 0
    for pid in descendants(root, include_root=include_root):
        try:
            os.kill(pid, sig)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    return n


def kill_tree(root: int, grace: float = 10.0, include_root: bool = True, keep: int | None = None) -> bool:
    """SIGTERM the tree, wait up to ``grace`` seconds, then SIGKILL what is left.

    ``keep``: a child owned by a ``subprocess.Popen`` (left for it to reap).
    Returns True when nothing of the tree is left alive."""
    signal_tree(root, signal.SIGTERM, include_root)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap_orphans(keep)
        if not descendants(root, include_root=include_root):
            return True
        time.sleep(0.2)
    # Collect the whole tree first so that nothing is re-parented between kills.
    for _ in range(5):
        left = descendants(root, include_root=include_root)
        if not left:
            return True
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)
        reap_orphans(keep)
    return not descendants(root, include_root=include_root)


def catches(pid: int, sig: int) -> bool:
    """True if the process has a handler installed for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except (OSError, ValueError):
        pass
    return False


def signal_catchers(root: int, sig: int) -> int:
    """Send ``sig`` only to ``root`` and processes below it that catch it (never to one it would
    kill, such as a compiler started by the training). Returns how many got it."""
    n = 0
    for pid in descendants(root, include_root=True):
        if catches(pid, sig):
            try:
                os.kill(pid, sig)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
    return n


def reap_orphans(keep: int | None = None) -> None:
    """Collect zombie children of this process (orphans adopted as a subreaper).

    ``keep`` is a child that a ``subprocess.Popen`` owns: it is left for Popen to reap."""
    me = os.getpid()
    for pid, (ppid, state) in _all().items():
        if ppid == me and state == "Z" and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process started with ({} if unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def find_by_env(key: str, value: str) -> list[int]:
    """Live processes whose environment has ``key=value`` (e.g. HPCTUNE_RUN_ID)."""
    out = []
    for pid, (_, state) in _all().items():
        if state != "Z" and pid != os.getpid() and environ_of(pid).get(key) == value:
            out.append(pid)
    return sorted(out)
