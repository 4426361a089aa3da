"""``hpctune runs``: list the runs in the registry with their state from Slurm."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("runs")
@click.option("-n", "--last", "last", type=int, default=20, show_default=True, help="Show the newest N runs (0: all).")
@click.option("--cached", is_flag=True, help="Show the last state seen instead of asking Slurm.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--sweep", "sweep", metavar="ID", default=None,
              help="Only the runs of this sweep (id or unique prefix), side by side with their grid values and final losses.")
@click.option("--hours", "hours", is_flag=True, help="Add GPU-hours per run: allocated, training kept, lost to failures.")
def command(last, cached, as_json, sweep, hours):
    """List runs: id, state, cluster, recipe, nodes, submitted, attempts.

    \b
    The registry is one JSON file per run in $HPCTUNE_HOME/runs (default ~/.hpctune/runs);
    each points at its run folder. States of unfinished runs are asked from Slurm
    (one squeue call, then sacct) unless --cached.
    """
    from hpctune import runs

    if sweep:
        return _sweep_listing(sweep, cached, as_json)
    items = runs.all_runs()
    if last > 0:
        items = items[-last:]
    states: dict[str, str] = {}
    notes: list[str] = []
    if not cached:
        states, notes = _refresh(items)
    rows = []
    from hpctune import dispatch
    from hpctune.run import evidence
    for r in items:
        state = states.get(r.id, r.state)
        # why it ended: recorded once per run folder, so only the first listing reads logs
        cause = evidence.final(r, state) if state in dispatch.TERMINAL else None
        rows.append({"id": r.id, "state": state, "cause": cause.label if cause else "",
                     "cluster": r.cluster, "recipe": r.recipe, "nodes": r.nodes,
                     "submitted": r.submitted, "attempts": len(r.attempts()),
                     "job": (r.job_ids() or [""])[-1] if r.scheduler == "slurm" else "local"})
        if hours:
            from hpctune.run import hours as hours_mod
            rows[-1]["gpu_hours"] = hours_mod.of_run(r, state).to_dict()
    if as_json:
        click.echo(json.dumps({"runs": rows, "registry": str(runs.registry_dir()), "notes": notes}, indent=2))
        return
    if not rows:
        click.echo(f"No runs in {runs.registry_dir()} (hpctune submit ... registers one).")
        return
    head = ("RUN", "STATE", "CAUSE", "CLUSTER", "RECIPE", "NODES", "SUBMITTED", "ATTEMPTS", "JOB")
    table = [head] + [(r["id"], r["state"], r["cause"] or "-", r["cluster"], r["recipe"], str(r["nodes"]),
                       time.strftime("%Y-%m-%d %H:%M", time.localtime(r["submitted"])), str(r["attempts"]), r["job"])
                      for r in rows]
    if hours:
        head = head + ("GPU_H", "KEPT", "LOST")
        table = [head] + [row + tuple(f"{r['gpu_hours'][k]:.2f}" for k in ("allocated", "kept", "lost"))
                          for row, r in zip(table[1:], rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for note in notes:
        click.echo(f"note: {note}")


def _refresh(items) -> tuple[dict, list]:
    """Current states of runs not known to be finished: one Slurm query for all of them."""
    from hpctune import dispatch, runs
    from hpctune.dispatch import slurm

    states: dict[str, str] = {}
    notes: list[str] = []
    active = [r for r in items if r.state not in dispatch.TERMINAL]
    slurm_runs = [r for r in active if r.scheduler == "slurm"]
    current = {r.id: (r.job_ids() or [None])[-1] for r in slurm_runs}
    if slurm_runs:
        q = slurm.query([j for j in current.values() if j])
        if q.note:
            notes.append(q.note)
        for r in slurm_runs:
            if current[r.id] in q.jobs:
                # the full view (cancel requests, stopped runs) for the few that changed
                st = dispatch.status(r) if q.jobs[current[r.id]].state in dispatch.TERMINAL else None
                states[r.id] = st.state if st else q.jobs[current[r.id]].state
            else:
                states[r.id] = dispatch.status(r).state
            runs.cache_state(r, states[r.id])
    for r in active:
        if r.scheduler == "local":
            states[r.id] = dispatch.status(r).state
            runs.cache_state(r, states[r.id])
    return states, notes


def _sweep_listing(ref: str, cached: bool, as_json: bool) -> None:
    from hpctune import sweep as sweep_mod

    sweep_id, items = sweep_mod.sweep_runs(ref)
    states, notes = ({}, []) if cached else _refresh(items)
    if as_json:
        rows = []
        for r in items:
            train, ev = sweep_mod.final_losses(r)
            rows.append({"id": r.id, "state": states.get(r.id, r.state), "grid": r.grid or {},
                         "train_loss": train, "eval_loss": ev,
                         "job": (r.job_ids() or [""])[-1] if r.scheduler == "slurm" else "local"})
        if hours:
            from hpctune.run import hours as hours_mod
            rows[-1]["gpu_hours"] = hours_mod.of_run(r, state).to_dict()
        click.echo(json.dumps({"sweep": sweep_id, "runs": rows, "notes": notes}, indent=2))
        return
    click.echo(f"Sweep {sweep_id}: {len(items)} run(s)")
    for line in sweep_table(items, states):
        click.echo(line)
    for note in notes:
        click.echo(f"note: {note}")


def sweep_table(items, states: dict) -> list[str]:
    """A sweep's runs side by side: grid values, state, final train/eval loss, job."""
    from hpctune import sweep as sweep_mod

    keys: list[str] = []
    try:  # the grid's own order, from the sweep folder's sweep.json
        keys = list(json.loads((Path(items[0].bundle).parent / sweep_mod.SWEEP_FILE).read_text())["grid"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    for r in items:
        for k in (r.grid or {}):
            if k not in keys:
                keys.append(k)

    def loss(v):
        return "-" if v is None else f"{v:.4f}"

    head = ("RUN", *keys, "STATE", "TRAIN_LOSS", "EVAL_LOSS", "JOB")
    table = [head]
    for r in items:
        train, ev = sweep_mod.final_losses(r)
        job = (r.job_ids() or [""])[-1] if r.scheduler == "slurm" else "local"
        table.append((r.id, *[str((r.grid or {}).get(k, "")) for k in keys], states.get(r.id, r.state),
                      loss(train), loss(ev), job))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
