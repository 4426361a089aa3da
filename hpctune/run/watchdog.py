"""The hang watchdog's rules (pure Python: the training ranks and the login side share them).

Every training rank rewrites its heartbeat (``logs/attempt-N/rank-R.heartbeat.json``: last
optimizer step, time, the longest gap between two heartbeats seen so far) at every step,
save and evaluation. The attempt hangs when no rank advances for ``limit_seconds``: the
profile's ``watchdog.minutes`` if set, else ``factor`` times the longest gap any rank has
seen (a slow save or evaluation counts), never below ``floor_minutes`` (which also covers
the first step, when no gap is known yet).

A rank whose step lags behind the others is the suspect: the others wait for it in the
next collective. When all ranks stopped at the same step, nobody is named.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

EXIT_CODE = 75  # a rank ended by the watchdog (after its stack was dumped)


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    minutes: float | None = None       # a fixed limit; None: from the step times seen
    floor_minutes: float = 20.0
    factor: float = 4.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "Settings":
        data = data or {}
        known = {k: data[k] for k in ("enabled", "minutes", "floor_minutes", "factor") if data.get(k) is not None}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


def longest_gap(heartbeats: dict[int, dict]) -> float:
    return max((float(hb.get("max_gap_s") or 0.0) for hb in heartbeats.values()), default=0.0)


def limit_seconds(settings: Settings, heartbeats: dict[int, dict]) -> float:
    if settings.minutes:
        return float(settings.minutes) * 60.0
    return max(float(settings.floor_minutes) * 60.0, float(settings.factor) * longest_gap(heartbeats))


def progress_key(heartbeats: dict[int, dict]) -> tuple:
    """What changes when any rank advances (steps, and phases such as a save ending)."""
    return tuple(sorted((r, hb.get("step"), hb.get("beats")) for r, hb in heartbeats.items()))


def suspect(heartbeats: dict[int, dict], world_size: int | None = None) -> dict | None:
    """The lagging rank(s): a lower step than the others, or no heartbeat at all."""
    if world_size is None:
        world_size = max((int(hb.get("world_size") or 0) for hb in heartbeats.values()), default=0)
    missing = [r for r in range(world_size or 0) if r not in heartbeats]
    if missing and heartbeats:
        return {"ranks": missing, "nodes": [], "why": f"rank(s) {', '.join(map(str, missing))} never sent a heartbeat"}
    where = {r: position(hb) for r, hb in heartbeats.items()}
    if len(set(where.values())) < 2:
        return None
    low = min(where.values())
    ranks = [r for r, p in where.items() if p == low]
    nodes = sorted({str(heartbeats[r].get("node") or "?") for r in ranks})
    return {"ranks": ranks, "nodes": nodes,
            "why": f"rank(s) {', '.join(map(str, ranks))} on {', '.join(nodes)} {describe(low)}, "
                   f"the others {describe(max(where.values()))}"}


def position(hb: dict) -> int:
    """2 x steps done, +1 while inside the next step: a rank that never entered the step
    the others are in (waiting for it in a collective) is behind them."""
    return 2 * int(hb.get("step") or 0) + (1 if hb.get("in_step") else 0)


def describe(pos: int) -> str:
    return f"in step {pos // 2 + 1}" if pos % 2 else f"after step {pos // 2}"


def verdict(heartbeats: dict[int, dict], settings: Settings, *, stalled_s: float, attempt: int,
            world_size: int | None = None) -> dict:
    """What watchdog.json records when the watchdog fires."""
    return {"attempt": attempt, "stalled_s": round(stalled_s, 1),
            "limit_s": round(limit_seconds(settings, heartbeats), 1),
            "steps": {str(r): hb.get("step") for r, hb in heartbeats.items()},
            "suspect": suspect(heartbeats, world_size)}


# A frame of a collective (faulthandler: 'File ".../torch/distributed/..."'; py-spy:
# 'all_gather (torch/distributed/distributed_c10d.py:4287)').
_COLLECTIVE = re.compile(r"torch/distributed/|deepspeed/comm/|torch/nn/parallel/distributed\.py|"
                         r"accelerate/utils/operations\.py")


def suspect_from_stacks(stacks: dict[int, str], heartbeats: dict[int, dict]) -> dict | None:
    """When the heartbeats cannot tell (every rank after the same step), the stacks can: the
    ranks waiting in a collective wait for the one(s) that are somewhere else."""
    if len(stacks) < 2:
        return None
    waiting = {r for r, text in stacks.items() if _COLLECTIVE.search(text or "")}
    elsewhere = sorted(set(stacks) - waiting)
    if not waiting or not elsewhere:
        return None
    nodes = sorted({str((heartbeats.get(r) or {}).get("node") or "?") for r in elsewhere})
    return {"ranks": elsewhere, "nodes": nodes,
            "why": f"rank(s) {', '.join(map(str, elsewhere))} on {', '.join(nodes)} not in a collective; "
                   f"rank(s) {', '.join(map(str, sorted(waiting)))} waiting in one (see their stacks)"}
