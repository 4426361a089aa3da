"""Recorders that stand in for programs that cannot run here (GPU launchers) or must not
(srun/sbatch outside a job). Each appends its name and argv to a log, one line per call
(fields separated by the ASCII unit separator); ``srun`` then runs the command it was
given, as Slurm would on one node. Plain bash, so that they start in a millisecond.

Used only where the real program cannot run in a test: the multi-node rank logic and the
hostile-string tests execute the REAL rendered scripts with these on PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

_RECORD = r'''#!/usr/bin/env bash
{ printf '%s\x1f' "$(basename "$0")" "$@" | tr '\n' ' '; printf '\n'; } >> "$FAKEBIN_LOG"
'''

_SRUN_TAIL = r'''while [[ $# -gt 0 && $1 == -* ]]; do shift; done
[[ $# -gt 0 ]] && exec "$@"
'''


def install(bindir: Path, log: Path, programs=("accelerate", "srun", "sbatch", "module")) -> dict[str, str]:
    """Write recorders into ``bindir``; return env vars that put them first on PATH."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in programs:
        path = bindir / name
        path.write_text(_RECORD + (_SRUN_TAIL if name == "srun" else ""))
        path.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKEBIN_LOG": str(log)}


def calls(log: Path) -> list[dict]:
    """[{'prog': name, 'argv': [...]}, ...] in call order."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        fields = line.split("\x1f")[:-1]
        if fields:
            out.append({"prog": fields[0], "argv": fields[1:]})
    return out
