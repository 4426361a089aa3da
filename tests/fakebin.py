"""Recorders that stand in for programs that cannot run here (GPU launchers, container
runtimes) or must not (srun/sbatch/scancel outside a job). Each appends its name and its
exact argv to a log (``N\\0name\\0arg1\\0...``: a count first, so newlines, empty strings or
any other byte in an argument read back exactly); then

- ``srun`` runs the command after its options, as Slurm would on one node (with
  ``FAKEBIN_NODES="n1 n2"``: once per node, one after the other, with SLURM_NODEID and
  SLURMD_NODENAME set as Slurm sets them);
- ``apptainer exec [--opt=...] IMAGE CMD...`` runs CMD, as the container would;
- ``scontrol show hostnames LIST`` prints ``$FAKEBIN_HOSTS`` (default ``n1``), one per line
  (or asks the real scontrol at ``$FAKEBIN_REAL_SCONTROL``);
- ``sbatch`` writes its environment to ``$FAKEBIN_LOG.sbatch.env`` and answers job id 99999;
  with an ``--exclude=`` of more than ``$FAKEBIN_SBATCH_MAX_EXCLUDE`` nodes it refuses, as
  Slurm does when too few nodes are left for the job;
- ``accelerate`` also writes its environment to ``$FAKEBIN_LOG.env`` (NUL-separated), so a
  test can check what the rendered script exported;
- ``squeue`` answers ``$FAKEBIN_SQUEUE`` (e.g. a job's end time), else nothing;
- ``hostpy`` (as ``HPCTUNE_PYTHON``) answers job.sbatch's after-step question with
  ``$FAKEBIN_AFTER_STEP`` (default ``done``);
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
[[ $# -gt 0 ]] || exit 0
[[ -n ${FAKEBIN_NODES:-} ]] || exec "$@"
# FAKEBIN_NODES="n1 n2": one task per node, as Slurm starts them (SLURM_NODEID, SLURMD_NODENAME)
rc=0 i=0
for node in $FAKEBIN_NODES; do
  SLURM_NODEID=$i SLURMD_NODENAME=$node "$@" || rc=$?
  i=$((i + 1))
done
exit "$rc"
''',
    "apptainer": r'''[[ ${1:-} == exec ]] && shift
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
shift  # the image
[[ $# -gt 0 ]] && exec "$@"
''',
    "scontrol": r'''if [[ ${1:-} == show && ${2:-} == hostnames ]]; then
  [[ -z ${FAKEBIN_REAL_SCONTROL:-} ]] || exec "$FAKEBIN_REAL_SCONTROL" "$@"
  for h in ${FAKEBIN_HOSTS:-n1}; do echo "$h"; done
fi
''',
    "sbatch": r'''for a in "$@"; do
  if [[ -n ${FAKEBIN_SBATCH_MAX_EXCLUDE:-} && $a == --exclude=* ]]; then
    IFS=, read -ra ex <<< "${a#--exclude=}"
    if (( ${#ex[@]} > FAKEBIN_SBATCH_MAX_EXCLUDE )); then
      echo "sbatch: error: Batch job submission failed: Requested node configuration is not available" >&2
      exit 1
    fi
  fi
done
env -0 > "$FAKEBIN_LOG.sbatch.env"
echo 99999
''',
    "accelerate": r'''env -0 > "$FAKEBIN_LOG.env"
''',
    "squeue": r'''[[ -n ${FAKEBIN_SQUEUE:-} ]] && printf '%s\n' "$FAKEBIN_SQUEUE"
''',
    "hostpy": r'''echo "${FAKEBIN_AFTER_STEP:-done}"
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


def environment(log: Path, prog: str = "accelerate") -> dict[str, str]:
    """The environment ``accelerate`` (or ``sbatch``) was started with (empty if it was not)."""
    path = Path(f"{log}.env" if prog == "accelerate" else f"{log}.{prog}.env")
    if not path.exists():
        return {}
    env = {}
    for item in path.read_bytes().split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode(errors="surrogateescape")] = v.decode(errors="surrogateescape")
    return env
