"""``hpctune train``: run the training of a recipe on this machine (what every node runs)."""

from __future__ import annotations

import click


@click.command("train")
@click.argument("recipe", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Only run the checks that come before training (model, LoRA "
              "target modules, dataset, versions) and exit.")
def command(recipe, check):
    """Train RECIPE.yaml (LoRA/QLoRA SFT with TRL) in this process.

    \b
    Normally started for you on every node by a run bundle's launch.sh:
      accelerate launch --config_file BUNDLE/accelerate_config.yaml ... \\
        --module hpctune.train BUNDLE/recipe.yaml
    Every setting comes from RECIPE.yaml (a relative training.output_dir is inside
    the recipe's folder). A run continues from the newest complete checkpoint in
    its output folder; on SIGUSR2/SIGTERM it saves a checkpoint and exits 0.
    Bad input stops it before training with exit code 2.

    \b
    Examples:
      hpctune train runs/tiny/recipe.yaml
      hpctune train --check runs/l70b/recipe.yaml
    """
    from hpctune.train import dist, run

    if check:
        info = run.check(recipe)
        click.echo(f"{recipe}: ok ({info['train_rows']} train rows, {info['eval_rows']} eval rows, "
                   f"model {info['model_path']})")
        return
    code = run.main(recipe)
    dist.shutdown()
    if code:
        raise SystemExit(code)
