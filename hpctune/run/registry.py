"""The runs registry: plain files, no server, safe on a shared filesystem; and the training
progress of a run, read from what the training writes.

- ``$HPCTUNE_HOME/runs/<run-id>.json`` (default ``~/.hpctune/runs``): one small JSON record per
  run, written once by the submit service (atomically: a temporary file, then ``rename``)
  and afterwards only rewritten to cache the last state seen. Home directories are shared
  between login nodes on HPC sites, so every login node sees the same registry. Set
  ``HPCTUNE_HOME`` to move it (e.g. to a project folder shared by a team).
- The run folder (hpctune.run.folder) is the durable record of what happened; the registry
  entry points at it and a copy is kept in it as ``run.json``.

Nothing is locked: a state cached by two ``hpctune status`` calls at once can only lose a
cache line, never an event, because events are never rewritten. States always come from a
backend (hpctune.run.backends): Slurm, or the local supervisor's files.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpctune.errors import RunError
from hpctune.run import folder as layout
from hpctune.run import records
from hpctune.run.folder import RunFolder

HOME_ENV = "HPCTUNE_HOME"


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
    scheduler: str                      # "slurm" or "local": the backend's name
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

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.bundle)

    @property
    def output(self) -> layout.Output:
        return layout.Output(self.output_dir)

    # --- what the run folder records ---------------------------------------------------
    def events(self) -> list[dict]:
        return self.folder.events()

    def attempts(self) -> list[dict]:
        return self.folder.attempts()

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
        # Only job ids, whatever a run folder's files hold: they become scancel's arguments.
        return [j for j in out if records.job_id_ok(j)]

    def current_job(self) -> str:
        """The Slurm job now carrying the run; 'local' for a run on this machine."""
        return (self.job_ids() or ["local" if self.local is not None else ""])[-1]

    def cancel_requested(self) -> bool:
        return self.folder.cancel_requested()

    def training_completed(self) -> bool:
        """metrics.json says the training completed (it also exists after an interruption)."""
        return self.output.completed()

    def interrupted(self) -> dict | None:
        """The training's interruption marker (a checkpoint was saved; not finished)."""
        return self.output.interrupted()

    def node_logs(self, node: int | None = None) -> list[Path]:
        return self.folder.node_logs(self.job_ids(), node)


