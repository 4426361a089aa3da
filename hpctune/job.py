"""A Job: one profile + one recipe, with every derived value computed once.

Everything that renders, plans, checks or submits reads the Job; nothing recomputes
ranks, process counts, precision names or resource requests on its own.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from hpctune import profile as profile_mod
from hpctune import recipe as recipe_mod
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
    warnings: list = field(default_factory=list)  # non-blocking check findings
    forced: list = field(default_factory=list)  # error findings overridden with --force

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
        raise ConfigError(src, "layout.partition", f"cluster {profile.name!r} has no scheduler and no partitions; remove layout.partition")

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
                              f"{procs} CPU processes per node requested but {profile.name!r} nodes have {node.cpus_per_node} CPUs")

    minutes = parse_minutes(lay.time, src, "layout.time")
    if minutes <= 0:
        raise ConfigError(src, "layout.time", "must be longer than zero")
    if partition is not None:
        limit = parse_minutes(partition.max_time, profile.source, f"partitions.{partition.name}.max_time")
        if minutes > limit:
            raise ConfigError(src, "layout.time",
                              f"{lay.time} is over the time limit of partition {partition.name!r} ({partition.max_time})", rule="partition-time")

    share = procs / node.gpus_per_node if node.gpus_per_node > 0 else 1.0
    if profile.exclusive:
        share = 1.0
    cpus = lay.cpus_per_task or max(1, math.floor(node.cpus_per_node * share))
    if cpus > node.cpus_per_node:
        raise ConfigError(src, "layout.cpus_per_task", f"{cpus} CPUs requested but nodes have {node.cpus_per_node}")
    # Leave ~5% of a node's RAM to the OS and Slurm, as sites usually do.
    mem = lay.mem_gib or max(1, math.floor(node.ram_gib * 0.95 * share))
    if mem > node.ram_gib:
        raise ConfigError(src, "layout.mem_gib", f"{mem} GiB requested but nodes have {node.ram_gib:g} GiB")

    return Job(profile=profile, recipe=recipe, partition=partition, nodes=nodes, procs_per_node=procs,
               time_minutes=minutes, cpus_per_task=cpus, mem_gib=mem)


def load(cluster: str, recipe_path: str, overrides: tuple[str, ...] | list[str] = (), *, force: bool = False) -> Job:
    """Load profile and recipe, apply overrides, resolve and run the checks.

    Error findings raise ConfigError, unless ``force``: then they are kept in
    ``job.forced`` (and ``job.warnings``) so that the override can be recorded.
    """
    prof = profile_mod.load(cluster)
    rec = recipe_mod.load(recipe_path, tuple(overrides))
    return build(prof, rec, force=force)


def build(prof: ClusterProfile, rec: Recipe, *, force: bool = False) -> Job:
    """``load`` for a profile and recipe already loaded (``hpctune sweep`` loads them once)."""
    from hpctune import checks

    if rec.layout.nodes == "auto":
        from hpctune.plan.job_plan import choose_layout
        rec = choose_layout(prof, rec)
    job = resolve(prof, rec)
    if force:
        job.warnings = checks.run(job)
        job.forced = [f for f in job.warnings if f.severity == "error"]
    else:
        job.warnings = checks.raise_errors(job)
    return job


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (for the manifest)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
