"""Where the start-up time goes: seconds from the process's start to each phase's end.

``mark(name)`` records a phase end; ``marks()`` is what metrics.json keeps as ``startup``
(``bench/bench_startup.py`` reads it, and the first optimizer step prints a one-line summary).
The process start comes from the kernel (/proc/self/stat), so Python's own start-up and the
imports before ``run.main`` are counted, as they are for a plain script.
"""

from __future__ import annotations

import os
import time

_MARKS: dict[str, float] = {}


def process_start() -> float:
    """The wall-clock time this process started (Linux); else the time of the first call."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return _T0


_T0 = time.time()
START = process_start()


def mark(name: str) -> None:
    _MARKS.setdefault(name, round(time.time() - START, 3))


def marks() -> dict[str, float]:
    return dict(_MARKS)


def summary() -> str:
    items = list(_MARKS.items())
    if not items:
        return ""
    parts, prev = [], 0.0
    for name, at in items:
        parts.append(f"{name} {at - prev:.1f} s")
        prev = at
    return f"{items[-1][1]:.1f} s after the process started (" + ", ".join(parts) + ")"
