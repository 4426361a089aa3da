"""Following runs until they end: the progress loop of ``submit --wait`` and the group loop of
``sweep --wait``. States come from the backends, progress from the run folder (progress.json,
written by the training at every logging step)."""

from __future__ import annotations

import time
from typing import Callable

from hpctune.run import backends, registry

PROGRESS_EVERY_S = 5.0  # a new step alone is shown at most this often


def where(st: backends.RunStatus) -> str:
    """'RUNNING on n[1-2] (Slurm job 12)' style summary of a status."""
    text = st.state
    if st.state == "PENDING" and st.reason and st.reason != "None":
        text += f" ({st.reason})"
    if st.nodes and st.state not in ("PENDING",):
        text += f" on {st.nodes}"
    if st.job_id:
        text += f" (Slurm job {st.job_id})"
    return text


def follow(run: registry.Run, echo: Callable[[str], None], interval: float = 1.0):
    """Print a line whenever the state or progress changes; return (final status, progress)."""
    t0 = time.monotonic()
    last_key = None
    last_print = 0.0
    last_prog = None
    shown_notes: set = set()
    unknown_since = None
    while True:
        st = backends.status(run)
        prog = registry.progress(run)
        if prog.step is None and last_prog is not None and not st.done:
            prog = last_prog  # a checkpoint being rotated, progress.json being replaced
        line = where(st)
        if st.state in ("RUNNING",) and st.attempts > 1:
            line += f", attempt {st.attempts}"
        key = (line, prog.step if st.state not in ("PENDING",) else None)
        if prog.describe() and st.state not in ("PENDING",):
            line += f": {prog.describe()}"
        if st.detail and st.done:
            line += f" - {st.detail}"
        # one line per state change or new step (not per loss update)
        only_progress = last_key is not None and key[0] == last_key[0]
        final_step = prog.step is not None and prog.step == prog.max_steps
        if st.done or (key != last_key and (not only_progress or final_step
                                              or time.monotonic() - last_print >= PROGRESS_EVERY_S)):
            elapsed = int(time.monotonic() - t0)
            echo(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {line}")
            last_key = key
            last_print = time.monotonic()
        last_prog = prog if prog.step is not None else last_prog
        for note in st.notes:
            if note not in shown_notes:
                echo(f"note: {note}")
                shown_notes.add(note)
        if st.done:
            registry.cache_state(run, st.state)
            return st, prog
        if st.state == "UNKNOWN":
            unknown_since = unknown_since or time.monotonic()
            if time.monotonic() - unknown_since > 120:
                registry.cache_state(run, st.state)
                return st, prog
        else:
            unknown_since = None
        elapsed = time.monotonic() - t0
        time.sleep(interval if elapsed < 120 else min(10.0, interval * 3))


def follow_group(runs: list[registry.Run], echo: Callable[[str], None], interval: float = 3.0) -> dict[str, str]:
    """Print each run's state changes until every run has ended; their final states."""
    seen: dict[str, str] = {}
    while True:
        states, _ = backends.refresh(runs)
        for r in runs:
            st = states.get(r.id, r.state)
            if seen.get(r.id) != st:
                seen[r.id] = st
                echo(f"{time.strftime('%H:%M:%S')} {r.id}: {st}")
        if all(seen[r.id] in backends.TERMINAL for r in runs):
            return seen
        time.sleep(interval)
