"""``hpctune runs``: list the runs in the registry with their state from their backend."""

from __future__ import annotations

import json
import time

import click


@click.command("runs")
@click.option("-n", "--last", "last", type=int, default=20, show_default=True, help="Show the newest N runs (0: all).")
@click.option("--cached", is_flag=True, help="Show the last state seen instead of asking Slurm.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--sweep", "sweep", metavar="ID", default=None,
              help="Only the runs of this sweep (id or unique prefix), side by side with their grid values and final losses.")
@click.option("--hours", "hours", is_flag=True, help="Add GPU-hours per run: allocated, training kept, lost to failures.")
def command(last, cached, as_json, sweep, hours):
    """List runs: id, state, cause, cluster, recipe, nodes, submitted, attempts.

    \b
    The registry is one JSON file per run in $HPCTUNE_HOME/runs (default ~/.hpctune/runs);
    each points at its run folder. States of unfinished runs are asked from Slurm
    (one squeue call, then sacct) unless --cached.
    """
    from hpctune.run import backends, evidence, registry
    from hpctune.textui import table

    if sweep:
        return _sweep_listing(sweep, cached, as_json, hours)
    items, bad = registry.scan()
    for e in bad:  # named, then left out: one bad record never hides the others
        click.echo(f"note: skipped {e}", err=True)
    if last > 0:
        items = items[-last:]
    states, notes = ({}, []) if cached else backends.refresh(items)
    rows = []
    for r in items:
        state = states.get(r.id, r.state)
        # why it ended: recorded once per run folder, so only the first listing reads logs
        cause = evidence.final(r, state) if state in backends.TERMINAL else None
        rows.append({"id": r.id, "state": state, "cause": cause.label if cause else "",
                     "cluster": r.cluster, "recipe": r.recipe, "nodes": r.nodes, "submitted": r.submitted,
                     "attempts": len(r.attempts()), "job": r.current_job()})
        if hours:
            rows[-1]["gpu_hours"] = _hours(r, state)
    if as_json:
        click.echo(json.dumps({"runs": rows, "registry": str(registry.registry_dir()), "notes": notes}, indent=2))
        return
    if not rows:
        click.echo(f"No runs in {registry.registry_dir()} (hpctune submit ... registers one).")
        return
    head = ("RUN", "STATE", "CAUSE", "CLUSTER", "RECIPE", "NODES", "SUBMITTED", "ATTEMPTS", "JOB")
    body = [(r["id"], r["state"], r["cause"] or "-", r["cluster"], r["recipe"], str(r["nodes"]),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(r["submitted"])), str(r["attempts"]), r["job"])
            for r in rows]
    if hours:
        head += ("GPU_H", "KEPT", "LOST")
        body = [row + tuple(f"{r['gpu_hours'][k]:.2f}" for k in ("allocated", "kept", "lost")) for row, r in zip(body, rows)]
    click.echo(table([head] + body))
    for note in notes:
        click.echo(f"note: {note}")


def _hours(run, state) -> dict:
    from hpctune.run import hours as hours_mod
    return hours_mod.of_run(run, state).to_dict()


def _sweep_listing(ref: str, cached: bool, as_json: bool, hours: bool) -> None:
    from hpctune import sweep as sweep_mod
    from hpctune.run import backends

    sweep_id, items = sweep_mod.sweep_runs(ref)
    states, notes = ({}, []) if cached else backends.refresh(items)
    if as_json:
        rows = []
        for r in items:
            train, ev = sweep_mod.final_losses(r)
            state = states.get(r.id, r.state)
            rows.append({"id": r.id, "state": state, "grid": r.grid or {},
                         "train_loss": train, "eval_loss": ev, "job": r.current_job()})
            if hours:
                rows[-1]["gpu_hours"] = _hours(r, state)
        click.echo(json.dumps({"sweep": sweep_id, "runs": rows, "notes": notes}, indent=2))
        return
    click.echo(f"Sweep {sweep_id}: {len(items)} run(s)")
    for line in sweep_mod.table(items, states):
        click.echo(line)
    for note in notes:
        click.echo(f"note: {note}")
