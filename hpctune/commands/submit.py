"""``hpctune submit``: render, check, submit (Slurm through submitit, or this machine)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from hpctune.commands._options import job_options


@click.command("submit")
@job_options
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: the profile's runs_dir/RUN-ID).")
@click.option("--dry-run", is_flag=True, help="Render and show what would be submitted; submit and register nothing.")
@click.option("--wait", is_flag=True, help="Stay and show progress (queued, nodes, step N of M) until the run ends.")
@click.option("--force", is_flag=True, help="Submit even if a check or the memory plan says no (recorded in the run).")
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
    from hpctune import render, runs
    from hpctune.errors import RunError
    from hpctune.prepare import prepare

    # Every rule of `hpctune check`, the memory plan included; errors stop here unless --force.
    prep = prepare(cluster, recipe, overrides)
    if not force:
        prep.raise_errors()
    job, forced = prep.job, prep.errors
    for finding in prep.findings:
        label = "forced past" if finding.severity == "error" else "warning"
        click.echo(f"{label}: {finding.as_error()}", err=True)
    now = time.time()
    run_id = runs.new_id(job.recipe.name, now)
    bundle = (Path(output) if output else Path(job.profile.runs_dir) / run_id).expanduser().absolute()
    if (bundle / runs.RUN_FILE).exists():
        raise RunError(f"{bundle} already holds a submitted run; choose another folder with -o")
    created = not bundle.exists()
    bundle = render.write_bundle(job, bundle, tuple(overrides))
    slurm = job.profile.scheduler == "slurm"
    kind = {"NO": "one process", "MULTI_GPU": "DDP"}.get(job.distributed_type, job.distributed_type)
    shape = (f"{job.nodes} node(s) x {job.procs_per_node} process(es), {kind}"
             + (f" ZeRO-{job.recipe.deepspeed.zero_stage}" if job.uses_deepspeed else ""))

    if dry_run:
        click.echo(f"Dry run: nothing submitted or registered. Run folder written: {bundle}/")
        if slurm:
            from hpctune.dispatch import slurm as slurm_dispatch
            click.echo(f"submitit would submit ({shape}, one launcher per node running {bundle}/launch.sh):")
            click.echo(slurm_dispatch.submission_script(job, bundle, run_id).rstrip())
            click.echo(f"Or by hand: sbatch {bundle}/job.sbatch")
        else:
            click.echo(f"Would run on this machine ({shape}): bash {bundle}/launch.sh")
        return

    try:
        if slurm:
            from hpctune.dispatch import slurm as slurm_dispatch
            job_id = slurm_dispatch.submit(job, bundle, run_id)
            local_info = None
        else:
            from hpctune.dispatch import local as local_dispatch
            job_id = None
            pid = local_dispatch.start(bundle, run_id)
            local_info = {"host": _hostname(), "pid": pid}
    except Exception:
        if created:
            shutil.rmtree(bundle, ignore_errors=True)
        raise

    rec = job.recipe
    run = runs.Run(
        id=run_id, cluster=job.profile.name, recipe=rec.name, bundle=str(bundle),
        output_dir=_output_dir(bundle), scheduler=job.profile.scheduler, nodes=job.nodes,
        procs_per_node=job.procs_per_node, submitted=now, cluster_file=job.profile.source,
        recipe_file=str(Path(rec.source).absolute()) if rec.source else "",
        partition=job.partition.name if job.partition else None, time_limit=job.time_slurm,
        preemption=job.profile.preemption.mode, max_attempts=job.profile.preemption.max_attempts,
        max_steps=rec.training.max_steps if rec.training.max_steps > 0 else None,
        submitted_from=runs.whoami(), jobs=[job_id] if job_id else [], local=local_info,
        state="PENDING" if slurm else "RUNNING", state_time=now,
        forced=[str(f.as_error()) for f in forced])
    runs.save(run)
    runs.append_event(bundle, "submitted", job_id=job_id, attempt=1)
    if forced:
        runs.append_event(bundle, "forced", findings=run.forced)

    where = f"Slurm job {job_id}" if slurm else f"this machine, pid {local_info['pid']}"
    click.echo(f"Submitted run {run_id} ({where})")
    part = f", partition {job.partition.name}" if job.partition else ""
    click.echo(f"  {job.profile.name}{part}: {shape}" + (f", time limit {job.time_slurm}" if slurm else ""))
    click.echo(f"  run folder: {bundle}/")
    if not wait:
        click.echo(f"  hpctune status {run_id}   hpctune logs {run_id} -f   hpctune cancel {run_id}")
        return

    from hpctune.commands.status import follow

    try:
        st, prog = follow(run)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the run goes on: hpctune status {run_id}", err=True)
        raise SystemExit(130) from None
    if st.state != "COMPLETED":
        raise RunError(f"run {run_id} ended {st.state}" + (f" ({st.detail})" if st.detail else "")
                       + f": see `hpctune logs {run_id}`")
    out = Path(run.output_dir)
    click.echo(f"Done: {prog.describe() or 'finished'}; adapter and metrics.json in {out}/")


def _output_dir(bundle: Path) -> str:
    import json
    try:
        return json.loads((bundle / "manifest.json").read_text())["output_dir"]
    except (OSError, ValueError, KeyError):
        return str(bundle / "output")


def _hostname() -> str:
    import socket
    return socket.gethostname()
