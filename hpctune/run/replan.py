"""After an out-of-memory attempt: the planner's next layout, with more headroom.

Login side (the planner is pure Python, but it needs the run's cluster profile and recipe
files, which manifest.json names): re-resolve the run's job, ask the planner for layouts
that fit with ``HEADROOM`` of each GPU kept free on top of its usual margin, and return the
first that differs from the layout that ran out of memory, as ``--set`` overrides for
`hpctune submit`. `status` shows it on the `next` line.
"""

from __future__ import annotations

from pathlib import Path

from hpctune.run import folder

HEADROOM = 0.15  # of a GPU's memory, beyond the planner's usual margin


def next_layout(bundle: Path) -> tuple[list[str], str] | None:
    """(overrides, description) of the next layout that fits with more headroom, or None."""
    from hpctune.plan import job_plan
    from hpctune.plan.memory import DEFAULT_MARGIN_GIB
    from hpctune.prepare import prepare

    man = folder.read_manifest(bundle)
    cluster = (man.get("cluster") or {}).get("file")
    rec = man.get("recipe") or {}
    if not cluster or not rec.get("file") or not Path(cluster).is_file() or not Path(rec["file"]).is_file():
        return None
    try:
        job = prepare(cluster, rec["file"], tuple(rec.get("overrides") or ())).job
        gib = job.profile.node.gpu_mem_gib or 0
        if not job.profile.node.gpus_per_node or not gib:
            return None  # CPU processes: the planner's GPU layouts do not apply
        options = job_plan.alternatives(job, limit=8, margin_gib=DEFAULT_MARGIN_GIB + HEADROOM * gib)
        current = job_plan.plan(job).per_gpu_peak_gib
    except Exception:  # noqa: BLE001 - advice only: a recipe that no longer loads gets none
        return None
    now = job_plan.plan_input(job)
    for inp, plan in options:
        if plan.per_gpu_peak_gib >= current:
            continue  # the layout that ran out predicted this much: the next one must need less

        key = (inp.nodes, inp.gpus_per_node, inp.zero_stage, inp.micro_batch, inp.offload_optimizer, inp.offload_param)
        if key != (now.nodes, now.gpus_per_node, now.zero_stage, now.micro_batch, now.offload_optimizer, now.offload_param):
            sets = [f"layout.nodes={inp.nodes}", f"layout.gpus_per_node={inp.gpus_per_node}",
                    f"deepspeed.zero_stage={inp.zero_stage}", f"training.per_device_train_batch_size={inp.micro_batch}",
                    f"deepspeed.offload_optimizer_device={inp.offload_optimizer}",
                    f"deepspeed.offload_param_device={inp.offload_param}"]
            return sets, job_plan.describe(inp)
    return None
