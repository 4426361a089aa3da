"""``hpctune cancel RUN``: stop a run (every Slurm job it has, or the local process tree)."""

from __future__ import annotations

import time

import click


@click.command("cancel")
@click.argument("run_ref", metavar="RUN")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting (up to 60 s) for the run to stop.")
def command(run_ref, no_wait):
    """Cancel RUN.

    \b
    Records the request in the run folder first (so that a job being preempted at the
    same moment is not resubmitted), then runs scancel on every job of the run (or stops
    a local run's whole process tree) and waits until Slurm reports it ended.
    """
    from hpctune.errors import RunError
    from hpctune.run import backends, registry

    run = registry.find(run_ref)
    before = backends.status(run)
    if before.done:
        click.echo(f"Run {run.id} already ended: {before.state}")
        return
    backends.cancel(run)
    if no_wait:
        click.echo(f"Cancel requested for run {run.id}")
        return
    deadline = time.monotonic() + 60
    st = backends.status(run)
    while not st.done and time.monotonic() < deadline:
        time.sleep(0.5)
        st = backends.status(run)
    registry.cache_state(run, st.state)
    if not st.done:
        raise RunError(f"run {run.id} is still {st.state} 60 s after the cancel request (see `hpctune status {run.id}`)")
    click.echo(f"Cancelled run {run.id}: {st.state}" + (f" (Slurm job {st.job_id})" if st.job_id else ""))
