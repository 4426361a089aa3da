"""One experiment-tracker run across all attempts of a run (``report_to: wandb``).

The first attempt creates the tracker run's id and keeps it in the run folder
(``tracker.json``, hpctune.run.folder.TRACKER); every attempt, requeued or resubmitted,
exports ``WANDB_RUN_ID`` with it and ``WANDB_RESUME=allow``, so wandb continues the same
run instead of starting one per attempt. When the profile says the compute nodes are
offline (``network.offline``, recorded in manifest.json), ``WANDB_MODE=offline``: wandb
writes under ``RUN/wandb/`` and ``hpctune status`` shows the ``wandb sync`` command to run
from a login node. Set before the Trainer is built (its WandbCallback reads them).
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from hpctune.run import folder

ALPHABET = string.ascii_lowercase + string.digits


def setup(report_to: str, bundle: Path | None, environ=None) -> dict | None:
    """Export the tracker's variables; the tracker record, or None when not tracking."""
    env = os.environ if environ is None else environ
    if report_to != "wandb" or bundle is None:
        return None
    path = Path(bundle) / folder.TRACKER
    data = folder.read_json(path) or {}
    run_id = (data.get("wandb") or {}).get("id")
    if not run_id:
        candidate = {"wandb": {"id": "".join(secrets.choice(ALPHABET) for _ in range(8)), "dir": str(bundle)}}
        _create_once(path, candidate)       # every rank may get here first; one id wins
        data = folder.read_json(path) or candidate
        run_id = data["wandb"]["id"]
    offline = bool((folder.read_manifest(bundle).get("run") or {}).get("offline"))
    env["WANDB_RUN_ID"] = run_id
    env["WANDB_RESUME"] = "allow"
    env.setdefault("WANDB_DIR", str(bundle))
    if offline:
        env["WANDB_MODE"] = "offline"
    return {"id": run_id, "offline": offline, "dir": env["WANDB_DIR"]}


def sync_command(bundle: Path) -> str | None:
    """What to run on a login node to upload an offline tracker run (None if there is none)."""
    data = folder.read_json(Path(bundle) / folder.TRACKER) or {}
    wb = data.get("wandb")
    if not wb:
        return None
    if not (folder.read_manifest(bundle).get("run") or {}).get("offline"):
        return None
    return f"wandb sync --include-offline {wb.get('dir') or bundle}/wandb/offline-run-*"


def _create_once(path: Path, data: dict) -> None:
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
