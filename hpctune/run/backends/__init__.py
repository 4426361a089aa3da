"""Where a run bundle runs: ``slurm`` (submitit, one launcher per node) or ``local`` (this
machine). Both start the bundle's ``launch.sh``; this module gives one view of a run's
state, whichever ran it.

``hpctune.dispatch.slurm`` imports submitit; nothing here imports torch & co.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpctune import runs

# Slurm states after which a job will not run again by itself.
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "STOPPED"}


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


def status(run: runs.Run) -> RunStatus:
    if run.scheduler == "local":
        return _local_status(run)
    return _slurm_status(run)


def _local_status(run: runs.Run) -> RunStatus:
    from hpctune.dispatch import local

    state, detail = local.state(run)
    st = RunStatus(state=state, nodes=(run.local or {}).get("host", ""), detail=detail,
                   attempts=len(run.attempts()))
    return _stopped(run, st)


def _slurm_status(run: runs.Run) -> RunStatus:
    from hpctune.dispatch import slurm

    jobs = run.job_ids()
    current = jobs[-1] if jobs else None
    q = slurm.query([current] if current else [])
    st = RunStatus(state="UNKNOWN", job_id=current, attempts=len(run.attempts()))
    if q.note:
        st.notes.append(q.note)
    info = q.jobs.get(current) if current else None
    if info is not None:
        st.state, st.nodes, st.reason = info.state, info.nodes, info.reason
        if st.state == "COMPLETING":
            st.state = "RUNNING"
            st.detail = "completing"
        if info.state not in ("COMPLETED",) and info.exit_code and info.exit_code != "0:0":
            st.detail = f"exit code {info.exit_code}"
    else:
        # Slurm no longer knows the job (or cannot be asked): say what the run folder shows.
        if run.training_completed():
            st.state = "COMPLETED"
            st.detail = "from the run folder (metrics.json); Slurm no longer reports this job"
        elif run.cancel_requested():
            st.state = "CANCELLED"
        else:
            st.detail = "Slurm does not report this job" + ("" if q.note else " (purged from accounting?)")
    if st.done and run.cancel_requested():
        st.state = "CANCELLED"
    return _stopped(run, st)


def _stopped(run: runs.Run, st: RunStatus) -> RunStatus:
    """A job that ended 'COMPLETED' while the training was interrupted (no attempt left, or
    preemption mode none) stopped with a checkpoint: say so instead of COMPLETED."""
    if st.state == "COMPLETED":
        marker = run.interrupted()
        if marker is not None and not run.training_completed():
            st.state = "STOPPED"
            step = marker.get("global_step")
            st.detail = ("interrupted with a checkpoint" + (f" at step {step}" if step is not None else "")
                         + f" after {st.attempts} attempt(s); `sbatch {run.bundle}/job.sbatch` continues it")
    return st


def cancel(run: runs.Run) -> None:
    """Record the request in the run folder, then cancel (every job of the run)."""
    runs.append_event(run.bundle, "cancel_requested", by=runs.whoami())
    if run.scheduler == "local":
        from hpctune.dispatch import local
        local.cancel(run)
        return
    from hpctune.dispatch import slurm
    slurm.cancel(run.job_ids())
