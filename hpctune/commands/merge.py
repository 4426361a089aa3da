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
@click.option("--into", type=click.Choice(["original", "dequantized"]), default="original", show_default=True,
              help="QLoRA runs: merge into the original base weights, or into the dequantized 4-bit weights "
              "the adapter was trained against (the base quantized as the run did).")
def command(source, output, dtype, into):
    """Merge the LoRA adapter of a finished run into its base model.

    \b
    ADAPTER_DIR_OR_RUN is a run folder (with recipe.yaml; its output folder holds
    the adapter) or an adapter folder (adapter_config.json). Runs on CPU in this
    process; it refuses to run under a distributed launch or DeepSpeed, where
    merging is unsupported. Needs CPU memory for the whole base model in the
    merge dtype: checked first, from the model's config.

    \b
    Examples:
      hpctune merge hpctune-runs/tiny-sft-local -o merged/tiny
      hpctune merge runs/l70b/output/checkpoint-500 -o merged/l70b-step500 --dtype bfloat16
    """
    from hpctune.train import merge

    info = merge.merge(source, output, dtype=dtype, into=into)
    click.echo(f"Merged {info['adapter']} into the {info['base_weights']} ({info['dtype']}): {info['output']}")
