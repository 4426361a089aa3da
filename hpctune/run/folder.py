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
import re
import socket
import time
from dataclasses import dataclass, field
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
    # O_NOFOLLOW: a link in a (shared) run folder's logs/ never redirects the write.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --- manifest.json: what was rendered, and how the run behaves -----------------------------

@dataclass
class Manifest:
    """manifest.json, typed. Written by hpctune.render; read by the registry, the backends and
    `plan --compare`, so nobody parses a rendered script to learn how a run behaves.

    Fields added after 0.1.0 are None in older folders (``from_dict`` fills what it can)."""

    hpctune_version: str
    cluster: str
    cluster_file: str | None
    recipe: str
    recipe_file: str | None
    overrides: list = field(default_factory=list)
    nodes: int = 1
    processes_per_node: int = 1
    num_processes: int = 1
    gpus_per_node: int | None = None        # None: folder from 0.1.0
    partition: str | None = None
    time: str = ""
    distributed_type: str = ""
    output_dir: str = ""
    scheduler: str = "local"                # 0.1.0: "slurm" when a partition was set
    preemption_mode: str | None = None      # None: folder from 0.1.0 (see registry.from_folder)
    max_attempts: int | None = None
    signal_seconds: int | None = None
    max_steps: int | None = None
    logging_strategy: str | None = None
    logging_steps: int | None = None
    watchdog: dict | None = None            # profile.watchdog: read on the nodes (train/heartbeat.py)
    retry: dict | None = None               # profile.retry: read by the after-step decision (run/retry.py)
    offline: bool | None = None             # profile.network.offline
    files: dict = field(default_factory=dict)
    cluster_sha256: str | None = None
    recipe_sha256: str | None = None

    def to_dict(self) -> dict:
        return {
            "hpctune_version": self.hpctune_version,
            "cluster": {"name": self.cluster, "file": self.cluster_file, "sha256": self.cluster_sha256},
            "recipe": {"name": self.recipe, "file": self.recipe_file, "overrides": list(self.overrides),
                       "sha256": self.recipe_sha256},
            "layout": {"nodes": self.nodes, "processes_per_node": self.processes_per_node,
                       "num_processes": self.num_processes, "gpus_per_node": self.gpus_per_node,
                       "partition": self.partition, "time": self.time, "distributed_type": self.distributed_type},
            "output_dir": self.output_dir,
            "run": {"scheduler": self.scheduler,
                    "preemption": {"mode": self.preemption_mode, "max_attempts": self.max_attempts,
                                   "signal_seconds": self.signal_seconds},
                    "watchdog": self.watchdog, "retry": self.retry, "offline": self.offline,
                    "max_steps": self.max_steps,
                    "logging": {"strategy": self.logging_strategy, "steps": self.logging_steps}},
            "files": dict(sorted(self.files.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, m: dict, folder: Path) -> "Manifest":
        cluster, recipe, lay = m.get("cluster") or {}, m.get("recipe") or {}, m.get("layout") or {}
        run = m.get("run") or {}
        pre, log = run.get("preemption") or {}, run.get("logging") or {}
        return cls(
            hpctune_version=str(m.get("hpctune_version", "?")), cluster=cluster.get("name", "?"),
            cluster_file=cluster.get("file"), cluster_sha256=cluster.get("sha256"),
            recipe=recipe.get("name", "?"), recipe_file=recipe.get("file"), recipe_sha256=recipe.get("sha256"),
            overrides=list(recipe.get("overrides") or []),
            nodes=int(lay.get("nodes") or 1), processes_per_node=int(lay.get("processes_per_node") or 1),
            num_processes=int(lay.get("num_processes") or 1), gpus_per_node=lay.get("gpus_per_node"),
            partition=lay.get("partition"), time=lay.get("time", ""), distributed_type=lay.get("distributed_type", ""),
            output_dir=m.get("output_dir") or str(folder / DEFAULT_OUTPUT),
            scheduler=run.get("scheduler") or ("slurm" if lay.get("partition") else "local"),
            preemption_mode=pre.get("mode"), max_attempts=pre.get("max_attempts"),
            signal_seconds=pre.get("signal_seconds"), max_steps=run.get("max_steps"),
            logging_strategy=log.get("strategy"), logging_steps=log.get("steps"),
            watchdog=run.get("watchdog"), retry=run.get("retry"), offline=run.get("offline"),
            files=dict(m.get("files") or {}))


# --- the output folder: written by the training on the nodes ------------------------------

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class Output:
    """The run's output folder: progress, metrics, the interruption and checkpoint markers.
    The training (rank 0) writes these; status, --wait, merge and plan --compare read them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # progress.json: the newest logged step, rewritten at each logging step
    def write_progress(self, step: int, max_steps: int | None, loss: float | None = None, **extra) -> None:
        data = {"step": int(step), "max_steps": int(max_steps) if max_steps else None,
                "loss": None if loss is None else float(loss), "time": round(time.time(), 3), **extra}
        write_json(self.path / PROGRESS, data, indent=None)

    def progress(self) -> dict | None:
        return read_json(self.path / PROGRESS)

    # metrics.json: the final report (completed, interrupted or failed)
    def write_metrics(self, data: dict) -> Path:
        return write_json(self.path / METRICS, data)

    def metrics(self) -> dict | None:
        return read_json(self.path / METRICS)

    def completed(self) -> bool:
        m = self.metrics()
        return bool(m) and m.get("status") == "completed"

    # .hpctune-interrupted: stopped with a checkpoint; launch.sh / the launcher continue the job
    def write_interrupted(self, global_step: int, reason: str, checkpoint: str | Path | None,
                          phase: str = "training", detail: str = "") -> Path:
        """The marker the host side reads: the run stopped on a signal and continues from
        ``checkpoint``. ``phase``: ``training`` (a checkpoint was just saved) or ``startup``
        (the signal came before the first optimizer step: nothing new to save)."""
        data = {"global_step": global_step, "reason": reason,
                "checkpoint": str(checkpoint) if checkpoint else None, "time": time.time(), "phase": phase}
        if detail:
            data["detail"] = detail
        return write_json(self.path / INTERRUPTED, data, indent=None)

    def clear_interrupted(self) -> None:
        try:
            (self.path / INTERRUPTED).unlink()
        except FileNotFoundError:
            pass

    def interrupted(self) -> dict | None:
        """The marker's content ({} if unreadable), or None when there is none."""
        p = self.path / INTERRUPTED
        data = read_json(p)
        return data if data is not None else ({} if p.exists() else None)

    # checkpoints and their completion marker
    def checkpoints(self) -> list[Path]:
        """Every ``checkpoint-N`` folder, oldest first."""
        try:
            found = [p for p in self.path.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir()]
        except OSError:
            return []
        return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))

    @staticmethod
    def mark_complete(checkpoint: Path, global_step: int) -> None:
        write_json(Path(checkpoint) / COMPLETE, {"global_step": global_step, "time": time.time()}, indent=None)


