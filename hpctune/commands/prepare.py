"""``hpctune prepare``: fill the profile's shared cache once, on a login or transfer node."""

from __future__ import annotations

import os

import click

from hpctune.commands._options import job_options


@click.command("prepare")
@job_options
@click.option("--no-ops", is_flag=True, help="Do not pre-build DeepSpeed's just-in-time ops.")
def command(cluster, recipe, overrides, no_ops):
    """Fetch and pre-build everything RECIPE's jobs need on CLUSTER, once, before submitting.

    \b
    Run it on a login or transfer node that reaches the internet. It
    - downloads the model and tokenizer, and the dataset, into the profile's
      cache.hf_home in the hub's own cache layout (offline nodes then load them
      by hub id with HF_HUB_OFFLINE=1);
    - tokenizes the dataset once into HF_HOME/hpctune-tokenized/, which every
      rank of every job reads instead of tokenizing inside the allocation;
    - pre-builds the DeepSpeed ops the recipe compiles just in time (cpu_adam
      for optimizer offload, ...) into the shared extensions folder.
    Gated models need a token: export HF_TOKEN (or run `huggingface-cli login`)
    in this shell; hpctune reads it from there and never writes it anywhere.

    \b
    Examples:
      export HF_TOKEN=hf_...          # for gated models such as Llama-2
      hpctune prepare -c mysite llama2-70b-lora-zero3
      hpctune prepare -c mysite recipes/my.yaml --set layout.nodes=2
    """
    from pathlib import Path

    from hpctune.job import resolved_recipe
    from hpctune.prepare import prepare
    from hpctune.train import fetch

    job = prepare(cluster, recipe, overrides).raise_errors().job
    prof = job.profile
    hf_home = fetch.require_cache(prof)
    # This process reads and writes the profile's cache, as the nodes will.
    os.environ["HF_HOME"] = str(hf_home)
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ.pop("HF_DATASETS_CACHE", None)
    rec = resolved_recipe(job)
    click.echo(f"Preparing {rec.name} for {prof.name} in {hf_home}"
               + (" (offline: reading the cache only)" if fetch._offline() else ""))
    model_path, line = fetch.fetch_model(rec)
    click.echo(line)
    click.echo(fetch.fetch_dataset(rec))
    click.echo(fetch.tokenize_dataset(rec, model_path))
    if not no_ops:
        for line in fetch.prebuild_ops(job, Path(prof.cache.extensions())):
            click.echo(line)
    off = "the nodes run offline (HF_HUB_OFFLINE=1)" if prof.network.offline else \
        "set network.offline: true if the nodes have no internet"
    click.echo(f"Done: jobs of {prof.name} read {hf_home}; {off}.")
