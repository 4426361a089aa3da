"""``hpctune render``: write a self-contained run bundle without submitting anything."""

from __future__ import annotations

from pathlib import Path

import click

from hpctune.commands._options import job_options


@click.command("render")
@job_options
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Run folder to write (default: the profile's runs_dir/RECIPE-CLUSTER).")
@click.option("--force", is_flag=True, help="Replace the run folder if it holds an earlier render that was never "
              "submitted (a folder that holds a run is never replaced).")
def command(cluster, recipe, overrides, output, force):
    """Render the files that run RECIPE on CLUSTER into a run folder.

    \b
    Writes job.sbatch, launch.sh, accelerate_config.yaml, the resolved recipe.yaml and
    manifest.json. Same inputs give byte-identical files. Submit by hand with
    `sbatch DIR/job.sbatch`, or use `hpctune submit`.

    \b
    Examples:
      hpctune render -c example-h100 recipes/llama2-70b-lora-zero3.yaml -o runs/l70b
      hpctune render -c example-a100-80g falcon-180b-lora-zero3 --set layout.time=12:00:00
      hpctune render -c local tiny-sft --set layout.gpus_per_node=2 --set deepspeed.zero_stage=3 -o /tmp/t
    """
    from hpctune import render
    from hpctune.prepare import prepare
    from hpctune.run import backends

    prep = prepare(cluster, recipe, overrides).raise_errors()
    job = prep.job
    bundle = Path(output) if output else Path(job.profile.runs_dir) / f"{job.recipe.name}-{job.profile.name}"
    bundle = render.write_bundle(job, bundle, tuple(overrides), force=force)
    for finding in prep.warnings:
        click.echo(f"warning: {finding.as_error()}", err=True)
    from hpctune.rules.site import run_folder_warnings
    for why in run_folder_warnings(str(bundle), job.profile):  # the folder the nodes must read (D18)
        click.echo(f"warning: -o/--output: {why}", err=True)
    click.echo(f"Rendered {job.recipe.name} on {job.profile.name}: {job.nodes} node(s) x "
               f"{job.procs_per_node} process(es), {job.distributed_type}"
               + (f" ZeRO-{job.recipe.deepspeed.zero_stage}" if job.uses_deepspeed else ""))
    click.echo(f"  {bundle}/")
    for name in render.BUNDLE_FILES:
        click.echo(f"    {name}")
    click.echo(f"Start it by hand: {backends.get(job.profile.scheduler).by_hand(bundle)}")
