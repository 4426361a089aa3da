"""The planner seen from a Job: build the PlanInput, estimate, rank the layouts that fit.

The memory model itself (memory.py, shapes.py, search.py) knows nothing of profiles and
recipes; this module is the only bridge, so each recipe field maps to the plan in one place.
It takes an already resolved Job and imports neither hpctune.job nor the rules: the
memory-fits rule (hpctune/rules/memory.py) and the auto layout (hpctune/prepare.py) call it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from hpctune import policy
from hpctune.errors import ConfigError

from . import calibration, timing
from .inputs import PlanInput
from .memory import DEFAULT_MARGIN_GIB, Plan, estimate
from .search import search
from .shapes import ModelShape, get_shape, shape_from_config

# The built-in tiny model (hpctune/train/tiny.py builds it with these dimensions).
_TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 390,
               "tie_word_embeddings": False, "max_position_embeddings": 256}


def model_shape(recipe) -> ModelShape:
    """The recipe's model shape: built-in table, a local folder's config.json, or the tiny model."""
    name = recipe.model.model_name_or_path
    field = "model.model_name_or_path"
    if name.startswith("hpctune:"):
        cache = Path(os.environ.get("HPCTUNE_CACHE") or Path.home() / ".cache" / "hpctune") / "tiny"
        try:
            built = sorted(cache.glob(f"{name.split(':', 1)[1]}*/config.json"))
            cfg = json.loads(built[-1].read_text()) if built else _TINY_LLAMA
        except (OSError, ValueError):  # a cache this user cannot read (or a half-written file)
            cfg = _TINY_LLAMA
        return shape_from_config(cfg, name)
    base = str(Path(recipe.source).resolve().parent) if recipe.source else None
    try:
        return get_shape(os.path.expanduser(name), base_dir=base)
    except KeyError as e:
        raise ConfigError(recipe.source, field, f"the planner does not know this model's shape: {e.args[0]}; "
                                                "give a local folder with config.json, or a known hub name") from None
    except ValueError as e:
        raise ConfigError(recipe.source, field, str(e)) from None


def plan_input(job, shape: ModelShape | None = None) -> PlanInput:
    """Every recipe and profile value the memory model depends on, for the resolved layout."""
    rec, node = job.recipe, job.profile.node
    targets = rec.method.lora_target_modules
    cpu_only = node.gpus_per_node == 0
    try:
        return PlanInput(
            shape=shape or model_shape(rec),
            method=rec.method.type, lora_r=rec.method.lora_r, lora_dropout=rec.method.lora_dropout,
            lora_target_modules=targets if isinstance(targets, str) else tuple(targets),
            quant_bits=rec.method.quant_bits, double_quant=rec.method.use_nested_quant,
            # the dtype the node loads the base in (full fine-tuning without DeepSpeed: fp32
            # master weights under autocast unless model.torch_dtype asks for pure half)
            quant_storage_dtype=policy.load_dtype(rec, deepspeed=rec.deepspeed.zero_stage > 0),
            precision=rec.precision,
            zero_stage=rec.deepspeed.zero_stage, zero3_init=rec.deepspeed.zero3_init_flag,
            offload_optimizer=rec.deepspeed.offload_optimizer_device,
            offload_param=rec.deepspeed.offload_param_device,
            micro_batch=rec.training.per_device_train_batch_size, seq_len=rec.data.max_seq_len,
            # seq2seq without max_target_len: labels are padded to the longest one, unknown
            # here; plan with the source length (an upper bound for class names)
            target_len=(rec.data.max_target_len or 0) if rec.task == "seq2seq" else 0,
            packing=rec.data.packing,
            gradient_checkpointing=rec.training.gradient_checkpointing,
            attn_implementation=rec.model.attn_implementation,
            nodes=job.nodes, gpus_per_node=job.procs_per_node, gpu_model=node.gpu_model,
            # CPU-only nodes: each process's "device" memory is the node's RAM share.
            gpu_mem_gib=node.ram_gib / job.procs_per_node if cpu_only else node.gpu_mem_gib,
            cpu_ram_gib_per_node=node.ram_gib,
            task=rec.task,
        )
    except (KeyError, ValueError) as e:
        raise ConfigError(rec.source, "method.lora_target_modules" if isinstance(e, KeyError) else "",
                          str(e.args[0] if e.args else e)) from None


def corrections(job) -> dict:
    """The cluster's stored correction factors (hpctune plan --calibrate), 1.0 when none."""
    return calibration.load(job.profile.name)


