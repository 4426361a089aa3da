"""The run folder (the bundle): the contract between the login node and the compute nodes.

Every file name of the folder is written here once; the login side (render, registry,
backends, status) and the compute side (train: progress, markers, metrics) both go through
this module, so a name or a record's shape cannot drift between them. Pure Python.

    RUN/
      job.sbatch  launch.sh  accelerate_config.yaml   rendered; what the nodes run
      recipe.yaml                                     the resolved recipe: the training's one input
      manifest.json                                   what was rendered from what, and how the run behaves
      run.json                                        copy of the registry record (hpctune submit)
      logs/events.jsonl                               login/launcher events, one JSON line each
      logs/attempts.jsonl                             one line per attempt (launch.sh, node 0)
      logs/node-<job>-<node>.out                      each node's output (local: node-local-0.out)
      logs/local.json  logs/local-exit.json           the local supervisor: who runs it, how it ended
      logs/submitit/                                  submitit's own files
      <output_dir>/                                   (default RUN/output)
        progress.json                                 step, loss: written at each logging step
        metrics.json                                  the final report (completed / interrupted / failed)
        .hpctune-interrupted                          stopped with a checkpoint; the next attempt resumes
        checkpoint-N/.hpctune-complete                every rank finished writing checkpoint N
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

JOB_SBATCH = "job.sbatch"
LAUNCH = "launch.sh"
ACCELERATE = "accelerate_config.yaml"
RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
RENDERED = (JOB_SBATCH, LAUNCH, ACCELERATE, RECIPE, MANIFEST)

LOGS = "logs"
EVENTS = "logs/events.jsonl"
ATTEMPTS = "logs/attempts.jsonl"
SUBMITIT = "logs/submitit"
LOCAL_SUPERVISOR = "logs/local.json"
LOCAL_EXIT = "logs/local-exit.json"
LOCAL_NODE_LOG = "logs/node-local-0.out"

DEFAULT_OUTPUT = "output"
PROGRESS = "progress.json"
METRICS = "metrics.json"
INTERRUPTED = ".hpctune-interrupted"
COMPLETE = ".hpctune-complete"


# --- plain file helpers (atomic where a reader may look at any moment) -------------------

def atomic_write(path: str | Path, text: str) -> Path:
    """Write through a temporary file and rename: a reader sees the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: dict, *, indent: int | None = 2) -> Path:
    return atomic_write(path, json.dumps(data, indent=indent, sort_keys=indent is None) + "\n")


def read_json(path: str | Path) -> dict | None:
    """A JSON object, or None when missing, unreadable, cut short or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: str | Path) -> list[dict]:
    """Every whole JSON object line (a line cut short by a killed writer is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line with ONE write (O_APPEND): concurrent writers never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --- attempts: heartbeats, errors, stacks, watchdog, environment (hpctune.run.causes) -------
#
#   RUN/logs/attempt-<N>/                   one folder per attempt (N as launch.sh counts it)
#     rank-<R>.heartbeat.json               each training rank: last step and time (rewritten)
#     rank-<R>.error.json                   a rank's uncaught exception (first line, traceback)
#     rank-<R>.stack.txt                    its Python stack, dumped by the hang watchdog
#     watchdog.json                         the watchdog's verdict: limit, steps, suspect rank
#     env.json                              reproducibility record (packages, versions, hosts)
#   RUN/logs/causes.jsonl                   why each attempt ended (one line each) and what next
#   RUN/tracker.json                        the experiment tracker's run id, kept across attempts

CAUSES = "logs/causes.jsonl"
TRACKER = "tracker.json"


def attempt_from_env(environ=None) -> int:
    """The attempt number, as launch.sh computes it: requeues + resubmissions + 1."""
    env = os.environ if environ is None else environ

    def num(key):
        try:
            return max(0, int(env.get(key) or 0))
        except ValueError:
            return 0
    return num("SLURM_RESTART_COUNT") + num("HPCTUNE_RESUBMISSIONS") + 1


def attempt_dir(bundle: str | Path, attempt: int) -> Path:
    return Path(bundle) / LOGS / f"attempt-{int(attempt)}"


def heartbeat_path(bundle, attempt: int, rank: int) -> Path:
    return attempt_dir(bundle, attempt) / f"rank-{int(rank)}.heartbeat.json"


def error_path(bundle, attempt: int, rank: int) -> Path:
    return attempt_dir(bundle, attempt) / f"rank-{int(rank)}.error.json"


def stack_path(bundle, attempt: int, rank: int) -> Path:
    return attempt_dir(bundle, attempt) / f"rank-{int(rank)}.stack.txt"


def watchdog_path(bundle, attempt: int) -> Path:
    return attempt_dir(bundle, attempt) / "watchdog.json"


def env_record_path(bundle, attempt: int) -> Path:
    return attempt_dir(bundle, attempt) / "env.json"


def _per_rank(bundle, attempt: int, suffix: str) -> dict[int, Path]:
    out = {}
    try:
        entries = list(attempt_dir(bundle, attempt).iterdir())
    except OSError:
        return out
    for p in entries:
        name = p.name
        if name.startswith("rank-") and name.endswith(suffix) and name[5:-len(suffix)].isdigit():
            out[int(name[5:-len(suffix)])] = p
    return dict(sorted(out.items()))


def heartbeats(bundle, attempt: int) -> dict[int, dict]:
    """Every rank's last heartbeat in this attempt (rank -> record)."""
    out = {}
    for rank, p in _per_rank(bundle, attempt, ".heartbeat.json").items():
        data = read_json(p)
        if data is not None:
            out[rank] = data
    return out


def rank_errors(bundle, attempt: int) -> dict[int, dict]:
    out = {}
    for rank, p in _per_rank(bundle, attempt, ".error.json").items():
        data = read_json(p)
        if data is not None:
            out[rank] = data
    return out


def stacks(bundle, attempt: int) -> dict[int, Path]:
    return _per_rank(bundle, attempt, ".stack.txt")


def attempt_numbers(bundle) -> list[int]:
    """Attempts that left a folder, in order."""
    try:
        names = [p.name for p in (Path(bundle) / LOGS).iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(n[8:]) for n in names if n.startswith("attempt-") and n[8:].isdigit())


def run_folder_of(recipe_path: str | Path) -> Path | None:
    """The run folder a node's recipe.yaml belongs to (None for a recipe outside any)."""
    parent = Path(recipe_path).resolve().parent
    return parent if (parent / MANIFEST).is_file() else None


def read_manifest(bundle) -> dict:
    return read_json(Path(bundle) / MANIFEST) or {}
