"""Where a run runs, behind one small interface: ``slurm`` (submitit, one launcher task per
node) and ``local`` (this machine). Both start the run folder's ``launch.sh``.

A backend is chosen by name (the profile's ``scheduler``, recorded in each run as
``run.scheduler``) with ``get(name)``; nothing else in hpctune compares scheduler strings.
Every backend offers:

- ``submit(job, folder, run_id) -> Handle``: start the rendered folder;
- ``submit_array(items, max_parallel, group_id, group_folder) -> list[Handle]``: a sweep;
- ``dry_run_text(job, folder, run_id)`` / ``dry_run_array_text(...)``: what would be started;
- ``by_hand(folder)``: the command that starts the folder without hpctune;
- ``dry_run_lines(what, folder, text, job=None)``: how a dry run is shown;
- ``status(run) -> RunStatus`` and ``states(runs) -> ({run id: state}, notes)`` (one query);
- ``cancel(run)``;
- ``one_request_per_group``: whether the runs of a group must ask for the same resources.

``hpctune.run.backends.slurm`` (the submitit machinery) is imported only by the slurm
backend's methods that submit or ask Slurm; nothing here imports torch & co.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# Slurm states after which a job will not run again by itself.
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "STOPPED"}

_MODULES = {"slurm": "hpctune.run.backends.slurm_backend", "local": "hpctune.run.backends.local"}


@dataclass
class Handle:
    """What a backend returns for a started run (recorded in the registry)."""
    job_id: str | None = None       # Slurm job id (array task: "123_4")
    local: dict | None = None       # {"host":, "pid":} of the local supervisor
    state: str = "PENDING"          # the first state to cache


@dataclass
class RunStatus:
    state: str                    # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, STOPPED, ...
    job_id: str | None = None     # the Slurm job now carrying the run
    nodes: str = ""               # node list (Slurm) or host (local)
    reason: str = ""              # squeue's reason for a pending job
    detail: str = ""
    attempts: int = 0
    notes: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def get(name: str):
    """The backend called ``name`` (``slurm`` or ``local``)."""
    try:
        return importlib.import_module(_MODULES[name]).BACKEND
    except KeyError:
        raise ValueError(f"no backend {name!r} (known: {', '.join(_MODULES)})") from None


def status(run) -> RunStatus:
    return get(run.scheduler).status(run)


def cancel(run) -> None:
    """Record the request in the run folder first (a launcher resubmitting at this moment then
    stops), then let the run's backend cancel it."""
    from hpctune.run import registry
    # Only into a run folder: a record's bundle path comes from a possibly shared registry.
    if run.folder.is_run_folder():
        run.folder.append_event("cancel_requested", by=registry.whoami())
    get(run.scheduler).cancel(run)


def refresh(runs) -> tuple[dict, list]:
    """Current states of runs not known to be finished (one query per backend), cached in the
    registry; (states by run id, notes such as 'accounting is unavailable')."""
    from hpctune.run import registry
    states: dict[str, str] = {}
    notes: list[str] = []
    active = [r for r in runs if r.state not in TERMINAL]
    for name in sorted({r.scheduler for r in active}):
        mine = [r for r in active if r.scheduler == name]
        got, more = get(name).states(mine)
        states.update(got)
        notes += [n for n in more if n not in notes]
    for r in active:
        if r.id in states:
            registry.cache_state(r, states[r.id])
    return states, notes


def stopped(run, st: RunStatus) -> RunStatus:
    """A job that ended 'COMPLETED' while the training was interrupted (no attempt left, or
    preemption mode none) stopped with a checkpoint: say so instead of COMPLETED."""
    if st.state == "COMPLETED":
        marker = run.interrupted()
        if marker is not None and not run.training_completed():
            st.state = "STOPPED"
            step = marker.get("global_step")
            st.detail = ("interrupted with a checkpoint" + (f" at step {step}" if step is not None else "")
                         + f" after {st.attempts} attempt(s); `{get(run.scheduler).by_hand(run.path)}` continues it")
    return st
