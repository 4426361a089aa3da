"""``hpctune sweep``: a grid of runs, checked first, submitted as one Slurm job array."""

from __future__ import annotations

import time

import click

from hpctune.commands._options import job_options


@click.command("sweep")
@job_options
@click.option("--grid", "grid", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="A recipe field and its values, e.g. --grid training.learning_rate=1e-4,2e-4 (repeatable: "
                   "one run per combination). Values are parsed like --set values.")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None,
              help="Run at most N combinations at once (Slurm: the array's %N; local: default 1).")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Sweep folder (default: the profile's runs_dir/SWEEP-ID); one run folder per combination inside.")
@click.option("--dry-run", is_flag=True, help="Check and render every combination and show the array; submit and register nothing.")
@click.option("--wait", is_flag=True, help="Stay until every run has ended; print the table of losses.")
def command(cluster, recipe, overrides, grid, max_parallel, output, dry_run, wait):
    """Run RECIPE once per combination of --grid values, as ONE Slurm job array.

    \b
    Every combination is resolved and checked (as `hpctune check` would, memory plan
    included) before anything is written: one bad combination stops the sweep with
    a one-line message naming it (exit 2), and nothing is submitted. The combinations
    must ask for the same resources (nodes, GPUs, CPUs, memory, time): put layout
    values in --set. Each combination becomes a run of its own (own run folder, output,
    resume and metrics.json) tagged with the sweep id; `hpctune runs --sweep ID` shows
    them side by side with their final losses. `-c local` runs them on this machine,
    --max-parallel at a time (default one after another).

    \b
    Examples:
      hpctune sweep -c mysite tiny-sft --grid training.learning_rate=1e-4,2e-4 --grid method.lora_r=8,16
      hpctune sweep -c example-h100 recipes/llama2-70b-lora-zero3.yaml \\
          --grid training.learning_rate=5e-5,1e-4,2e-4 --max-parallel 2 --dry-run
      hpctune sweep -c local tiny-sft --grid method.lora_r=4,8 --set training.max_steps=20 --wait
      hpctune runs --sweep tiny-sft-sweep-20261122-031447-248a
    """
    from hpctune import sweep as sweep_mod
    from hpctune.run import backends

    t0 = time.perf_counter()
    sw = sweep_mod.plan(cluster, recipe, grid, overrides)
    for text in sw.warnings:
        click.echo(f"warning: {text}", err=True)
    folder = sweep_mod.render(sw, output)
    n = len(sw.combinations)
    job = sw.combinations[0].job
    part = f", partition {job.partition.name}" if job.partition else ""
    shape = f"{job.nodes} node(s) x {job.procs_per_node} process(es){part}"
    checked = f"{n} combination(s) checked and rendered in {time.perf_counter() - t0:.2f} s"

    if dry_run:
        click.echo(f"Dry run: nothing submitted or registered. {checked}; sweep folder written: {folder}/")
        for c in sw.combinations:
            click.echo(f"  {c.run_id}  {c.describe()}")
        backend = backends.get(sw.profile.scheduler)
        for line in backend.dry_run_lines(f"{n} run(s) as one group, {shape} each", folder,
                                          sweep_mod.array_script(sw, max_parallel)):
            click.echo(line)
        return

    registered, array_id = sweep_mod.submit(sw, max_parallel)
    where = (f"Slurm job array {array_id}" if array_id
             else f"this machine, {max(1, min(max_parallel or 1, n))} at a time")
    click.echo(f"Submitted sweep {sw.id}: {n} run(s) ({where})")
    click.echo(f"  {checked}; {shape} each")
    for run in registered:
        jid = f"  job {run.jobs[0]}" if run.jobs else ""
        click.echo(f"  {run.id}  {', '.join(f'{k}={v}' for k, v in (run.grid or {}).items())}{jid}")
    click.echo(f"  sweep folder: {folder}/")
    if not wait:
        click.echo(f"  hpctune runs --sweep {sw.id}")
        return
    _wait(sw.id, registered)


def _wait(sweep_id: str, registered) -> None:
    from hpctune import sweep as sweep_mod
    from hpctune.errors import RunError
    from hpctune.run import watch

    try:
        seen = watch.follow_group(registered, click.echo)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the runs go on: hpctune runs --sweep {sweep_id}", err=True)
        raise SystemExit(130) from None
    for line in sweep_mod.table(registered, seen):
        click.echo(line)
    bad = [r.id for r in registered if seen[r.id] != "COMPLETED"]
    if bad:
        raise RunError(f"{len(bad)} of {len(registered)} run(s) of sweep {sweep_id} did not complete: {', '.join(bad)}")
