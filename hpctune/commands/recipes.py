"""``hpctune recipes``: list the shipped recipes, or show one resolved."""

from __future__ import annotations

import click


@click.group("recipes", invoke_without_command=True)
@click.pass_context
def command(ctx):
    """List the shipped recipes (use them by name or copy one as a start).

    \b
    Examples:
      hpctune recipes
      hpctune recipes show falcon-180b-lora-zero3 --set training.learning_rate=2e-4
      hpctune recipes fields          # every recipe field with its meaning
    """
    if ctx.invoked_subcommand is not None:
        return
    from hpctune import recipe, resources
    rows = [("NAME", "TASK", "METHOD", "ZeRO", "NODES", "DESCRIPTION")]
    for path in sorted(resources.recipes_dir().glob("*.yaml")):
        r = recipe.load(str(path))
        rows.append((r.name, r.task, r.method.type, str(r.deepspeed.zero_stage), str(r.layout.nodes), r.description))
    from hpctune.textui import table
    click.echo(table(rows))


@command.command("show")
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field (repeatable).")
def show(recipe_name, overrides):
    """Print a recipe with every default filled in and overrides applied."""
    from hpctune import recipe
    click.echo(recipe.to_yaml(recipe.load(recipe_name, overrides)).rstrip())


@command.command("fields")
def fields():
    """Every recipe field: name, type and meaning."""
    from hpctune import recipe, schema
    for name, typ, text in schema.field_docs(recipe.Recipe):
        if name != "source":
            click.echo(f"{name:45s} {typ:28s} {text}")
