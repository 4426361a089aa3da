"""Recorders that stand in for programs that cannot run here (GPU launchers, container
runtimes) or must not (srun/sbatch/scancel outside a job). Each appends its name and its
exact argv to a log (``N\\0name\\0arg1\\0...``: a count first, so newlines, empty strings or
any other byte in an argument read back exactly); then

- ``srun`` runs the command after its options, as Slurm would on one node;
- ``apptainer exec [--opt=...] IMAGE CMD...`` runs CMD, as the container would;
- ``scontrol show hostnames LIST`` prints ``$FAKEBIN_HOSTS`` (default ``n1``), one per line;
- ``accelerate`` also writes its environment to ``$FAKEBIN_LOG.env`` (NUL-separated), so a
  test can check what the rendered script exported;
- ``getent ahostsv4 NAME`` answers ``$FAKEBIN_ADDR`` (default 10.1.2.3) for any NAME: a name
  service for cluster host names that do not exist here.

Plain bash, so that they start in a millisecond. Used only where the real program cannot
run in a test: the multi-node rank logic and the hostile-input tests execute the REAL
rendered scripts with these on PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

_RECORD = r'''#!/usr/bin/env bash
printf '%s\0' "$#" "$(basename "$0")" "$@" >> "$FAKEBIN_LOG"
'''

_TAILS = {
    "srun": r'''while [[ $# -gt 0 && $1 == -* ]]; do shift; done
[[ $# -gt 0 ]] && exec "$@"
''',
    "apptainer": r'''[[ ${1:-} == exec ]] && shift
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
shift  # the image
[[ $# -gt 0 ]] && exec "$@"
''',
    "scontrol": r'''if [[ ${1:-} == show && ${2:-} == hostnames ]]; then
  for h in ${FAKEBIN_HOSTS:-n1}; do echo "$h"; done
fi
''',
    "accelerate": r'''env -0 > "$FAKEBIN_LOG.env"
''',
    "getent": r'''[[ ${1:-} == ahostsv4 && -n ${2:-} ]] && printf '%s      STREAM %s\n' "${FAKEBIN_ADDR:-10.1.2.3}" "$2"
''',
}


def install(bindir: Path, log: Path, programs=("accelerate", "srun", "sbatch", "module")) -> dict[str, str]:
    """Write recorders into ``bindir``; return env vars that put them first on PATH."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in programs:
        path = bindir / name
        path.write_text(_RECORD + _TAILS.get(name, ""))
        path.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKEBIN_LOG": str(log)}


def calls(log: Path) -> list[dict]:
    """[{'prog': name, 'argv': [...]}, ...] in call order, each argument exactly as passed."""
    if not Path(log).exists():
        return []
    fields = Path(log).read_bytes().split(b"\0")
    out = []
    i = 0
    while i < len(fields) - 1:
        n = int(fields[i])
        name = fields[i + 1].decode(errors="surrogateescape")
        argv = [f.decode(errors="surrogateescape") for f in fields[i + 2: i + 2 + n]]
        out.append({"prog": name, "argv": argv})
        i += 2 + n
    return out


def environment(log: Path) -> dict[str, str]:
    """The environment ``accelerate`` was started with (empty if it was not started)."""
    path = Path(f"{log}.env")
    if not path.exists():
        return {}
    env = {}
    for item in path.read_bytes().split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode(errors="surrogateescape")] = v.decode(errors="surrogateescape")
    return env
