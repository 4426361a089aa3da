"""The reproducibility record of each attempt (``logs/attempt-N/env.json``, rank 0).

Installed packages with versions (what ``pip freeze`` lists, read from the installed
distributions' metadata), Python, torch, CUDA and the GPUs, the git commit of the recipe's
folder when it is a work tree (and whether it had uncommitted changes), the training
dataset's fingerprint, and every rank's host. A later attempt compares its record with the
first attempt's and warns (in its log and in the record) when the environment differs:
a requeued job may land on nodes with another software stack.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from hpctune.run import folder

COMPARED = ("python", "torch", "cuda", "git_commit", "dataset_fingerprint")


def packages() -> dict[str, str]:
    from importlib import metadata
    out = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name:
            out.setdefault(name.lower().replace("_", "-"), dist.version)
    return dict(sorted(out.items()))


def git_commit(path: Path | None) -> dict | None:
    if path is None or not Path(path).is_dir():
        return None
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"folder": str(path), "commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def build(*, attempt: int, job_id: str, hosts: list[str], dataset_fingerprint: str | None,
          recipe_file: str | None) -> dict:
    import torch
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    git = git_commit(Path(recipe_file).parent) if recipe_file else None
    return {"attempt": attempt, "job_id": job_id, "time": round(time.time(), 3),
            "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda, "gpus": gpus,
            "git": git, "git_commit": (git or {}).get("commit"), "dataset_fingerprint": dataset_fingerprint,
            "hosts": sorted(set(hosts)), "packages": packages()}


def differences(first: dict, now: dict) -> list[str]:
    """What changed since the first attempt, one short item each (hosts are not compared:
    a retry that excludes a node runs elsewhere on purpose)."""
    out = []
    for key in COMPARED:
        if first.get(key) != now.get(key):
            out.append(f"{key} {first.get(key)} -> {now.get(key)}")
    a, b = first.get("packages") or {}, now.get("packages") or {}
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            out.append(f"{name} {a.get(name, '(none)')} -> {b.get(name, '(none)')}")
    return out


def write(bundle: Path, record: dict) -> list[str]:
    """Write this attempt's record; return how it differs from the first attempt's."""
    first = None
    for a in folder.attempt_numbers(bundle):
        if a < record["attempt"]:
            first = folder.read_json(folder.env_record_path(bundle, a))
            if first:
                break
    diffs = differences(first, record) if first else []
    if first:
        record["differs_from_attempt"] = first.get("attempt")
        record["differences"] = diffs
    folder.write_json(folder.env_record_path(bundle, record["attempt"]), record)
    return diffs
