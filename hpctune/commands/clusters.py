"""``hpctune clusters``: list, show and validate cluster profiles."""

from __future__ import annotations

import click


@click.group("clusters", invoke_without_command=True)
@click.pass_context
def command(ctx):
    """List the cluster profiles hpctune can see.

    \b
    Profiles are looked up in $HPCTUNE_CLUSTERS, ~/.config/hpctune/clusters and the
    shipped clusters/ folder (first match wins). Copy a shipped example to start yours.

    \b
    Examples:
      hpctune clusters
      hpctune clusters show example-a100-80g
      hpctune clusters validate ~/.config/hpctune/clusters/mysite.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from hpctune import profile
    rows = [("NAME", "GPUS/NODE", "GPU", "GiB", "PARTITIONS", "FILE")]
    for name, path in sorted(profile.available().items()):
        try:
            p = profile.load(str(path))
            rows.append((name, str(p.node.gpus_per_node), p.node.gpu_model, f"{p.node.gpu_mem_gib:g}",
                         ",".join(x.name for x in p.partitions) or "-", str(path)))
        except Exception as e:  # a broken user profile must not hide the others
            rows.append((name, "?", "?", "?", f"INVALID: {e}", str(path)))
    click.echo(_table(rows))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@command.command("show")
@click.argument("name")
def show(name):
    """Print one profile, resolved (defaults filled in), as YAML."""
    import yaml
    from hpctune import profile, schema
    p = profile.load(name)
    data = schema.to_dict(p)
    click.echo(f"# {data.pop('source')}")
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@command.command("validate")
@click.argument("file")
def validate(file):
    """Check a profile file; print what is missing or wrong (exit 2 if invalid)."""
    from hpctune import profile
    p = profile.load(file)
    missing = []
    if p.node.gpus_per_node and p.node.gpu_model in ("", "none", "unknown"):
        missing.append("node.gpu_model: unknown GPU model")
    if p.scheduler == "slurm" and p.node.gpus_per_node and not p.network.socket_ifname and p.partitions and max(x.max_nodes for x in p.partitions) > 1:
        missing.append("network.socket_ifname: not set; multi-node jobs rely on NCCL picking an interface")
    click.echo(f"{file}: valid profile {p.name!r}")
    for m in missing:
        click.echo(f"  to fill in: {m}")
