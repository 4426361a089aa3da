"""The runs registry: plain files, no server, safe on a shared filesystem.

Layout
------
- ``$HPCTUNE_HOME/runs/<run-id>.json`` (default ``~/.hpctune/runs``): one small JSON record per
  run, written once by ``hpctune submit`` (atomically: a temporary file, then ``rename``) and
  afterwards only rewritten to cache the last state seen. Home directories are shared
  between login nodes on HPC sites, so every login node sees the same registry. Set
  ``HPCTUNE_HOME`` to move it (e.g. to a project folder shared by a team).
- The run folder (the bundle) is the durable record of what happened; the registry entry
  points at it and a copy of the record is kept in it as ``run.json``:

  - ``logs/events.jsonl``: append-only, one JSON line per event (submitted, a Slurm job
    id handed over to a resubmission, the signal seen, requeued, cancel requested). Each
    line is written with one ``write`` of a few hundred bytes, by one writer at a time.
  - ``logs/attempts.jsonl``: one line per attempt, appended by ``launch.sh`` on node 0.
  - ``logs/node-<job>-<node>.out``: the output of each node, per Slurm job.

Nothing is locked: a state cached by two ``hpctune status`` calls at once can only lose a
cache line, never an event, because events are never rewritten. States always come from
Slurm (squeue, then sacct) or, for ``-c local`` runs, from the local supervisor's files.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hpctune.errors import RunError

HOME_ENV = "HPCTUNE_HOME"
EVENTS = "logs/events.jsonl"
ATTEMPTS = "logs/attempts.jsonl"
RUN_FILE = "run.json"
INTERRUPTED = ".hpctune-interrupted"


def home() -> Path:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".hpctune"


def registry_dir() -> Path:
    return home() / "runs"


@dataclass
class Run:
    id: str
    cluster: str
    recipe: str
    bundle: str
    output_dir: str
    scheduler: str                      # "slurm" or "local"
    nodes: int
    procs_per_node: int
    submitted: float
    cluster_file: str = ""
    recipe_file: str = ""
    partition: str | None = None
    time_limit: str = ""
    preemption: str = "none"
    max_attempts: int = 1
    max_steps: int | None = None
    submitted_from: str = ""
    jobs: list[str] = field(default_factory=list)   # Slurm job ids known at submit
    local: dict | None = None                       # {"host":, "pid":} for -c local
    state: str = "SUBMITTED"                        # cache of the last state seen
    state_time: float = 0.0
    sweep: str | None = None                        # the `hpctune sweep` this run belongs to
    grid: dict | None = None                        # its grid values ({"training.learning_rate": "1e-4"})
    forced: list[str] = field(default_factory=list)  # check errors overridden with --force

    @property
    def path(self) -> Path:
        return Path(self.bundle)

    # --- what the run folder records ---------------------------------------------------
    def events(self) -> list[dict]:
        return read_jsonl(self.path / EVENTS)

    def attempts(self) -> list[dict]:
        return read_jsonl(self.path / ATTEMPTS)

    def job_ids(self) -> list[str]:
        """Every Slurm job of this run, oldest first: the first submission, resubmissions
        (profiles whose preemption mode is ``cancel``) and any job an attempt ran in."""
        out: list[str] = []
        for jid in self.jobs:
            _add(out, jid)
        for ev in self.events():
            if ev.get("job_id") and ev.get("event") in ("submitted", "resubmitted"):
                _add(out, str(ev["job_id"]))
        # An array task ("123_4") runs under a job id of its own (SLURM_JOB_ID, what
        # launch.sh records): the array form above already names it.
        array_task = any("_" in str(j) for j in self.jobs)
        for att in ([] if array_task else self.attempts()):
            jid = str(att.get("job_id", ""))
            if jid and jid != "local":
                _add(out, jid)
        return out

    def cancel_requested(self) -> bool:
        return any(ev.get("event") == "cancel_requested" for ev in self.events())

    def training_completed(self) -> bool:
        """metrics.json says the training completed (it also exists after an interruption)."""
        data = _json(Path(self.output_dir) / "metrics.json")
        return bool(data) and data.get("status") == "completed"

    def interrupted(self) -> dict | None:
        """The training's interruption marker (a checkpoint was saved; not finished)."""
        p = Path(self.output_dir) / INTERRUPTED
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return {} if p.exists() else None