def plan(job, margin_gib: float = DEFAULT_MARGIN_GIB) -> Plan:
    return estimate(plan_input(job), margin_gib, correction=corrections(job)["memory"])


def workload(job) -> timing.Workload:
    """The recipe and profile values the time model needs beyond the layout."""
    rec, net = job.recipe, job.profile.network
    t = rec.training
    return timing.Workload(
        train_samples=rec.data.train_samples or _count_rows(job),
        mean_sample_tokens=rec.data.mean_sample_tokens, epochs=float(t.num_train_epochs),
        max_steps=t.max_steps, gradient_accumulation_steps=t.gradient_accumulation_steps,
        save_steps=t.save_steps if t.save_strategy == "steps" else None,
        intra_node_gbps=net.intra_node_gbps, inter_node_gbps=net.inter_node_gbps,
        time_factor=corrections(job)["step_time"])


def time_plan(job, inp: PlanInput | None = None) -> timing.TimePlan:
    """Step time, save time, steps and time per epoch, GPU-hours and the advice (time limit
    with requeues, warning lead, checkpoint interval) for the job's layout. The function the
    checkpoint-cadence rule reads (docs/memory-model.md section 12)."""
    tp = timing.estimate_time(inp or plan_input(job), workload(job))
    limit = None
    if job.partition is not None:
        from hpctune.timefmt import parse_minutes
        limit = parse_minutes(job.partition.max_time, job.profile.source, "max_time")
    tp.advice = timing.advise(tp, max_time_minutes=limit, max_attempts=job.profile.preemption.max_attempts)
    return tp


def _count_rows(job) -> int | None:
    """Rows of a local .jsonl train file (one per line; cheap), else None."""
    name = job.recipe.data.dataset_name
    if not name.endswith(".jsonl"):
        return None
    p = Path(os.path.expanduser(name))
    if not p.is_absolute() and not p.exists() and job.recipe.source:
        p = Path(job.recipe.source).resolve().parent / p
    try:
        with open(p, "rb") as fh:
            return sum(1 for line in fh if line.strip()) or None
    except OSError:
        return None


def describe(inp: PlanInput) -> str:
    off = "" if inp.offload_optimizer == inp.offload_param == "none" else \
        f", offload optimizer={inp.offload_optimizer} param={inp.offload_param}"
    return (f"{inp.nodes} node(s) x {inp.gpus_per_node} GPU(s), ZeRO-{inp.zero_stage}{off}, "
            f"micro batch {inp.micro_batch}")


def alternatives(job, limit: int = 4, margin_gib: float = DEFAULT_MARGIN_GIB) -> list[tuple[PlanInput, Plan]]:
    """Layouts that fit this profile's partition, best first (plan.search's one ranking:
    offload last, then allocation units, GPUs, ZeRO stage; smaller micro batches only if
    nothing fits at the recipe's own)."""
    node = job.profile.node
    max_nodes = min(job.partition.max_nodes if job.partition else 1, 16)
    gpn = sorted({g for g in (1, 2, 4, 8, node.gpus_per_node) if 0 < g <= max(node.gpus_per_node, 1)})
    return search(plan_input(job), max_nodes=max_nodes, gpus_per_node_options=gpn,
                  exclusive=job.profile.exclusive, zero_stages=(0, 2, 3), margin_gib=margin_gib)[:limit]


def choose_layout(probe):
    """The recipe of ``probe`` (a Job resolved at 1 node x all GPUs) with `layout.nodes: auto`
    replaced by the best fitting layout (nodes, GPUs, ZeRO, offload, micro batch). Raises
    ConfigError (rule memory-fits) when nothing fits."""
    recipe = probe.recipe
    best = alternatives(probe, limit=1)
    if not best:
        raise ConfigError(recipe.source, "layout.nodes", f"auto: no layout of up to "
                          f"{probe.partition.max_nodes if probe.partition else 1} node(s) fits {recipe.model.model_name_or_path} "
                          f"on cluster {probe.profile.name!r}", rule="memory-fits")
    inp = best[0][0]
    ds = replace(recipe.deepspeed, zero_stage=inp.zero_stage, offload_optimizer_device=inp.offload_optimizer,
                 offload_param_device=inp.offload_param)
    tr = replace(recipe.training, per_device_train_batch_size=inp.micro_batch)
    lay = replace(recipe.layout, nodes=inp.nodes, gpus_per_node=inp.gpus_per_node)
    return replace(recipe, deepspeed=ds, training=tr, layout=lay)
