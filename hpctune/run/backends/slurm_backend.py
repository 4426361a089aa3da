"""The ``slurm`` backend object: what hpctune asks of Slurm, behind the backends interface.

The submitit machinery (executor, the node launcher, job arrays, squeue/sacct queries) is in
``hpctune.run.backends.slurm``, imported here only inside the methods that need it: submitit
pulls in asyncio and more (~0.1 s), which `hpctune render` and `check` (they only ask how
to start a folder by hand) should not pay.
"""

from __future__ import annotations

from pathlib import Path

from hpctune.run import folder as layout
from hpctune.run.backends import TERMINAL, Handle, RunStatus, stopped
from hpctune.slurm_request import by_job_sbatch


class SlurmBackend:
    name = "slurm"
    one_request_per_group = True  # the tasks of one job array share one resource request

    def submit(self, job, folder: Path, run_id: str) -> Handle:
        from hpctune.run.backends import slurm
        return Handle(job_id=slurm.submit(job, folder, run_id), state="PENDING")

    def submit_array(self, items, max_parallel: int | None, group_id: str, group_folder: Path) -> list[Handle]:
        from hpctune.run.backends import slurm
        return [Handle(job_id=j, state="PENDING") for j in slurm.submit_array(items, max_parallel, group_id, group_folder)]

    def dry_run_text(self, job, folder: Path, run_id: str) -> str:
        from hpctune.run.backends import slurm
        return slurm.submission_script(job, folder, run_id).rstrip()

    def dry_run_array_text(self, items, max_parallel: int | None, group_id: str, group_folder: Path) -> str:
        from hpctune.run.backends import slurm
        return slurm.array_script(items, max_parallel, group_id, group_folder).rstrip()

    def by_hand(self, folder) -> str:
        return f"sbatch {folder}/{layout.JOB_SBATCH}"

    def dry_run_lines(self, what: str, folder, text: str, job=None) -> list[str]:
        if job is not None and by_job_sbatch(job):
            return [f"sbatch would submit {folder}/{layout.JOB_SBATCH} ({what}; pyxis: its batch script runs "
                    "on the host):", text]
        return [f"submitit would submit ({what}, one launcher per node running {folder}/{layout.LAUNCH}):", text,
                f"Or by hand: {self.by_hand(folder)}"]

    def status(self, run) -> RunStatus:
        from hpctune.run.backends import slurm
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
        return stopped(run, st)

    def states(self, runs) -> tuple[dict, list]:
        """One squeue/sacct query for all of them; the full view only for the few that ended."""
        from hpctune.run.backends import slurm
        current = {r.id: (r.job_ids() or [None])[-1] for r in runs}
        q = slurm.query([j for j in current.values() if j])
        states = {}
        for r in runs:
            info = q.jobs.get(current[r.id])
            if info is not None and info.state not in TERMINAL:
                states[r.id] = info.state
            else:  # ended, or unknown to Slurm: cancel requests, stopped runs, the run folder
                states[r.id] = self.status(r).state
        return states, [q.note] if q.note else []

    def cancel(self, run) -> None:
        from hpctune.run.backends import slurm
        slurm.cancel_jobs(run.job_ids())


BACKEND = SlurmBackend()
