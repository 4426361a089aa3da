"""Options shared by the commands that take a cluster and a recipe."""

from __future__ import annotations

import click

cluster_option = click.option(
    "-c", "--cluster", required=True, metavar="CLUSTER",
    help="Cluster profile: a name (see `hpctune clusters`) or a path to a .yaml file.")
recipe_argument = click.argument("recipe", metavar="RECIPE")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set training.learning_rate=2e-4 --set layout.nodes=4 (repeatable).")


def job_options(fn):
    """-c CLUSTER RECIPE [--set K=V ...]"""
    return cluster_option(recipe_argument(set_option(fn)))
