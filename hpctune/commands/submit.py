"""``hpctune submit``: render, check, submit (Slurm through submitit, or this machine)."""

from __future__ import annotations

from pathlib import Path

import click

from hpctune.commands._options import job_options


@click.command("submit")
@job_options
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: the profile's runs_dir/RUN-ID).")
@click.option("--dry-run", is_flag=True, help="Render and show what would be submitted; submit and register nothing.")
@click.option("--wait", is_flag=True, help="Stay and show progress (queued, nodes, step N of M) until the run ends.")
@click.option("--force", is_flag=True, help="Submit even if a check or the memory plan says no (recorded in the run); "
              "also replace a never-submitted run folder given with -o.")
def command(cluster, recipe, overrides, output, dry_run, wait, force):
    """Render RECIPE for CLUSTER, check it, and submit it.

    \b
    On a Slurm profile the run goes through submitit: one launcher task per node runs the
    bundle's launch.sh (the same script `sbatch RUN/job.sbatch` runs). A job stopped by
    its time limit or a preemption saves a checkpoint, is requeued (or resubmitted, on
    profiles with preemption mode `cancel`) and resumes. `-c local` runs the same bundle
    on this machine.

    \b
    Examples:
      hpctune submit -c local tiny-sft --wait
      hpctune submit -c example-h100 recipes/llama2-70b-lora-zero3.yaml
      hpctune submit -c mysite recipes/llama2-70b-qlora-zero3.yaml --set layout.nodes=2 --dry-run
      hpctune submit -c mysite my-recipe.yaml --force      # past a failed check, recorded
    """
    import dataclasses

    from hpctune import rules
    from hpctune.errors import RunError
    from hpctune.prepare import prepare
    from hpctune.run import backends, submit as submit_service, watch

    # Every rule of `hpctune check`, the memory plan included; errors stop here unless --force.
    prep = prepare(cluster, recipe, overrides)
    # Warnings that `check` lets pass but a job would surely fail on (offline-cache): refused too.
    blocking = rules.submit_blocking(prep.findings)
    if not force:
        prep.raise_errors()
        rules.raise_errors([dataclasses.replace(f, severity="error", fix=f.fix + " (or submit --force)") for f in blocking])
    job, forced = prep.job, prep.errors + blocking
    for finding in prep.findings:
        label = "forced past" if finding in forced else "warning"
        click.echo(f"{label}: {finding.as_error()}", err=True)
    if output:  # runs_dir itself is judged by the rules run-folder-shared and container-mounts
        from hpctune.rules.site import run_folder_warnings
        for why in run_folder_warnings(str(Path(output).expanduser().absolute()), job.profile):
            click.echo(f"warning: run folder: {why}", err=True)  # the folder the nodes must read (D18)
    done = submit_service.submit(job, output=output, overrides=overrides, forced=forced, dry_run=dry_run,
                                 replace=force)
    kind = {"NO": "one process", "MULTI_GPU": "DDP"}.get(job.distributed_type, job.distributed_type)
    shape = (f"{job.nodes} node(s) x {job.procs_per_node} process(es), {kind}"
             + (f" ZeRO-{job.recipe.deepspeed.zero_stage}" if job.uses_deepspeed else ""))
    backend = backends.get(job.profile.scheduler)

    if dry_run:
        click.echo(f"Dry run: nothing submitted or registered. Run folder written: {done.folder}/")
        for line in backend.dry_run_lines(shape, done.folder, done.dry_run_text, job=job):
            click.echo(line)
        return

    run = done.run
    where = f"Slurm job {run.jobs[0]}" if run.jobs else f"this machine, pid {run.local['pid']}"
    click.echo(f"Submitted run {run.id} ({where})")
    part = f", partition {job.partition.name}" if job.partition else ""
    click.echo(f"  {job.profile.name}{part}: {shape}" + (f", time limit {job.time_slurm}" if run.jobs else ""))
    click.echo(f"  run folder: {done.folder}/")
    if not wait:
        click.echo(f"  hpctune status {run.id}   hpctune logs {run.id} -f   hpctune cancel {run.id}")
        return
    try:
        st, prog = watch.follow(run, click.echo)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the run goes on: hpctune status {run.id}", err=True)
        raise SystemExit(130) from None
    if st.state != "COMPLETED":
        raise RunError(f"run {run.id} ended {st.state}" + (f" ({st.detail})" if st.detail else "")
                       + f": see `hpctune logs {run.id}`")
    click.echo(f"Done: {prog.describe() or 'finished'}; adapter and metrics.json in {run.output_dir}/")
