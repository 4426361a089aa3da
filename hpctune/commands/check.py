"""``hpctune check``: every rule on a cluster + recipe (as render and submit see them), or on
an existing run folder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click


@click.command("check")
@click.option("-c", "--cluster", metavar="CLUSTER", help="Cluster profile: a name or a path to a .yaml file.")
@click.argument("target", metavar="RECIPE|RUN_DIR", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--list", "list_rules", is_flag=True, help="List every rule with its id and scope, and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
def command(cluster, target, overrides, list_rules, as_json):
    """Check RECIPE on CLUSTER against every rule before anything is submitted, or check an
    existing run folder RUN_DIR (for instance after editing it by hand).

    \b
    Rules cover the failures people hit on real clusters (ranks, launchers, gradient
    accumulation, QLoRA + ZeRO-3 dtypes, offload stages, GPU features, partition limits,
    Falcon module names, memory, ...): exactly what `render` and `submit` run. The files
    are then rendered (in memory) and read back to check them against each other.
    On RUN_DIR: the recipe rules on its recipe.yaml (what the compute node runs first)
    and the cross-file rules on its files. Exit code 2 if any error is found.

    \b
    Examples:
      hpctune check -c example-a100-40g llama2-70b-qlora-zero3
      hpctune check -c example-t4 recipes/my.yaml --set precision=fp16
      hpctune check hpctune-runs/tiny-sft-20261122-031447-248a
      hpctune check --list
    """
    from hpctune import rules

    if list_rules:
        _print_list(rules.listing(), as_json)
        return
    if not target:
        raise click.UsageError("give -c CLUSTER and RECIPE, or RUN_DIR (or --list)")
    if Path(target).is_dir():
        if cluster or overrides:
            raise click.UsageError("a run folder is checked as it is: no -c or --set with RUN_DIR")
        what, findings = _check_folder(Path(target))
    elif not cluster:
        raise click.UsageError("give -c CLUSTER with RECIPE (or a run folder)")
    else:
        what, findings = _check_recipe(cluster, target, overrides)
    errors = rules.errors(findings)
    if as_json:
        click.echo(json.dumps({"checked": what, "ok": not errors, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            click.echo(f"{f.severity.upper():8s} {f.as_error()}")
        summary = f"{len(errors)} error(s), {len(findings) - len(errors)} warning(s) ({what})"
        click.echo(("FAILED: " if errors else "OK: ") + summary)
    if errors:
        raise SystemExit(2)


def _check_recipe(cluster, recipe, overrides) -> tuple[str, list]:
    from hpctune import render
    from hpctune.prepare import prepare

    prep = prepare(cluster, recipe, overrides)
    findings = list(prep.findings)
    if not prep.errors:
        # The same texts `render` would write, read back (in memory: nothing is written).
        bundle = Path(tempfile.gettempdir()) / "hpctune-check"
        findings += render.bundle_findings(render.render_files(prep.job, bundle, tuple(overrides)), bundle)
    return "every rule, then the rendered files", findings


def _check_folder(folder: Path) -> tuple[str, list]:
    from hpctune import rules
    from hpctune.rules.bundle import Bundle

    bundle = Bundle.read(folder)
    return "recipe rules on recipe.yaml, cross-file rules on the run folder", \
        rules.run(recipe=bundle.recipe, bundle=bundle)


def _print_list(all_rules, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([{"id": r.id, "scope": r.scope, "summary": r.summary, "pains": list(r.pains),
                                "enforced_by": r.enforced_by or None} for r in all_rules], indent=2))
        return
    for r in all_rules:
        pains = f" (user-pains {', '.join(map(str, r.pains))})" if r.pains else ""
        click.echo(f"{r.id:24s} {r.scope:7s} {r.summary}{pains}")
