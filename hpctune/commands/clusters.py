"""``hpctune clusters``: list, show, validate and detect cluster profiles."""

from __future__ import annotations

import click


@click.group("clusters", invoke_without_command=True)
@click.pass_context
def command(ctx):
    """List the cluster profiles hpctune can see.

    \b
    Profiles are looked up in $HPCTUNE_CLUSTERS, ~/.config/hpctune/clusters and the
    shipped clusters/ folder (first match wins). Start yours with `hpctune clusters
    detect` on a login node, or copy a shipped example.

    \b
    Examples:
      hpctune clusters
      hpctune clusters show example-a100-80g
      hpctune clusters detect -o ~/.config/hpctune/clusters/mysite.yaml
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
    from hpctune.textui import table
    click.echo(table(rows))


@command.command("show")
@click.argument("name")
def show(name):
    """Print one profile, resolved (defaults filled in), as YAML."""
    from hpctune import profile, schema, yamlfile
    p = profile.load(name)
    data = schema.to_dict(p)
    click.echo(f"# {data.pop('source')}")
    click.echo("# Trusted: software.setup lines run as shell code on every node, as written (like a .bashrc);")
    click.echo("# read them before using a profile from someone else. Every other value is data: checked,")
    click.echo("# quoted, never run (docs/security.md).")
    if p.software.setup:
        click.echo(f"# This profile has {len(p.software.setup)} set-up line(s): see software.setup below.")
    click.echo(yamlfile.dumps(data).rstrip())


@command.command("validate")
@click.argument("file", metavar="FILE")
def validate(file):
    """Check a profile and list what is still to fill in.

    \b
    A profile that loads is valid (exit 0); the lines after it name what still needs
    you: values `hpctune clusters detect` marked FILL IN (a placeholder) or CHECK (to
    confirm), and fields that matter for what you will run (e.g. GPU memory when the GPU
    model is unknown). An invalid profile prints one line naming the file and field, and
    exits 2.

    \b
    Examples:
      hpctune clusters validate mysite.yaml
      hpctune clusters validate example-h100
    """
    from pathlib import Path

    from hpctune import detect, gpus, profile
    p = profile.load(file)
    todo: dict[str, tuple[str, str]] = {}  # field -> (kind, note); markers first
    try:
        text = Path(p.source).read_text(encoding="utf-8")
    except OSError:
        text = ""
    for path, kind, note in detect.markers(text):
        todo.setdefault(path, ("to fill in" if kind == detect.FILL_IN else "to check", note))
    node = p.node
    if node.gpus_per_node and node.gpu_model.strip().lower() in ("", "none", "unknown"):
        todo.setdefault("node.gpu_model", ("to fill in", "GPU model unknown: name it, e.g. a100-40g, h100, t4; "
                                                         "else set node.bf16 and node.flash_attention_2"))
        todo.setdefault("node.gpu_mem_gib", ("to fill in", f"GPU model unknown: make sure {node.gpu_mem_gib:g} "
                                                           f"is the GiB of one GPU"))
    elif node.gpus_per_node and gpus.lookup(node.gpu_model) is None and (node.bf16 is None or node.flash_attention_2 is None):
        todo.setdefault("node.bf16", ("to check", f"GPU model {node.gpu_model!r} is not in hpctune's table: "
                                                  f"bf16 and flash_attention_2 are assumed true; set them if not"))
    if (p.scheduler == "slurm" and node.gpus_per_node and not p.network.socket_ifname and p.partitions
            and max(x.max_nodes for x in p.partitions) > 1):
        todo.setdefault("network.socket_ifname", ("to fill in", "not set; multi-node jobs rely on NCCL picking an interface"))
    click.echo(f"{file}: valid profile {p.name!r}")
    for path, (kind, note) in todo.items():
        click.echo(f"  {kind}: {path} ({note})")
    if not todo:
        click.echo("  nothing left to fill in")


@command.command("detect")
@click.option("-o", "--output", "output", metavar="FILE", help="Write the profile here (default: print it).")
@click.option("--partition", metavar="NAME",
              help="Partition whose nodes the profile describes (default: Slurm's default partition if it "
                   "has GPUs, else the GPU partition with the most nodes).")
@click.option("--name", metavar="NAME", help="Profile name (default: Slurm's ClusterName).")
@click.option("--gpu-model", metavar="MODEL", help="GPU model, when the Gres type does not say (e.g. a100-40g).")
@click.option("--gpu-mem-gib", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="Memory of one GPU in GiB, when the GPU model does not say.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def detect_cmd(output, partition, name, gpu_model, gpu_mem_gib, force):
    """Write a profile for this cluster from the live Slurm (on a login node).

    \b
    Reads `scontrol show config|partition|node` and writes a commented profile: the
    partitions whose nodes look like those of one partition (node count, MaxNodes,
    MaxTime, default), the node hardware (GPUs and GPU model from Gres, CPUs, memory),
    and, commented out, what Slurm cannot know (network interface, modules, account).
    Values to fill in or confirm are marked FILL IN / CHECK; `hpctune clusters validate
    FILE` lists them. GPU memory comes from hpctune's GPU table when the Gres names a
    known model (gpu:h100:8); for an untyped Gres (gpu:8) it is a placeholder of 16 GiB,
    marked FILL IN, unless --gpu-model / --gpu-mem-gib say.

    \b
    Examples:
      hpctune clusters detect                                  # print it
      hpctune clusters detect -o ~/.config/hpctune/clusters/mysite.yaml
      hpctune clusters detect --partition a100-40g --gpu-model a100-40g -o a40g.yaml
      hpctune clusters validate ~/.config/hpctune/clusters/mysite.yaml
    """
    import os
    import sys
    from pathlib import Path

    from hpctune import __version__, detect
    from hpctune.errors import ConfigError
    if output and Path(output).exists() and not force:
        raise ConfigError("-o/--output", "", f"{output} already exists; add --force to overwrite it")
    if output:
        # -c NAME finds a profile by its file name: the name inside must be the same
        stem = Path(output).stem
        if name and name != stem:
            raise ConfigError("--name", "", f"{name!r} differs from the file name {Path(output).name}: "
                                            f"profiles are found by file name; use --name {stem} or -o {name}.yaml")
        name = stem
    cluster = detect.run_detect()
    venv = sys.prefix if sys.prefix != getattr(sys, "base_prefix", sys.prefix) else None
    d = detect.draft(cluster, partition=partition, name=name, gpu_model=gpu_model, gpu_mem_gib=gpu_mem_gib,
                     venv=venv, hpctune_version=__version__)
    text = detect.render(d)
    if not text.endswith("\n"):
        text += "\n"
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        node = d.data["node"]
        click.echo(f"wrote {output}: profile {d.data['name']!r} for partition {d.partition} "
                   f"({node['gpus_per_node']} GPUs {node['gpu_model']}, {node['cpus_per_node']} CPUs, "
                   f"{node['ram_gib']:g} GiB RAM per node)", err=True)
    else:
        click.echo(text, nl=False)
    for item in d.todo():
        click.echo(f"  to {item}", err=True)
    if output:
        click.echo(f"next: hpctune clusters validate {output}", err=True)
