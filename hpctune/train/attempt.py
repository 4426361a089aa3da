"""Who and where this training process is, for the files it leaves in the run folder.

Every rank knows its run folder (the folder of the recipe.yaml it was started with), its
attempt (requeues + resubmissions + 1, as launch.sh counts), its global rank, world size
and node. Records written here are read back by hpctune.run.causes on the login side.
Pure Python (no torch): usable before anything heavy is imported, and in error paths.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpctune.run import folder


@dataclass(frozen=True)
class Context:
    bundle: Path | None
    attempt: int
    rank: int
    local_rank: int
    world_size: int
    node_index: int        # the node's rank in the job (torchrun's GROUP_RANK): logs/node-<job>-<index>.out
    node: str
    host: str
    job_id: str

    @property
    def enabled(self) -> bool:
        return self.bundle is not None


def context(recipe_path: str | Path | None) -> Context:
    env = os.environ
    host = socket.gethostname()
    return Context(
        bundle=folder.run_folder_of(recipe_path) if recipe_path else None,
        attempt=folder.attempt_from_env(env),
        rank=_int(env.get("RANK")), local_rank=_int(env.get("LOCAL_RANK")),
        world_size=max(1, _int(env.get("WORLD_SIZE"), 1)),
        node_index=_int(env.get("GROUP_RANK") or env.get("HPCTUNE_NODE_RANK") or env.get("SLURM_NODEID")),
        # SLURMD_NODENAME: with several slurmd on one host every node has the host's name
        node=env.get("SLURMD_NODENAME") or host, host=host, job_id=env.get("SLURM_JOB_ID", "local"))


_current: list[Context] = []


def init(recipe_path: str | Path | None) -> Context:
    """Set this process's context (``python -m hpctune.train`` does, first thing)."""
    _current[:] = [context(recipe_path)]
    return _current[0]


def current() -> Context:
    """This process's context; a disabled one (no run folder) when init was not called."""
    return _current[0] if _current else context(None)


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def first_line(exc: BaseException) -> str:
    """``ValueError: the message's first line`` (what `status` and `logs --errors` show)."""
    text = str(exc).strip().splitlines()
    name = type(exc).__module__ + "." + type(exc).__qualname__ if type(exc).__module__ not in ("builtins", "__main__") else type(exc).__qualname__
    return f"{name}: {text[0]}" if text else name


def record_error(ctx: Context, exc: BaseException) -> Path | None:
    """This rank's uncaught exception, for the cause of the attempt (never raises)."""
    if not ctx.enabled:
        return None
    try:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        lines = "".join(tb).splitlines()
        return folder.write_json(folder.error_path(ctx.bundle, ctx.attempt, ctx.rank), {
            "rank": ctx.rank, "local_rank": ctx.local_rank, "world_size": ctx.world_size, "node": ctx.node,
            "node_index": ctx.node_index,
            "host": ctx.host, "pid": os.getpid(), "job_id": ctx.job_id, "attempt": ctx.attempt,
            "time": round(time.time(), 3), "type": type(exc).__qualname__, "first_line": first_line(exc),
            "traceback": lines[-60:]})
    except Exception:  # noqa: BLE001 - recording must never hide the error itself
        return None
