"""The Hugging Face hub cache, read as files (no hub client, no network, nothing heavy).

Layout (huggingface_hub's own, what ``snapshot_download`` writes and ``from_pretrained``
reads under ``HF_HUB_OFFLINE=1``)::

    HF_HOME/hub/models--ORG--NAME/refs/main            -> the commit hash of "main"
    HF_HOME/hub/models--ORG--NAME/snapshots/HASH/...   -> the files of that commit
    HF_HOME/hub/datasets--ORG--NAME/...                -> the same for dataset repositories

The login node asks it whether an offline job will find its model (a rule), ``hpctune
prepare`` reports what it fetched, and the training processes find a prepared dataset
snapshot. Besides the hub's folders, hpctune keeps its own under HF_HOME: the tokenized
data (``hpctune-tokenized/``) every rank of every job reuses.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_SHA = re.compile(r"[0-9a-f]{40}")
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZED = "hpctune-tokenized"
PARQUET_EXPORT = "refs/convert/parquet"  # the hub's parquet copy of every dataset repository


def hub_dir(hf_home: str | os.PathLike | None = None) -> Path:
    """The hub cache: of ``hf_home`` when given, else as the libraries find it from the environment."""
    if hf_home:
        return Path(os.path.expanduser(str(hf_home))) / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface")) / "hub"


def hf_home_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface"))


def is_repo_id(name: str) -> bool:
    """A hub repository id (``name`` or ``org/name``), not a path and not a built-in asset."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?", name or "")) \
        and ".." not in name and not os.path.exists(os.path.expanduser(name))


def repo_folder(hub: Path, repo_id: str, repo_type: str = "model") -> Path:
    return Path(hub) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def snapshot(hub: Path, repo_id: str, revision: str | None = None, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit;
    default main), or None when the cache does not hold it."""
    folder = repo_folder(hub, repo_id, repo_type)
    rev = revision or "main"
    if _SHA.fullmatch(rev):
        commit = rev
    else:
        try:
            commit = (folder / "refs" / rev).read_text().strip()
        except OSError:
            return None
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def model_complete(snap: Path | None) -> bool:
    """config.json and the weights (every shard an index names) are in the snapshot."""
    if snap is None or not (snap / "config.json").is_file():
        return False
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snap / index).is_file():
            try:
                shards = set(json.loads((snap / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((snap / s).is_file() for s in shards)
    return any((snap / w).is_file() for w in WEIGHTS) or any(snap.glob("*.safetensors"))


def model_in_cache(hf_home: str | os.PathLike | None, repo_id: str, revision: str | None = None) -> Path | None:
    snap = snapshot(hub_dir(hf_home), repo_id, revision)
    return snap if model_complete(snap) else None
