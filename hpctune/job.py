"""A Job: one profile + one recipe, with every derived value computed once.

Everything that renders, plans, checks or submits reads the Job; nothing recomputes
ranks, process counts, precision names or resource requests on its own. This module is
arithmetic over a profile and a recipe: it imports no rules and no planner (loading,
auto layout and the rules are composed in hpctune/prepare.py). ``resolve`` raises the
layout rules declared in hpctune/rules/cluster.py, with their ids: no Job exists without them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

from hpctune.errors import ConfigError
from hpctune.profile import ClusterProfile, Partition
from hpctune.recipe import Recipe
from hpctune.timefmt import format_slurm, parse_minutes


@dataclass
class Job:
    profile: ClusterProfile
    recipe: Recipe
    partition: Partition | None
    nodes: int
    procs_per_node: int
    time_minutes: float
    cpus_per_task: int
    mem_gib: int
    exclusive: bool = False  # whole nodes asked for (--exclusive, --mem=0): the profile says so and the job fills them

    @property
    def num_processes(self) -> int:
        """World size: one process per GPU (or per CPU worker on a CPU-only profile)."""
        return self.nodes * self.procs_per_node

    @property
    def gpus_per_node(self) -> int:
        """GPUs requested per node (0 on CPU-only profiles)."""
        return self.procs_per_node if self.profile.node.gpus_per_node > 0 else 0

    @property
    def distributed_type(self) -> str:
        """accelerate's distributed_type: DeepSpeed for ZeRO >= 1, DDP or nothing for stage 0."""
        if self.recipe.deepspeed.zero_stage >= 1:
            return "DEEPSPEED"
        return "MULTI_GPU" if self.num_processes > 1 else "NO"

    @property
    def uses_deepspeed(self) -> bool:
        return self.distributed_type == "DEEPSPEED"

    @property
    def time_slurm(self) -> str:
        return format_slurm(self.time_minutes)

    @property
    def nvme_path(self) -> str | None:
        return self.recipe.deepspeed.nvme_path or self.profile.node.local_scratch

    @property
    def job_name(self) -> str:
        return f"hpctune-{self.recipe.name}"


def resolve(profile: ClusterProfile, recipe: Recipe) -> Job:
    """Fill every layout value from the profile; raise ConfigError for impossible layouts."""
    src = recipe.source
    lay = recipe.layout
    node = profile.node

    partition = None
    if profile.scheduler == "slurm":
        partition = profile.partition(lay.partition)
        if partition is None:
            names = ", ".join(p.name for p in profile.partitions)
            raise ConfigError(src, "layout.partition",
                              f"partition {lay.partition!r} is not in cluster profile {profile.name!r} (allowed: {names})", rule="partition-exists")
    elif lay.partition is not None:
        raise ConfigError(src, "layout.partition", f"cluster {profile.name!r} has no scheduler and no partitions; remove layout.partition",
                          rule="partition-exists")

    if lay.nodes == "auto":
        # The planner replaces "auto" before resolve() is called; a bare resolve takes 1.
        nodes = 1
    else:
        nodes = lay.nodes
    max_nodes = partition.max_nodes if partition else 1
    if nodes > max_nodes:
        where = f"partition {partition.name!r}" if partition else f"cluster {profile.name!r} (no scheduler)"
        raise ConfigError(src, "layout.nodes", f"{nodes} nodes requested but {where} allows at most {max_nodes}", rule="partition-nodes")

    if node.gpus_per_node > 0:
        procs = node.gpus_per_node if lay.gpus_per_node == "all" else lay.gpus_per_node
        if procs > node.gpus_per_node:
            raise ConfigError(src, "layout.gpus_per_node",
                              f"{procs} GPUs per node requested but {profile.name!r} nodes have {node.gpus_per_node} (allowed: 1..{node.gpus_per_node} or 'all')", rule="node-gpus")
    else:
        procs = 1 if lay.gpus_per_node == "all" else lay.gpus_per_node
        if procs > node.cpus_per_node:
            raise ConfigError(src, "layout.gpus_per_node",
                              f"{procs} CPU processes per node requested but {profile.name!r} nodes have {node.cpus_per_node} CPUs",
                              rule="node-gpus")

    try:
        minutes = parse_minutes(lay.time, src, "layout.time")
    except ConfigError as e:
        raise ConfigError(e.source, e.field, e.message, rule="partition-time") from None
    if minutes <= 0:
        raise ConfigError(src, "layout.time", "must be longer than zero", rule="partition-time")
    if partition is not None:
        limit = parse_minutes(partition.max_time, profile.source, f"partitions.{partition.name}.max_time")
        if minutes > limit:
            raise ConfigError(src, "layout.time",
                              f"{lay.time} is over the time limit of partition {partition.name!r} ({partition.max_time})", rule="partition-time")

    share = procs / node.gpus_per_node if node.gpus_per_node > 0 else 1.0
    # An exclusive profile gets whole nodes, but a job that uses part of a node's GPUs takes
    # its share instead of booking (and blocking) the whole node (D16: bart's 1 GPU of 8).
    exclusive = profile.exclusive and share >= 1.0
    if exclusive:
        share = 1.0
    cpus = lay.cpus_per_task or max(1, math.floor(node.cpus_per_node * share))
    if cpus > node.cpus_per_node:
        raise ConfigError(src, "layout.cpus_per_task", f"{cpus} CPUs requested but nodes have {node.cpus_per_node}",
                          rule="node-cpus")
    # Leave ~5% of a node's RAM to the OS and Slurm, as sites usually do.
    mem = lay.mem_gib or max(1, math.floor(node.ram_gib * 0.95 * share))
    if mem > node.ram_gib:
        raise ConfigError(src, "layout.mem_gib", f"{mem} GiB requested but nodes have {node.ram_gib:g} GiB",
                          rule="node-memory")

    return Job(profile=profile, recipe=recipe, partition=partition, nodes=nodes, procs_per_node=procs,
               time_minutes=minutes, cpus_per_task=cpus, mem_gib=mem, exclusive=exclusive)


def resolved_recipe(job: Job) -> Recipe:
    """The recipe as the run folder stores it (recipe.yaml): local paths made absolute, the
    layout resolved. The login side's rules and the node's preflight both read this one."""
    rec = job.recipe
    base = Path(rec.source).resolve().parent if rec.source else Path.cwd()

    def absolute(value: str) -> str:
        if value.startswith("hpctune:") or Path(value).is_absolute():
            return value
        candidate = (base / value)
        return str(candidate.resolve()) if candidate.exists() else value

    model = replace(rec.model, model_name_or_path=absolute(rec.model.model_name_or_path))
    data = replace(rec.data, dataset_name=absolute(rec.data.dataset_name))
    layout = replace(rec.layout, nodes=job.nodes, gpus_per_node=job.procs_per_node,
                     time=job.time_slurm, partition=job.partition.name if job.partition else None,
                     cpus_per_task=job.cpus_per_task, mem_gib=job.mem_gib)
    return replace(rec, model=model, data=data, layout=layout)


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (for the manifest)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
