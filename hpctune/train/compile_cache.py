"""DeepSpeed's just-in-time ops: built on the node's own disk, shared through a seed folder.

DeepSpeed compiles some ops when they are first used (cpu_adam for optimizer offload, the
CPU communication op, async_io for NVMe) into ``TORCH_EXTENSIONS_DIR``. On a shared ``$HOME``
nodes race on that folder and a killed build leaves a lock that hangs the next job (D11).
So launch.sh points ``TORCH_EXTENSIONS_DIR`` at a folder on the node's own disk, one per job
and node, and this module

- ``seed``s it, before DeepSpeed is imported, from the shared folder of pre-built ops
  (``HPCTUNE_EXTENSIONS_DIR``: what ``hpctune prepare`` built, or an earlier job published),
  so an op that was built once loads in milliseconds (ninja finds it up to date);
- ``publish``es, after a run, the ops this job had to build, so the next job finds them.

Builds depend on the compiler flags (DeepSpeed uses ``-march=native``), the Python, torch and
DeepSpeed versions: the shared folder keeps one subfolder per ``key()`` of those, so a node
of another CPU type never loads an op built for different instructions. Pure Python (no
torch import): it runs first thing in every training process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

SEED_ENV = "HPCTUNE_EXTENSIONS_DIR"
DEFAULT_SHARED = "~/.cache/hpctune/torch_extensions"  # the profile's cache.extensions_dir unset
LOCK = ".hpctune-seed.lock"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):  # x86, arm
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def _location(pkg: str) -> str:
    """Where a package is installed, found without importing it."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return "-"
    return str(Path(spec.origin).parent) if spec and spec.origin else "-"


def key() -> str:
    """What a build depends on besides its sources: machine, CPU features, Python, torch and
    DeepSpeed (versions and install folders: ninja's command lines name the headers and sources
    by absolute path, so an op built by another environment is rebuilt from scratch every time)."""
    parts = [platform.machine(), _cpu_flags(), f"py{sys.version_info[0]}.{sys.version_info[1]}",
             f"torch{_version('torch')}", f"deepspeed{_version('deepspeed')}",
             _location("torch"), _location("deepspeed")]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"{platform.machine()}-py{sys.version_info[0]}{sys.version_info[1]}-torch{_version('torch')}-ds{_version('deepspeed')}-{digest}"


def _ops(folder: Path) -> list[Path]:
    """Finished op builds in a folder: subfolders holding their shared library."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / f"{p.name}.so").is_file())


@contextlib.contextmanager
def _locked(folder: Path):
    """Node-local lock: the processes of one node seed one folder, one at a time."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def shared_root() -> Path:
    return Path(os.path.expanduser(os.environ.get(SEED_ENV) or DEFAULT_SHARED))


def seed(local: Path | None = None, shared: Path | None = None) -> list[str]:
    """Copy the shared pre-built ops of this machine's key into the node-local folder (once
    per node: the first process copies, the others find them there). Returns the op names."""
    local = Path(local or os.environ.get("TORCH_EXTENSIONS_DIR") or ".")
    src = Path(shared or shared_root()) / key()
    if local.resolve() == src.parent.resolve():
        return []
    copied = []
    with _locked(local):
        for op in _ops(src):
            if not (local / op.name).exists():
                shutil.copytree(op, local / op.name, symlinks=True, ignore=shutil.ignore_patterns("lock"))
                copied.append(op.name)
    return copied


def publish(local: Path | None = None, shared: Path | None = None) -> list[str]:
    """Copy ops this node built (absent from the shared folder) into it, each renamed into
    place in one step, so a reader never sees half an op. Failures are ignored (a full or
    read-only shared folder only means the next job builds again)."""
    local = Path(local or os.environ.get("TORCH_EXTENSIONS_DIR") or ".")
    dest = Path(shared or shared_root()) / key()
    if local.resolve() == dest.parent.resolve():
        return []
    done = []
    for op in _ops(local):
        if (dest / op.name).exists():
            continue
        try:
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{op.name}.", dir=dest))
            shutil.copytree(op, tmp / op.name, symlinks=True, ignore=shutil.ignore_patterns("lock"))
            try:
                os.rename(tmp / op.name, dest / op.name)
                done.append(op.name)
            except OSError:
                pass  # another node published it first
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue
    return done
