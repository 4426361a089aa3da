"""The calibration grid: which (model, method, engine, micro batch, sequence) points to run."""

from __future__ import annotations

import itertools
import json

from hpctune.plan import PlanInput, estimate, get_shape

MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1")
METHODS = ("lora", "qlora", "full")
STAGES = (0, 3)
POINTS = ((1, 512), (1, 2048), (4, 1024), (1, 8192), (8, 2048))


def plan_input(row: dict, gpu_gib: float, gpu_model: str = "") -> PlanInput:
    return PlanInput(get_shape(row["model"]), method=row["method"], lora_r=16,
                     lora_target_modules="all-linear", lora_dropout=0.0,
                     zero_stage=row["zero_stage"], nodes=1, gpus_per_node=1,
                     micro_batch=row["micro_batch"], seq_len=row["seq_len"],
                     gradient_checkpointing=True, attn_implementation="sdpa",
                     gpu_mem_gib=gpu_gib, gpu_model=gpu_model, cpu_ram_gib_per_node=128)


def grid(gpu_gib: float, gpu_model: str = "", headroom: float = 0.9) -> list[dict]:
    """Every point whose predicted device figure stays under ``headroom`` of the GPU (the
    grid must run, not go out of memory), smallest first."""
    rows = []
    for model, method, stage, (mb, seq) in itertools.product(MODELS, METHODS, STAGES, POINTS):
        row = {"model": model, "method": method, "zero_stage": stage, "micro_batch": mb,
               "seq_len": seq}
        pred = estimate(plan_input(row, gpu_gib, gpu_model))
        if pred.device_used_gib <= headroom * gpu_gib:
            row["predicted_device_gib"] = round(pred.device_used_gib, 3)
            rows.append(row)
    rows.sort(key=lambda r: r["predicted_device_gib"])
    return rows


def write(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
