"""Auto layout: try every (nodes, GPUs per node, ZeRO stage, offload, micro batch), keep what
fits, cheapest first. ``search`` is what ``layout.nodes: auto`` runs (through
``job_plan.alternatives``), what ``hpctune plan`` lists and what bench/bench_plan.py times:
there is one ranking, ``cost``."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator

from .inputs import PlanInput
from .memory import DEFAULT_MARGIN_GIB, Plan, estimate

DEFAULT_OFFLOADS: tuple[tuple[str, str], ...] = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"))
"""(offload_optimizer, offload_param) pairs tried by default; NVMe only when asked for."""

OFFLOAD_COST = {"none": 0, "cpu": 1, "nvme": 2}  # slower storage, later in the ranking


def candidates(base: PlanInput, *, max_nodes: int, gpus_per_node_options: Iterable[int],
               zero_stages: Iterable[int] = (0, 2, 3),
               offloads: Iterable[tuple[str, str]] = DEFAULT_OFFLOADS,
               micro_batches: Iterable[int] = (1, 2, 4, 8, 16)) -> Iterator[PlanInput]:
    """Every valid layout: optimizer offload needs ZeRO-2 or 3 (ZeRO-Offload), parameter
    offload needs ZeRO-3; other fields come from ``base``."""
    offloads = tuple(offloads)
    for nodes in range(1, max_nodes + 1):
        for gpn in gpus_per_node_options:
            for stage in zero_stages:
                for opt, par in offloads:
                    if (opt != "none" and stage < 2) or (par != "none" and stage != 3):
                        continue
                    for mb in micro_batches:
                        yield replace(base, nodes=nodes, gpus_per_node=gpn, zero_stage=stage,
                                      offload_optimizer=opt, offload_param=par, micro_batch=mb)


def cost(inp: PlanInput, plan: Plan, exclusive: bool) -> tuple:
    """Cheapest first. Offload slows every step several-fold, so it is the last resort; then
    the allocation unit (whole nodes on exclusive clusters, else GPUs); inside a paid node,
    more GPUs are faster; then a lower ZeRO stage (less communication), a larger micro batch
    (throughput) and the smaller peak."""
    slow = OFFLOAD_COST[inp.offload_optimizer] + 2 * OFFLOAD_COST[inp.offload_param]
    units = inp.nodes if exclusive else inp.world
    return (slow, units, inp.nodes, -inp.world, inp.zero_stage, -inp.micro_batch, plan.per_gpu_peak_gib)


def halvings(start: int) -> list[int]:
    """``start``, then halved down to 1: the micro batches tried when the recipe's does not fit."""
    out = [start]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def search(base: PlanInput, *, max_nodes: int, gpus_per_node_options: Iterable[int], exclusive: bool = True,
           zero_stages: Iterable[int] = (0, 2, 3),
           offloads: Iterable[tuple[str, str]] = DEFAULT_OFFLOADS,
           micro_batches: Iterable[int] | None = None,
           margin_gib: float = DEFAULT_MARGIN_GIB) -> list[tuple[PlanInput, Plan]]:
    """Layouts that fit (GPU and CPU), best first (see ``cost``); empty when nothing fits.

    Micro batches: by default the base's own, and smaller ones (halved) only if nothing fits
    at it, so a recipe keeps the micro batch it asked for whenever some layout allows it.
    Given explicitly, all of them compete at once."""
    gpn = tuple(gpus_per_node_options)
    rounds = [(mb,) for mb in halvings(base.micro_batch)] if micro_batches is None else [tuple(micro_batches)]
    fitting: list[tuple[PlanInput, Plan]] = []
    for mbs in rounds:
        for inp in candidates(base, max_nodes=max_nodes, gpus_per_node_options=gpn, zero_stages=zero_stages,
                              offloads=offloads, micro_batches=mbs):
            plan = estimate(inp, margin_gib)
            if plan.fits:
                fitting.append((inp, plan))
        if fitting:
            break
    fitting.sort(key=lambda ip: cost(*ip, exclusive))
    return fitting
