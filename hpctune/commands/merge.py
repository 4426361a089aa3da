"""``hpctune merge``: merge a trained LoRA adapter into its base model (CPU, no DeepSpeed)."""

from __future__ import annotations

import click


@click.command("merge")
@click.argument("source", metavar="ADAPTER_DIR_OR_RUN", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder to write the merged model (safetensors) and tokenizer into.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto",
              show_default=True, help="dtype of the merged weights (auto: the recipe's model dtype; "
              "QLoRA: its compute dtype, the base is loaded unquantized).")
def command(source, output, dtype):
    """Merge the LoRA adapter of a finished run into its base model.

    \b
    ADAPTER_DIR_OR_RUN is a run folder (with recipe.yaml; its output folder holds
    the adapter) or an adapter folder (adapter_config.json). Runs on CPU in this
    process; it refuses to run under a distributed launch or DeepSpeed, where
    merging is unsupported. Needs CPU memory for the whole base model.

    \b
    Examples:
      hpctune merge hpctune-runs/tiny-sft-local -o merged/tiny
      hpctune merge runs/l70b/output/checkpoint-500 -o merged/l70b-step500 --dtype bfloat16
    """
    from hpctune.train import merge

    info = merge.merge(source, output, dtype=dtype)
    click.echo(f"Merged {info['adapter']} into {info['base']} ({info['dtype']}): {info['output']}")
