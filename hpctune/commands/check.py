"""``hpctune check``: every preflight rule, plus the cross-file checks of the rendered files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

# Rules enforced while resolving the layout (hpctune/job.py) and on the rendered files
# (hpctune/crosscheck.py); listed here for --list.
LAYOUT_RULES = [
    ("partition-exists", "the recipe's partition exists in the profile"),
    ("partition-nodes", "nodes within the partition's MaxNodes"),
    ("partition-time", "time limit within the partition's MaxTime"),
    ("node-gpus", "GPUs per node within what the nodes have"),
]
CROSS_FILE_RULES = [
    ("sbatch-directives-first", "every #SBATCH before the first command (user-pains 19)"),
    ("sbatch-literal", "no $VARIABLES in #SBATCH lines (user-pains 19)"),
    ("one-task-per-node", "--ntasks-per-node=1: one launcher per node (user-pains 2)"),
    ("nodes-agree", "sbatch --nodes = accelerate num_machines"),
    ("processes-agree", "accelerate num_processes = nodes x processes per node"),
    ("gpus-agree", "sbatch --gpus-per-node = processes per node"),
    ("precision-agree", "accelerate mixed_precision = recipe precision (user-pains 22)"),
    ("grad-accum-agree", "gradient accumulation equal in accelerate config and training args (user-pains 9)"),
    ("clipping-agree", "DeepSpeed gradient_clipping = training max_grad_norm"),
    ("standard-launcher", "deepspeed_multinode_launcher: standard on multi-node (user-pains 6)"),
    ("stage-agree", "ZeRO stage equal in accelerate config and recipe"),
    ("rank-per-node", "machine rank read per node at run time (user-pains 1)"),
    ("launch-flags", "rdzv backend / same_network / rank passed as flags (user-pains 5)"),
    ("version-gates", "package versions checked on the compute node before training (user-pains 10, 11)"),
]


@click.command("check")
@click.option("-c", "--cluster", metavar="CLUSTER", help="Cluster profile: a name or a path to a .yaml file.")
@click.argument("recipe", metavar="RECIPE", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--list", "list_rules", is_flag=True, help="List every rule with its id and exit.")
def command(cluster, recipe, overrides, list_rules):
    """Check RECIPE on CLUSTER against every rule before anything is submitted.

    \b
    Rules cover the failures people hit on real clusters (ranks, launchers, gradient
    accumulation, QLoRA + ZeRO-3 dtypes, offload stages, GPU features, partition limits,
    Falcon module names, ...); then the files are rendered to a scratch folder and read
    back to check them against each other. Exit code 2 if any error is found.

    \b
    Examples:
      hpctune check -c example-a100-40g llama2-70b-qlora-zero3
      hpctune check -c example-t4 recipes/my.yaml --set precision=fp16
      hpctune check --list
    """
    from hpctune import checks, crosscheck, profile as profile_mod, recipe as recipe_mod, render
    from hpctune.job import resolve

    if list_rules:
        for r in checks.RULES:
            pains = f" (user-pains {', '.join(map(str, r.pains))})" if r.pains else ""
            click.echo(f"{r.id:22s} {r.summary}{pains}")
        for rule_id, summary in LAYOUT_RULES + CROSS_FILE_RULES:
            click.echo(f"{rule_id:22s} {summary}")
        return
    if not cluster or not recipe:
        raise click.UsageError("give -c CLUSTER and RECIPE (or --list)")
    job = resolve(profile_mod.load(cluster), recipe_mod.load(recipe, overrides))
    findings = checks.run(job)
    if not any(f.severity == "error" for f in findings):
        with tempfile.TemporaryDirectory(prefix="hpctune-check-") as tmp:
            bundle = render.write_bundle(job, Path(tmp) / "bundle", tuple(overrides))
            findings += crosscheck.check_bundle(bundle, job)
    errors = [f for f in findings if f.severity == "error"]
    for f in findings:
        click.echo(f"{f.severity.upper():8s} {f.as_error()}")
    n_rules = len(checks.RULES)
    summary = f"{len(errors)} error(s), {len(findings) - len(errors)} warning(s) from {n_rules} rules + cross-file checks"
    click.echo(("FAILED: " if errors else "OK: ") + summary)
    if errors:
        raise SystemExit(2)
