"""TEST-ONLY fault injection: make one rank fail in a chosen way at a chosen step.

A real hang, a real CUDA out-of-memory or a real kernel OOM kill cannot be produced on
demand on a CPU test machine; the tests of the failure causes (hpctune.run.causes), the
hang watchdog and the retry policy use this hook instead, and say so.

    HPCTUNE_FAULT="KIND:rank=R:step=S[:attempt=A]"   (several, separated by ';')

at the end of optimizer step S, on global rank R, in attempt A (default: every attempt):

- ``raise``: a RuntimeError (an error in the training);
- ``hang``: the main thread blocks forever with the GIL released, as in a stuck collective
  (the hang watchdog's threads keep running, like they would in a real hang);
- ``oom``: ``torch.OutOfMemoryError`` with CUDA's message (on CPU there is no CUDA OOM);
- ``kill``: SIGKILL to itself, which is what the kernel's OOM killer does (this machine's
  test Slurm enforces no memory limit: no cgroup, so no OUT_OF_MEMORY state).

Unset (always, outside tests), this module does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

ENV = "HPCTUNE_FAULT"
KINDS = ("raise", "hang", "oom", "kill")


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    step: int
    attempt: int | None = None


def parse(text: str) -> list[Fault]:
    """``raise:rank=1:step=3;hang:rank=0:step=5:attempt=1`` -> faults (ValueError if malformed)."""
    out = []
    for item in (text or "").split(";"):
        item = item.strip()
        if not item:
            continue
        kind, *parts = item.split(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        values = {}
        for part in parts:
            key, _, value = part.partition("=")
            if key not in ("rank", "step", "attempt") or not value.isdigit():
                raise ValueError(f"{ENV}: {part!r} is not rank=N, step=N or attempt=N")
            values[key] = int(value)
        if "rank" not in values or "step" not in values:
            raise ValueError(f"{ENV}: {item!r} needs rank=N and step=N")
        out.append(Fault(kind, values["rank"], values["step"], values.get("attempt")))
    return out


def due(faults: list[Fault], *, rank: int, step: int, attempt: int) -> Fault | None:
    for f in faults:
        if f.rank == rank and f.step == step and (f.attempt is None or f.attempt == attempt):
            return f
    return None


def trigger(fault: Fault) -> None:
    """Do what the fault says (never returns for hang and kill)."""
    where = f"rank {fault.rank} at step {fault.step}"
    if fault.kind == "raise":
        raise RuntimeError(f"fault injected by {ENV}: an error in the training on {where}")
    if fault.kind == "oom":
        import torch
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 20.00 GiB (fault injected by {ENV} on {where}; "
            "no GPU on this machine)")
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "hang":
        _hang_forever()


def _hang_forever() -> None:
    # Event.wait releases the GIL, as a rank stuck in a collective does.
    while True:
        threading.Event().wait(3600)


def from_env() -> list[Fault]:
    return parse(os.environ.get(ENV, ""))
