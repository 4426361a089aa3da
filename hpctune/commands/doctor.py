"""``hpctune doctor -c CLUSTER``: prove a cluster profile on the live cluster."""

from __future__ import annotations

import click


@click.command("doctor")
@click.option("-c", "--cluster", "cluster", required=True, metavar="CLUSTER", help="Cluster profile (name or file).")
@click.option("--nodes", "nodes", type=click.IntRange(min=1, max=64), default=2, show_default=True,
              help="Nodes the probe job runs on (at most the partition's max_nodes).")
@click.option("--partition", "partition", default=None, metavar="NAME", help="Partition (default: the profile's default).")
@click.option("--timeout", "timeout_min", type=click.FloatRange(min=0.5, max=120), default=6, show_default=True,
              help="Minutes to wait for the probe job (including its time in the queue).")
@click.option("--no-record", is_flag=True, help="Do not write what was verified into the profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def command(cluster, nodes, partition, timeout_min, no_record, as_json):
    """Run a probe job of a few minutes that proves CLUSTER's profile before the first run.

    \b
    On every node: the set-up lines activate the environment; package versions equal this
    login node's; GPUs are visible with the profile's model and memory; the head address
    resolves and gloo (and NCCL where there are GPUs) all-reduce across the nodes, with the
    measured bandwidth; USR2 reaches the processes; the run folder is on storage every node
    shares; node-local scratch exists; the internet is reachable or not (offline mode); the
    Hugging Face cache is writable. Then `scontrol requeue` is tried on the running job.
    Prints a PASS/FAIL table with the fix for each failure, records the result (date, job
    id, figures) in the profile's `verified` section (`hpctune check` warns about profiles
    never verified), and exits 1 when a check failed.

    \b
    Examples:
      hpctune doctor -c mysite
      hpctune doctor -c mysite --nodes 2 --partition gpu
    """
    import json
    import time
    from pathlib import Path

    from hpctune import profile as profile_mod
    from hpctune.doctor import checks, job
    from hpctune.errors import ConfigError
    from hpctune.textui import table

    prof = profile_mod.load(cluster)
    if prof.scheduler != "slurm":
        raise ConfigError(prof.source, "scheduler", "doctor probes a Slurm cluster; this profile runs on this machine")
    part = prof.partition(partition)
    if part is None:
        raise ConfigError("--partition", "", f"{partition!r} is not a partition of {prof.name}")
    if nodes > part.max_nodes:
        raise ConfigError("--nodes", "", f"partition {part.name} allows at most {part.max_nodes} node(s)")
    folder = Path(prof.runs_dir).expanduser() / f"doctor-{prof.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    res = job.run(prof, folder, nodes=nodes, partition=part.name, timeout_s=timeout_min * 60, echo=say)
    rows = checks.evaluate(prof, login=res["login"], nodes=res["reports"], setup=res["setup"], job=res)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    figs = checks.figures(rows, job_id=res["job_id"], nodes=nodes, date=when)
    recorded = None
    if not no_record:
        recorded = record(prof.source, figs)
    failed = [r for r in rows if r.status == "FAIL"]
    if as_json:
        click.echo(json.dumps({"cluster": prof.name, "job_id": res["job_id"], "folder": res["folder"],
                               "passed": not failed, "recorded_in": recorded,
                               "checks": [r.__dict__ for r in rows]}, indent=2))
    else:
        click.echo(table([("CHECK", "RESULT", "DETAIL")] + [(r.check, r.status, r.detail) for r in rows]))
        for r in failed:
            click.echo(f"fix {r.check}: {r.fix}")
        click.echo(f"{prof.name}: {'every check passed' if not failed else f'{len(failed)} check(s) failed'}"
                   f" (probe job {res['job_id']}, {nodes} node(s))" + (f"; recorded in {recorded}" if recorded else ""))
    if failed:
        raise SystemExit(1)


def record(source: str, figures: dict) -> str | None:
    """Replace (or append) the profile file's top-level ``verified:`` block, keeping the rest
    of the file (comments included) as it is."""
    import re
    from pathlib import Path

    import yaml
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    block = "# written by `hpctune doctor`: what it proved on the live cluster, and when\n" + \
        yaml.safe_dump({"verified": figures}, sort_keys=False, width=200)
    lines = text.splitlines(keepends=True)
    out, skip = [], False
    for line in lines:
        if re.match(r"^verified:", line) or line.startswith("# written by `hpctune doctor`"):
            skip = True
            continue
        if skip and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skip = False
        out.append(line)
    new = "".join(out)
    if new and not new.endswith("\n"):
        new += "\n"
    tmp = path.with_name(f".{path.name}.doctor.tmp")
    tmp.write_text(new + block, encoding="utf-8")
    tmp.replace(path)
    return str(path)