# --- the run folder, seen from the login side ---------------------------------------------

class RunFolder:
    """A run folder (bundle): its manifest, recipe, logs and output, by name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def is_run_folder(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> Manifest:
        """manifest.json (typed); an unreadable one reads as defaults (folder/output)."""
        return Manifest.from_dict(read_json(self.path / MANIFEST) or {}, self.path)

    @property
    def output(self) -> Output:
        return Output(self.manifest().output_dir)

    def recipe(self):
        """recipe.yaml as a typed Recipe (ConfigError naming the file if it no longer loads)."""
        from hpctune import recipe as recipe_mod
        from hpctune import yamlfile
        return recipe_mod.parse(yamlfile.read(self.path / RECIPE), str(self.path / RECIPE))

    # logs/events.jsonl and logs/attempts.jsonl
    def events(self) -> list[dict]:
        return read_jsonl(self.path / EVENTS)

    def append_event(self, event: str, **data) -> None:
        append_jsonl(self.path / EVENTS, {"event": event, "time": round(time.time(), 3),
                                          "host": socket.gethostname(), **data})

    def cancel_requested(self) -> bool:
        return any(ev.get("event") == "cancel_requested" for ev in self.events())

    def attempts(self) -> list[dict]:
        return read_jsonl(self.path / ATTEMPTS)

    # logs/node-<job>-<node>.out
    def node_logs(self, job_order: list[str] = (), node: int | None = None) -> list[Path]:
        """Per-node output files, oldest job first (``job_order``), then by node."""
        pat = re.compile(r"node-(\w+)-(\d+)\.out")
        try:
            entries = list((self.path / LOGS).iterdir())
        except OSError:
            return []
        order = {jid: i for i, jid in enumerate(job_order)}
        found = []
        for p in entries:
            m = pat.fullmatch(p.name)
            if m and (node is None or int(m.group(2)) == node):
                found.append((order.get(m.group(1), len(order)), m.group(1), int(m.group(2)), p))
        found.sort(key=lambda t: (t[0], int(t[1]) if t[1].isdigit() else -1, t[2]))
        return [t[3] for t in found]

    def submitit_logs(self) -> list[Path]:
        return sorted((self.path / SUBMITIT).glob("*.out"))

    # the local supervisor's files
    def local_supervisor(self) -> dict | None:
        return read_json(self.path / LOCAL_SUPERVISOR)

    def local_exit(self) -> dict | None:
        return read_json(self.path / LOCAL_EXIT)

    def write_local_supervisor(self, pid: int, host: str) -> None:
        write_json(self.path / LOCAL_SUPERVISOR, {"pid": pid, "host": host, "started": time.time()}, indent=None)

    def write_local_exit(self, exit_code: int | None, cancelled: bool) -> None:
        write_json(self.path / LOCAL_EXIT, {"exit_code": exit_code, "cancelled": cancelled, "ended": time.time()},
                   indent=None)

    # run.json: the registry record's copy
    def write_record(self, text: str) -> None:
        atomic_write(self.path / RUN_FILE, text)


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
