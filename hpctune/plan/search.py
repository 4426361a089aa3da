"""Auto layout: try every (nodes, GPUs per node, ZeRO stage, offload, micro batch) and keep
what fits, cheapest first."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator

from .memory import DEFAULT_MARGIN_GIB, Plan, PlanInput, estimate

DEFAULT_OFFLOADS: tuple[tuple[str, str], ...] = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"))
"""(offload_optimizer, offload_param) pairs tried by default; NVMe only when asked for."""

_OFFLOAD_COST = {"none": 0, "cpu": 1, "nvme": 2}  # slower storage, later in the ranking


def candidates(base: PlanInput, *, max_nodes: int, gpus_per_node_options: Iterable[int],
               zero_stages: Iterable[int] = (0, 2, 3),
               offloads: Iterable[tuple[str, str]] = DEFAULT_OFFLOADS,
               micro_batches: Iterable[int] = (1, 2, 4, 8, 16)) -> Iterator[PlanInput]:
    """Every valid layout: optimizer offload needs ZeRO-2 or 3 (ZeRO-Offload), parameter
    offload needs ZeRO-3; other fields come from ``base``."""
    for nodes in range(1, max_nodes + 1):
        for gpn in gpus_per_node_options:
            for stage in zero_stages:
                for opt, par in offloads:
                    if (opt != "none" and stage < 2) or (par != "none" and stage != 3):
                        continue
                    for mb in micro_batches:
                        yield replace(base, nodes=nodes, gpus_per_node=gpn, zero_stage=stage,
                                      offload_optimizer=opt, offload_param=par, micro_batch=mb)


def rank_key(inp: PlanInput, plan: Plan) -> tuple:
    """Cheapest first: fewest GPUs (then fewest nodes), no offload (speed), lower ZeRO stage
    (less communication), larger micro batch (throughput), then the smaller peak."""
    offload = _OFFLOAD_COST[inp.offload_optimizer] + 2 * _OFFLOAD_COST[inp.offload_param]
    return (inp.world, inp.nodes, offload, inp.zero_stage, -inp.micro_batch, plan.per_gpu_peak_gib)


def search(base: PlanInput, *, max_nodes: int, gpus_per_node_options: list[int],
           zero_stages: Iterable[int] = (0, 2, 3),
           offloads: Iterable[tuple[str, str]] = DEFAULT_OFFLOADS,
           micro_batches: Iterable[int] = (1, 2, 4, 8, 16),
           margin_gib: float = DEFAULT_MARGIN_GIB) -> list[tuple[PlanInput, Plan]]:
    """Layouts that fit (GPU and CPU), best first (see rank_key). Empty when nothing fits."""
    fitting = []
    for inp in candidates(base, max_nodes=max_nodes, gpus_per_node_options=gpus_per_node_options,
                          zero_stages=zero_stages, offloads=tuple(offloads),
                          micro_batches=micro_batches):
        plan = estimate(inp, margin_gib)
        if plan.fits:
            fitting.append((inp, plan))
    fitting.sort(key=lambda ip: rank_key(*ip))
    return fitting