def _add(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def read_jsonl(path: Path) -> list[dict]:
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
            continue  # a line cut short by a killed writer
        if isinstance(value, dict):
            out.append(value)
    return out


def append_event(bundle: str | Path, event: str, **data) -> None:
    """Append one event line to the run folder (one write: safe with O_APPEND)."""
    record = {"event": event, "time": round(time.time(), 3), "host": socket.gethostname(), **data}
    path = Path(bundle) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def new_id(recipe_name: str, when: float | None = None) -> str:
    """``<recipe>-<YYYYmmdd-HHMMSS>-<4 hex>``: sortable, unique without a lock."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    return f"{recipe_name}-{stamp}-{secrets.token_hex(2)}"


def whoami() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def to_json(run: Run) -> str:
    return json.dumps(asdict(run), indent=2, sort_keys=True) + "\n"


def from_dict(data: dict, source: str = "") -> Run:
    known = {f.name for f in fields(Run)}
    try:
        return Run(**{k: v for k, v in data.items() if k in known})
    except TypeError as e:
        raise RunError(f"{source}: not a run record ({e})") from None


def save(run: Run, *, bundle_copy: bool = True) -> None:
    """Write the registry entry (and the run folder's ``run.json``)."""
    text = to_json(run)
    _atomic_write(registry_dir() / f"{run.id}.json", text)
    if bundle_copy and run.path.is_dir():
        _atomic_write(run.path / RUN_FILE, text)


def cache_state(run: Run, state: str) -> None:
    """Remember the last state seen (a cache for ``hpctune runs``; never authoritative)."""
    if state == run.state:
        return
    run.state = state
    run.state_time = time.time()
    try:
        save(run, bundle_copy=False)
    except OSError:
        pass


def load_file(path: Path) -> Run:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read run record {path}: {e}") from None
    return from_dict(data, str(path))


def all_runs() -> list[Run]:
    """Every registered run, oldest first (unreadable records are skipped)."""
    out = []
    d = registry_dir()
    if d.is_dir():
        for p in d.glob("*.json"):
            try:
                out.append(load_file(p))
            except RunError:
                continue
    return sorted(out, key=lambda r: (r.submitted, r.id))


def find(ref: str) -> Run:
    """A run by id, unique id prefix, Slurm job id, run folder path, or ``last``."""
    ref = ref.strip()
    if not ref:
        raise RunError("no run given")
    p = Path(ref).expanduser()
    if (p / RUN_FILE).is_file():
        return load_file(p / RUN_FILE)
    if (p / "manifest.json").is_file():
        return from_bundle(p)
    exact = registry_dir() / f"{ref}.json"
    if re.fullmatch(r"[A-Za-z0-9_.+\-]+", ref) and exact.is_file():
        return load_file(exact)
    runs = all_runs()
    if ref in ("last", "-"):
        if not runs:
            raise RunError(f"no runs registered in {registry_dir()}")
        return runs[-1]
    if ref.isdigit():
        hits = [r for r in runs if ref in r.jobs] or [r for r in runs if r.scheduler == "slurm" and ref in r.job_ids()]
        if len(hits) == 1:
            return hits[0]
    hits = [r for r in runs if r.id.startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        names = ", ".join(r.id for r in hits[:5])
        raise RunError(f"{ref!r} matches {len(hits)} runs ({names}{', ...' if len(hits) > 5 else ''}): give more of the id")
    raise RunError(f"no run {ref!r} in {registry_dir()} (see `hpctune runs`; a run folder path or Slurm job id works too)")


def from_bundle(bundle: Path) -> Run:
    """A run folder that was never registered (rendered, then `sbatch RUN/job.sbatch` by
    hand): its jobs are the ones launch.sh recorded in logs/attempts.jsonl."""
    bundle = Path(bundle).absolute()
    m = _json(bundle / "manifest.json") or {}
    layout = m.get("layout", {})
    try:
        launch = (bundle / "launch.sh").read_text()
    except OSError:
        launch = ""
    attempts = re.search(r"(?m)^MAX_ATTEMPTS=(\d+)", launch)
    mode = re.search(r"(?m)^PREEMPTION_MODE='?([a-z]+)", launch)
    return Run(id=bundle.name, cluster=(m.get("cluster") or {}).get("name", "?"),
               recipe=(m.get("recipe") or {}).get("name", "?"), bundle=str(bundle),
               output_dir=m.get("output_dir") or str(bundle / "output"),
               scheduler="slurm" if layout.get("partition") else "local",
               nodes=int(layout.get("nodes") or 1), procs_per_node=int(layout.get("processes_per_node") or 1),
               submitted=(bundle / "manifest.json").stat().st_mtime, partition=layout.get("partition"),
               time_limit=layout.get("time", ""), submitted_from="(not submitted by hpctune)",
               max_attempts=int(attempts.group(1)) if attempts else 1, preemption=mode.group(1) if mode else "none")


# --- training progress, read from what the training writes --------------------------------

@dataclass
class Progress:
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    finished: bool = False
    source: str = ""

    def describe(self) -> str:
        if self.step is None:
            return ""
        text = f"step {self.step}" + (f" of {self.max_steps}" if self.max_steps else "")
        if self.loss is not None:
            text += f", loss {self.loss:.4f}"
        return text


_TQDM = re.compile(r"(\d+)/(\d+) \[")
# transformers' PrinterCallback: {'loss': '2.345', 'grad_norm': ...} (quoted in transformers 5)
_LOSS = re.compile(r"""\{['"]loss['"]: '?([0-9.eE+-]+)""")


def progress(run: Run) -> Progress:
    """Training step N of M, from (best first) metrics.json, the trainer's progress file,
    the newest checkpoint's trainer_state.json, or the progress bar in node 0's log."""
    out = Path(run.output_dir)
    metrics = _json(out / "metrics.json")
    if metrics and metrics.get("status") == "completed":
        step = _int(_first(metrics, "optimizer_steps", "global_step"))
        return Progress(step=step, max_steps=step or run.max_steps, loss=_float(_first(metrics, "train_loss", "loss")),
                        finished=True, source="metrics.json")
    best = Progress(max_steps=run.max_steps)
    prog = _json(out / "progress.json")
    if prog:
        best = Progress(step=_int(_first(prog, "global_step", "step")),
                        max_steps=_int(_first(prog, "max_steps")) or run.max_steps,
                        loss=_float(_first(prog, "loss")), source="progress.json")
    ckpt = _newest_checkpoint(out)
    if ckpt is not None:
        state = _json(ckpt / "trainer_state.json") or {}
        step = _int(state.get("global_step"))
        if step is not None and (best.step is None or step > best.step):
            losses = [h["loss"] for h in state.get("log_history", []) if isinstance(h, dict) and "loss" in h]
            best = Progress(step=step, max_steps=_int(state.get("max_steps")) or run.max_steps,
                            loss=_float(losses[-1]) if losses else None, source=f"{ckpt.name}/trainer_state.json")
    tail = _log_tail(run)
    bar = _TQDM.findall(tail)
    if bar and (best.step is None or int(bar[-1][0]) > best.step):
        best = Progress(step=int(bar[-1][0]), max_steps=int(bar[-1][1]), loss=best.loss, source="log")
    logged = _step_from_log(tail, _logging_steps(run))
    if logged is not None and (best.step is None or logged[0] >= best.step):
        best = Progress(step=logged[0], max_steps=best.max_steps or run.max_steps, loss=logged[1], source="log")
    elif best.step is not None and best.source != "log":
        losses = _LOSS.findall(tail)
        if losses:
            best.loss = _float(losses[-1])  # newer than the checkpoint's
    return best


# hpctune.train says where each attempt starts; transformers then logs a loss every
# logging_steps optimizer steps (at multiples of it), one {'loss': ...} line each.
_START = re.compile(r"hpctune train: (?:starting|resuming from checkpoint-(\d+))")


def _step_from_log(tail: str, every: int | None) -> tuple[int, float | None] | None:
    starts = list(_START.finditer(tail))
    if not starts or not every:
        return None
    last = starts[-1]
    begin = int(last.group(1) or 0)
    losses = _LOSS.findall(tail, last.end())
    if not losses:
        return (begin, None) if begin else None
    step = (begin // every + len(losses)) * every
    return step, _float(losses[-1])


def _logging_steps(run: Run) -> int | None:
    """training.logging_steps of the run's resolved recipe (None unless logging by steps)."""
    try:
        text = (run.path / "recipe.yaml").read_text()
    except OSError:
        return None
    strategy = re.search(r"(?m)^  logging_strategy: (\S+)", text)
    if strategy and strategy.group(1).strip("'\"") != "steps":
        return None
    m = re.search(r"(?m)^  logging_steps: (\d+)", text)
    return int(m.group(1)) if m else None


def _newest_checkpoint(out: Path) -> Path | None:
    try:
        found = [p for p in out.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)]
    except OSError:
        return None
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def _log_tail(run: Run, size: int = 262144) -> str:
    logs = node_logs(run, node=0)
    if not logs:
        return ""
    try:
        with open(logs[-1], "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def node_logs(run: Run, node: int | None = None) -> list[Path]:
    """Per-node output files, oldest job first: ``logs/node-<job>-<node>.out``."""
    logs = run.path / "logs"
    pat = re.compile(r"node-(\w+)-(\d+)\.out")
    found = []
    try:
        entries = list(logs.iterdir())
    except OSError:
        return []
    order = {jid: i for i, jid in enumerate(run.job_ids())}
    for p in entries:
        m = pat.fullmatch(p.name)
        if m and (node is None or int(m.group(2)) == node):
            found.append((order.get(m.group(1), len(order)), m.group(1), int(m.group(2)), p))
    found.sort(key=lambda t: (t[0], _num(t[1]), t[2]))
    return [t[3] for t in found]


def _num(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _first(d: dict, *keys):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float(v) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