def _add(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def append_event(bundle: str | Path, event: str, **data) -> None:
    """Append one event line to the run folder (one write: safe with O_APPEND)."""
    RunFolder(bundle).append_event(event, **data)


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


def to_json(run: Run) -> str:
    return json.dumps(asdict(run), indent=2, sort_keys=True) + "\n"


def from_dict(data: dict, source: str = "") -> Run:
    """A Run from a record, every field checked (records.RecordError names the bad one)."""
    return Run(**records.check(data, source))


def save(run: Run, *, bundle_copy: bool = True) -> None:
    """Write the registry entry (and the run folder's ``run.json``)."""
    text = to_json(run)
    layout.atomic_write(registry_dir() / f"{run.id}.json", text)
    if bundle_copy and run.path.is_dir():
        run.folder.write_record(text)


def cache_state(run: Run, state: str) -> None:
    """Remember the last state seen (a cache for ``hpctune runs``; never authoritative)."""
    if state not in records.STATES:  # a state this version does not know is cached as UNKNOWN,
        state = "UNKNOWN"            # so that the record stays valid (records.check)
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
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise records.RecordError(str(path), "", f"cannot read: {e.strerror or e.__class__.__name__}") from None
    except (ValueError, RecursionError) as e:
        raise records.RecordError(str(path), "", f"not a run record (not valid JSON: {str(e)[:80]})") from None
    return from_dict(data, str(path))


def scan() -> tuple[list[Run], list[RunError]]:
    """(every registered run, oldest first; the records that are not valid, each named)."""
    out, bad = [], []
    d = registry_dir()
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            if p.is_symlink() or not p.is_file():
                continue
            try:
                out.append(load_file(p))
            except RunError as e:
                bad.append(e)
    return sorted(out, key=lambda r: (r.submitted, r.id)), bad


def all_runs() -> list[Run]:
    """Every registered run, oldest first (records that are not valid are skipped)."""
    return scan()[0]


def find(ref: str) -> Run:
    """A run by id, unique id prefix, Slurm job id, run folder path, or ``last``."""
    ref = ref.strip()
    if not ref:
        raise RunError("no run given")
    p = Path(ref).expanduser()
    if (p / layout.RUN_FILE).is_file():
        return load_file(p / layout.RUN_FILE)
    if RunFolder(p).is_run_folder():
        return from_folder(p)
    exact = registry_dir() / f"{ref}.json"
    if re.fullmatch(r"[A-Za-z0-9_.+\-]+", ref) and exact.is_file():
        return load_file(exact)
    runs = all_runs()
    if ref in ("last", "-"):
        if not runs:
            raise RunError(f"no runs registered in {registry_dir()}")
        return runs[-1]
    if ref.isdigit():
        hits = [r for r in runs if ref in r.jobs] or [r for r in runs if ref in r.job_ids()]
        if len(hits) == 1:
            return hits[0]
    hits = [r for r in runs if r.id.startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        names = ", ".join(r.id for r in hits[:5])
        raise RunError(f"{ref!r} matches {len(hits)} runs ({names}{', ...' if len(hits) > 5 else ''}): give more of the id")
    raise RunError(f"no run {ref!r} in {registry_dir()} (see `hpctune runs`; a run folder path or Slurm job id works too)")


def from_folder(bundle: Path) -> Run:
    """A run folder that was never registered (rendered, then `sbatch RUN/job.sbatch` by
    hand): its jobs are the ones launch.sh recorded in logs/attempts.jsonl; how it behaves
    comes from its manifest (folders from 0.1.0: from the profile it names, else defaults)."""
    folder = RunFolder(Path(bundle).absolute())
    m = folder.manifest()
    mode, attempts = m.preemption_mode, m.max_attempts
    if mode is None or attempts is None:
        mode, attempts = _preemption_of(m)
    return _checked(folder, id=folder.path.name, cluster=m.cluster, recipe=m.recipe, bundle=str(folder.path),
               output_dir=m.output_dir, scheduler=m.scheduler, nodes=m.nodes, procs_per_node=m.processes_per_node,
               submitted=(folder / layout.MANIFEST).stat().st_mtime, cluster_file=m.cluster_file or "",
               recipe_file=m.recipe_file or "", partition=m.partition, time_limit=m.time,
               submitted_from="(not submitted by hpctune)", max_attempts=attempts, preemption=mode,
               max_steps=m.max_steps)


def _checked(folder: RunFolder, **fields_) -> Run:
    """A Run built from a run folder's manifest, checked like a registry record."""
    try:
        return Run(**records.check(fields_, str(folder / layout.MANIFEST)))
    except records.RecordError:
        raise
    except TypeError as e:
        raise records.RecordError(str(folder / layout.MANIFEST), "", f"not a run folder's manifest ({e})") from None


def _preemption_of(m: layout.Manifest) -> tuple[str, int]:
    """A 0.1.0 manifest does not say how the run behaves: ask the profile it was rendered for."""
    from hpctune import profile as profile_mod
    from hpctune.errors import ConfigError
    for ref in (m.cluster_file, m.cluster):
        if not ref:
            continue
        try:
            prof = profile_mod.load(ref)
        except ConfigError:
            continue
        return prof.preemption.mode, prof.preemption.max_attempts
    return "none", 1


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


def progress(run: Run) -> Progress:
    """Training step N of M, from (best first) metrics.json (finished), progress.json (the
    training rewrites it at every logging step) or, for runs that predate progress.json, the
    newest checkpoint's trainer_state.json. No log is scraped."""
    out = run.output
    metrics = out.metrics()
    if metrics and metrics.get("status") == "completed":
        step = _int(_first(metrics, "optimizer_steps", "global_step"))
        return Progress(step=step, max_steps=step or run.max_steps, loss=_float(_first(metrics, "train_loss", "loss")),
                        finished=True, source=layout.METRICS)
    best = Progress(max_steps=run.max_steps)
    prog = out.progress()
    if prog:
        best = Progress(step=_int(_first(prog, "step", "global_step")),
                        max_steps=_int(prog.get("max_steps")) or run.max_steps,
                        loss=_float(prog.get("loss")), source=layout.PROGRESS)
    ckpts = out.checkpoints()
    if ckpts:
        state = layout.read_json(ckpts[-1] / "trainer_state.json") or {}
        step = _int(state.get("global_step"))
        if step is not None and (best.step is None or step > best.step):
            losses = [h["loss"] for h in state.get("log_history", []) if isinstance(h, dict) and "loss" in h]
            best = Progress(step=step, max_steps=_int(state.get("max_steps")) or run.max_steps,
                            loss=_float(losses[-1]) if losses else None, source=f"{ckpts[-1].name}/trainer_state.json")
    return best


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
