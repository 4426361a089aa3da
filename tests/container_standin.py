"""A stand-in container runtime: no pyxis/enroot or apptainer can be installed here.

``run_inside(mounts, argv)`` runs a command the way a container runtime would, as far as
hpctune can tell: in a mount namespace (``unshare --mount``) whose root is a fresh tmpfs
holding an "image" (this machine's /usr, /etc and the Python installation, read-only) and
the MOUNTS (SRC:DST, bound read-write), nothing else of the host's files; its /tmp is its
own. Slurm's commands (scontrol, sbatch, srun, squeue, sacct, scancel, sinfo) and the module
system are not in the image: its /usr/bin and /usr/sbin list every command of this machine
but those (links into the machine's folders, bound read-only at /.image), and an exported
``module`` shell function does not pass in. The environment passes in (pyxis
and apptainer do that by default).

Two front ends, written as scripts into a bin folder by ``install``:

- ``srun``: Slurm's srun with pyxis' ``--container-image=IMG --container-mounts=M1,M2``:
  the command runs inside (one task; without those options it runs on the host);
- ``apptainer exec [--nv] [--bind=M ...] IMAGE CMD...``: CMD runs inside.

Each records its argv (tests/fakebin.py format) before running the command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HIDDEN = ("scontrol", "sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "salloc", "module", "modulecmd",
          "apptainer", "singularity", "enroot")

ENTER = r'''#!/usr/bin/env bash
# run "$@" inside a stand-in container; STANDIN_MOUNTS="SRC:DST,..." (see tests/container_standin.py)
set -euo pipefail
exec unshare --mount --propagation private --fork bash -c '
set -euo pipefail
root=$(mktemp -d /tmp/standin-root.XXXXXX)
mount -t tmpfs standin "$root"
mkdir -p "$root"/{usr,etc,proc,dev,sys,tmp,root,run}
mount --rbind /usr "$root/usr"
mount --rbind /etc "$root/etc"
for d in bin sbin lib lib32 lib64 libx32; do
  if [[ -L /$d ]]; then ln -s "$(readlink /$d)" "$root/$d"; elif [[ -d /$d ]]; then mkdir -p "$root/$d"; mount --rbind "/$d" "$root/$d"; fi
done
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs standin-tmp "$root/tmp"
chmod 1777 "$root/tmp"
# the image: the Python installation the venvs point at
if [[ -n "${STANDIN_IMAGE_DIRS:-}" ]]; then
  IFS=, read -ra dirs <<<"$STANDIN_IMAGE_DIRS"
  for d in "${dirs[@]}"; do mkdir -p "$root$d"; mount --rbind -o ro "$d" "$root$d" 2>/dev/null || mount --rbind "$d" "$root$d"; done
fi
# the mounts
IFS=, read -ra mounts <<<"${STANDIN_MOUNTS:-}"
for m in "${mounts[@]}"; do
  [[ -n "$m" ]] || continue
  src=${m%%:*}; dst=${m#*:}; dst=${dst%%:*}; [[ -n "$dst" ]] || dst=$src
  mkdir -p "$root$dst"
  mount --bind "$src" "$root$dst"
done
# no Slurm, no module system in the image: its /usr/bin and /usr/sbin list every command of
# this machine but those (links into the folders of this machine, bound at /.image)
hidden=" '"${HIDDEN[*]}"' "
for d in bin sbin; do
  mkdir -p "$root/.image/usr-$d"
  mount --bind "/usr/$d" "$root/.image/usr-$d"
  mount -t tmpfs "standin-$d" "$root/usr/$d"
  for f in /usr/$d/* /usr/$d/.[!.]*; do
    [[ -e "$f" || -L "$f" ]] || continue
    name=${f##*/}
    [[ "$hidden" == *" $name "* ]] && continue
    ln -s "/.image/usr-$d/$name" "$root/usr/$d/$name"
  done
done
for v in $(compgen -e); do [[ "$v" == BASH_FUNC_* ]] && unset "$v"; done
unset -f module 2>/dev/null || true
cd "${STANDIN_CWD:-/}" 2>/dev/null || cd /
rc=0
chroot "$root" /usr/bin/env --chdir="$PWD" "$@" || rc=$?
umount -l "$root" 2>/dev/null || true
rmdir "$root" 2>/dev/null || true
exit "$rc"
' standin "$@"
'''

SRUN = r'''#!/usr/bin/env bash
printf '%s\0' "$#" "$(basename "$0")" "$@" >> "$FAKEBIN_LOG"
image="" mounts=""
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    --container-image=*) image=${1#*=} ;;
    --container-mounts=*) mounts=${1#*=} ;;
  esac
  shift
done
[[ $# -gt 0 ]] || exit 0
if [[ -z "$image" ]]; then exec "$@"; fi
STANDIN_MOUNTS=$mounts STANDIN_CWD=$PWD exec "$STANDIN_BIN/standin-enter" "$@"
'''

APPTAINER = r'''#!/usr/bin/env bash
printf '%s\0' "$#" "$(basename "$0")" "$@" >> "$FAKEBIN_LOG"
[[ ${1:-} == exec ]] && shift
mounts=""
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    --bind=*) mounts+="${mounts:+,}${1#*=}" ;;
  esac
  shift
done
shift # the image
STANDIN_MOUNTS=$mounts STANDIN_CWD=$PWD exec "$STANDIN_BIN/standin-enter" "$@"
'''


def install(bindir: Path, apptainer_dir: Path | None = None) -> dict[str, str]:
    """Write the front ends; return the environment they need (STANDIN_BIN, STANDIN_IMAGE_DIRS).
    ``srun`` goes into ``bindir``; ``apptainer`` into ``apptainer_dir`` (a folder a module
    puts on PATH) or ``bindir``."""
    bindir.mkdir(parents=True, exist_ok=True)
    enter = bindir / "standin-enter"
    enter.write_text(ENTER.replace("'\"${HIDDEN[*]}\"'", " ".join(HIDDEN)))
    (bindir / "srun").write_text(SRUN)
    adir = apptainer_dir or bindir
    adir.mkdir(parents=True, exist_ok=True)
    (adir / "apptainer").write_text(APPTAINER)
    for p in (enter, bindir / "srun", adir / "apptainer"):
        p.chmod(0o755)
    # The image holds this Python installation (the venv's interpreter is a link into it).
    image = {os.path.realpath(sys.base_prefix)}
    return {"STANDIN_BIN": str(bindir), "STANDIN_IMAGE_DIRS": ",".join(sorted(image))}
