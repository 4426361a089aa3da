"""``hpctune logs RUN``: print or follow a run's output, per node."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.command("logs")
@click.argument("run_ref", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--node", "node", default="0", show_default=True, metavar="N|all",
              help="Which node's output (0 is the head node), or all.")
@click.option("--submitit", "submitit_logs", is_flag=True, help="Show submitit's own logs instead (Slurm runs).")
@click.option("--errors", "errors", is_flag=True,
              help="Only the first failure of every rank (all nodes, in time order), per attempt, and why each attempt ended.")
def command(run_ref, follow, node, submitit_logs, errors):
    """Print RUN's output (every attempt, oldest first), for one node or all.

    \b
    Each node writes RUN/logs/node-<job>-<node>.out (local runs: node-local-0.out);
    attempts of a requeued job append to the same file.

    \b
    Examples:
      hpctune logs last
      hpctune logs tiny-sft-20261122 -f
      hpctune logs 1234 --node 1
    """
    from hpctune.errors import RunError
    from hpctune.run import backends, registry

    run = registry.find(run_ref)
    if errors:
        return _errors(run)
    if submitit_logs:
        files = run.folder.submitit_logs()
    elif node == "all":
        files = run.node_logs()
    else:
        try:
            n = int(node)
        except ValueError:
            raise RunError(f"--node must be a node number or 'all', got {node!r}") from None
        if n < 0 or n >= run.nodes:
            raise RunError(f"run {run.id} has {run.nodes} node(s): --node 0..{run.nodes - 1}")
        files = run.node_logs(node=n)
    if not files and not follow:
        click.echo(f"No output yet in {run.path / 'logs'} (the job may still be queued: hpctune status {run.id})", err=True)
        return
    positions: dict[Path, int] = {}
    many = len(files) > 1 or node == "all"
    for f in files:
        positions[f] = _dump(f, 0, header=many)
    if not follow:
        return
    quiet_after_done = 0
    while True:
        time.sleep(1.0)
        if submitit_logs:
            current = run.folder.submitit_logs()
        else:
            current = run.node_logs() if node == "all" else run.node_logs(node=int(node))
        for f in current:
            if f not in positions:
                positions[f] = _dump(f, 0, header=True)
            else:
                positions[f] = _dump(f, positions[f], header=False)
        if backends.status(run).done:
            quiet_after_done += 1
            if quiet_after_done >= 2:  # one more pass for output written while it ended
                return


def _dump(path: Path, pos: int, header: bool) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    if header and (data or pos == 0):
        click.echo(f"==> {path} <==")
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return pos + len(data)


def _errors(run) -> None:
    """Per attempt: why it ended, then each rank's first failure, oldest first."""
    from hpctune.run import backends, evidence

    st = backends.status(run)
    job_runs = evidence.job_runs_of(run)
    evs = evidence.gather(run.path, state=st.state, job_runs=job_runs, output_dir=run.output_dir)
    causes = evidence.of_run(run, st.state, job_runs=job_runs)
    if not evs:
        click.echo(f"No attempt has started yet (hpctune status {run.id})")
        return
    for ev, cause in zip(evs, causes):
        job = f" (job {ev.job_id})" if ev.job_id and ev.job_id != "local" else ""
        click.echo(f"attempt {ev.attempt}{job}: {cause.why() if cause.kind != 'running' else 'running'}")
        fails = evidence.rank_failures(run.path, ev.attempt, ev.logs, ev.batch_log)
        for f in fails:
            when = time.strftime("%H:%M:%S", time.localtime(f["time"])) if f["time"] else "--:--:--"
            who = f"rank {f['rank']}" if f["rank"] is not None else "launcher"
            click.echo(f"  {when}  {who:<8} {f['node'] or '?':<10} {f['line']}")
            click.echo(f"  {'':8}  {'':8} {'':10} ({f['where']})")
        if not fails and cause.kind not in ("completed", "running"):
            click.echo("  no rank left an error (see `hpctune logs RUN --node all`)")
