"""memory-fits and max-seq-len-positions: the one rules module that asks the planner (hpctune/plan/).

It runs last, and only when no other rule found an error: an inconsistent recipe (say,
parameter offload at ZeRO-2) is reported by the rule that owns that field, not as a
memory estimate of something that cannot run.
"""

from __future__ import annotations

from typing import Iterable

from hpctune import policy
from hpctune.errors import ConfigError
from hpctune.plan import job_plan
from hpctune.plan.memory import DEFAULT_MARGIN_GIB
from hpctune.rules.book import Finding, rule


@rule("memory-fits", "the memory plan fits the profile's GPUs and CPU RAM (hpctune plan); "
      "layout.nodes=auto finds a layout that does", scope="job", pains=(13, 16), only_if_clean=True)
def memory_fits(job) -> Iterable[Finding]:
    if job.profile.node.gpus_per_node == 0 or job.recipe.model.model_name_or_path.startswith("hpctune:"):
        return []  # CPU-only profiles and the built-in tiny model always fit here
    try:
        shape = job_plan.model_shape(job.recipe)
    except ConfigError as e:
        return [Finding("memory-fits", "warning", e.source, e.field, f"cannot plan memory: {e.message}",
                        "give a local folder with config.json to plan this model")]
    try:
        # as `hpctune plan` judges it: the cluster's stored calibration (plan --calibrate) applies
        p = job_plan.estimate(job_plan.plan_input(job, shape), correction=job_plan.corrections(job)["memory"])
    except (ConfigError, KeyError, ValueError):
        return []  # an inconsistent recipe: the rule that owns that field reports it
    if p.fits:
        return []
    node = job.profile.node
    where = (f"{p.per_gpu_peak_gib:.1f} GiB per GPU of {node.gpu_mem_gib:g}"
             if p.per_gpu_peak_gib > node.gpu_mem_gib - DEFAULT_MARGIN_GIB
             else f"{p.cpu_ram_peak_gib_per_node:.1f} GiB CPU RAM per node of {node.ram_gib:g}")
    best = job_plan.alternatives(job, limit=1)
    fix = (f"try {job_plan.describe(best[0][0])} ({best[0][1].per_gpu_peak_gib:.1f} GiB per GPU), or layout.nodes=auto"
           if best else "no layout on this cluster fits: a larger GPU, QLoRA, or a smaller model")
    notes = f" ({p.notes[0]})" if p.notes else ""
    return [Finding("memory-fits", "error", job.recipe.source, "layout", f"does not fit: {where}{notes}", fix)]


@rule("max-seq-len-positions", "sequence lengths within a model's learned positions (BART: 1024), "
      "known from the planner's shape", scope="job")
def max_seq_len_positions(job) -> Iterable[Finding]:
    rec = job.recipe
    try:
        shape = job_plan.model_shape(rec)
    except ConfigError:
        return []  # memory-fits says the shape is unknown; the node checks the model's config
    lengths = [("data.max_seq_len", rec.data.max_seq_len)]
    if rec.task == "seq2seq" and rec.data.max_target_len:
        lengths.append(("data.max_target_len", rec.data.max_target_len))
    out = []
    for field, length in lengths:
        found = policy.positions_problem(length, shape.learned_positions or None, learned=True)
        if found:
            out.append(Finding("max-seq-len-positions", "error", rec.source, field, found[1],
                               f"set {field}={shape.learned_positions} or less"))
    return out
