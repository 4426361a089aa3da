"""Published GPU-memory measurements the planner's constants are fitted to (docs §9).

Each row is one set-up from a public source, written as the PlanInput hpctune would build for
it, with the measured figure, the tool that measured it (which of the plan's three figures it
compares with) and whether the source ran at all. ``python bench/published.py`` prints the
table of docs/memory-model.md §9; tests/test_plan_published.py holds the planner to it.

Reading of the sources (stated once here, applied to every row):
* "GB" in a source that measured with torch counters or nvidia-smi is read as GiB: both tools
  print MiB (the PEFT examples' ``b2mb`` divides by 2**20) and the authors divide by 1024.
* Where a source names no attention kernel, the default of its time is taken (sdpa); where it
  names no gradient checkpointing for a long sequence, it is on (the frameworks' default).
* A row with ``ran=False`` went out of memory in the source; ``boundary`` rows are the
  longest sequence that still ran on a card of that size (the peak is at most the card).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpctune.plan import PlanInput, estimate, get_shape  # noqa: E402

PEFT_GUIDE = "https://huggingface.co/docs/peft/accelerate/deepspeed"
PEFT_README = "https://github.com/huggingface/peft/blob/main/README.md"
LLAMA_FACTORY = "https://github.com/hiyouga/LLaMA-Factory/wiki/Performance-comparison"
UNSLOTH = "https://github.com/unslothai/unsloth/blob/main/README.md"
FALCON_BLOG = "https://huggingface.co/blog/falcon-180b"

A100_80, A100_40, H100 = 80.0, 40.0, 79.6


@dataclass
class Point:
    group: str
    label: str
    source: str
    inp: PlanInput
    measured_gib: float | None
    """The published peak per GPU (None: only whether it ran is known)."""
    figure: str = "device_used_gib"
    """Which plan figure the measurement compares with (allocated_peak_gib for torch counters)."""
    ran: bool = True
    boundary: bool = False
    note: str = ""
    result: dict = field(default_factory=dict)


def _llama70b(**kw):
    return PlanInput(get_shape("meta-llama/Llama-2-70b-hf"), gpu_mem_gib=H100, gpu_model="h100",
                     cpu_ram_gib_per_node=1800, **kw)


def _twitter(model, **kw):
    """PEFT's twitter_complaints examples: batch 8, texts padded to 64 tokens, labels of a few
    tokens, fp32 (mixed precision no), no checkpointing, one A100 80GB, LoRA r=8 default
    targets, dropout 0.1."""
    s = get_shape(model)
    base = dict(method="lora", lora_target_modules=None, precision="no",
                quant_storage_dtype="float32", micro_batch=8, seq_len=64,
                gradient_checkpointing=False, attn_implementation="eager", nodes=1,
                gpus_per_node=1, gpu_mem_gib=A100_80, gpu_model="a100", cpu_ram_gib_per_node=128)
    if s.encoder_decoder:
        base.update(task="seq2seq", target_len=4)
    base.update(kw)
    return PlanInput(s, **base)


def _lf(method, seq, batch, attn="flash_attention_2"):
    """LLaMA-Factory's comparison: Llama-2-7B, LoRA r=8 on all linear layers, bf16, gradient
    checkpointing (its default), one A100 40GB."""
    return PlanInput(get_shape("meta-llama/Llama-2-7b-hf"), method=method, lora_r=8,
                     lora_target_modules="all-linear", lora_dropout=0.0, zero_stage=0,
                     nodes=1, gpus_per_node=1, micro_batch=batch, seq_len=seq,
                     attn_implementation=attn, gpu_mem_gib=A100_40, gpu_model="a100",
                     double_quant=True, cpu_ram_gib_per_node=256)


def _unsloth(seq, gpu_gib):
    """Unsloth's README benchmark, "Hugging Face + FA2" column: Llama 3.1 8B QLoRA (bnb 4-bit),
    LoRA r=32 on all linear layers, batch 1, sequences padded to the length, checkpointing."""
    return PlanInput(get_shape("meta-llama/Llama-3.1-8B"), method="qlora", lora_r=32,
                     lora_target_modules="all-linear", lora_dropout=0.0, zero_stage=0,
                     nodes=1, gpus_per_node=1, micro_batch=1, seq_len=seq,
                     attn_implementation="flash_attention_2", gpu_mem_gib=gpu_gib,
                     cpu_ram_gib_per_node=128)


def points() -> list[Point]:
    t0, mt0, bloomz = "bigscience/T0_3B", "bigscience/mt0-xxl", "bigscience/bloomz-7b1"
    off = dict(zero_stage=3, offload_optimizer="cpu", offload_param="cpu")
    return [
        # --- the guide's reference workloads (nvidia-smi style, and the offload log)
        Point("reference", "Llama-2-70B LoRA ZeRO-3 8xH100 mb8 s2048", PEFT_GUIDE,
              _llama70b(), 64.0, note="'64 GB per GPU (80%)'"),
        Point("reference", "Llama-2-70B QLoRA ZeRO-3 2xA100-40G mb2 s2048", PEFT_GUIDE,
              replace(_llama70b(), method="qlora", micro_batch=2, gpus_per_node=2,
                      gpu_mem_gib=A100_40, gpu_model="a100", cpu_ram_gib_per_node=400), 36.6),
        Point("reference", "T0_3B LoRA ZeRO-3 + CPU offload, 1 GPU", PEFT_GUIDE,
              _twitter(t0, **off), 9404 / 1024, figure="allocated_peak_gib",
              note="log of the guide's seq2seq example (max_memory_allocated)"),
        # --- PEFT README table (TorchTracemalloc: max_memory_allocated), one A100 80GB
        Point("peft-readme", "T0_3B full fine-tuning, fp32, 1 GPU", PEFT_README,
              _twitter(t0, method="full", zero_stage=0), 47.14, figure="allocated_peak_gib"),
        Point("peft-readme", "T0_3B LoRA, plain PyTorch", PEFT_README,
              _twitter(t0, zero_stage=0), 14.4, figure="allocated_peak_gib"),
        Point("peft-readme", "mt0-xxl LoRA, plain PyTorch", PEFT_README,
              _twitter(mt0, zero_stage=0), 56.0, figure="allocated_peak_gib"),
        Point("peft-readme", "mt0-xxl LoRA, ZeRO-3 + CPU offload", PEFT_README,
              _twitter(mt0, **off), 22.0, figure="allocated_peak_gib"),
        Point("peft-readme", "bloomz-7b1 LoRA, plain PyTorch", PEFT_README,
              _twitter(bloomz, zero_stage=0), 32.0, figure="allocated_peak_gib"),
        Point("peft-readme", "bloomz-7b1 LoRA, ZeRO-3 + CPU offload", PEFT_README,
              _twitter(bloomz, **off), 18.1, figure="allocated_peak_gib"),
        Point("peft-readme", "mt0-xxl full fine-tuning (OOM)", PEFT_README,
              _twitter(mt0, method="full", zero_stage=0), None, ran=False),
        Point("peft-readme", "bloomz-7b1 full fine-tuning (OOM)", PEFT_README,
              _twitter(bloomz, method="full", zero_stage=0), None, ran=False),
        # --- LLaMA-Factory: Llama-2-7B on one A100 40GB
        Point("llama-factory", "LoRA bf16 mb4 s1024 (HF, sdpa)", LLAMA_FACTORY,
              _lf("lora", 1024, 4, "sdpa"), 18.0),
        Point("llama-factory", "LoRA bf16 mb4 s1024 (HF+FA2)", LLAMA_FACTORY,
              _lf("lora", 1024, 4), 17.0),
        Point("llama-factory", "QLoRA mb4 s1024 (HF, sdpa)", LLAMA_FACTORY,
              _lf("qlora", 1024, 4, "sdpa"), 9.0),
        *[Point("llama-factory", f"QLoRA mb1 s{s} (FA2)", LLAMA_FACTORY, _lf("qlora", s, 1), m)
          for s, m in ((1024, 6.0), (2048, 7.0), (4096, 9.0), (8192, 12.0), (16384, 19.0),
                       (32768, 32.0))],
        Point("llama-factory", "QLoRA mb1 s65536 (FA2, OOM)", LLAMA_FACTORY,
              _lf("qlora", 65536, 1), None, ran=False),
        # --- Unsloth README: longest sequence HF + FA2 trains, Llama 3.1 8B QLoRA
        *[Point("unsloth-boundary", f"Llama-3.1-8B QLoRA s{s} on {g:g} GB", UNSLOTH,
                _unsloth(s, g), g, boundary=True) for s, g in
          ((2551, 16.0), (5789, 24.0), (28454, 80.0))],
        Point("unsloth-boundary", "Llama-3.1-8B QLoRA s1024 on 8 GB (OOM)", UNSLOTH,
              _unsloth(1024, 8.0), None, ran=False),
        # --- Falcon-180B blog: configurations that trained
        Point("falcon-blog", "Falcon-180B LoRA ZeRO-3 2x8 A100-80G", FALCON_BLOG,
              PlanInput(get_shape("tiiuae/falcon-180B"), nodes=2, gpus_per_node=8, micro_batch=1,
                        seq_len=2048, gpu_mem_gib=A100_80, gpu_model="a100",
                        cpu_ram_gib_per_node=1000), None),
        Point("falcon-blog", "Falcon-180B full fine-tuning ZeRO-3 8x8 A100-80G", FALCON_BLOG,
              PlanInput(get_shape("tiiuae/falcon-180B"), method="full", nodes=8, gpus_per_node=8,
                        micro_batch=1, seq_len=2048, gpu_mem_gib=A100_80, gpu_model="a100",
                        cpu_ram_gib_per_node=1000), None),
    ]


def evaluate(pts: list[Point] | None = None) -> list[Point]:
    """Fill each point's result: prediction, error, verdict."""
    pts = points() if pts is None else pts
    for p in pts:
        plan = estimate(p.inp)
        pred = getattr(plan, p.figure)
        err = None
        if p.measured_gib is not None:
            err = (pred - p.measured_gib) / p.measured_gib
        verdict_ok = plan.fits == p.ran
        p.result = {"predicted_gib": pred, "error": err, "fits": plan.fits,
                    "verdict_ok": verdict_ok}
    return pts


def group_medians(pts: list[Point]) -> dict[str, float]:
    """Median absolute error per group over the rows with a figure (boundary rows excluded:
    their figure is an upper bound)."""
    out: dict[str, list[float]] = {}
    for p in pts:
        if p.result.get("error") is not None and not p.boundary:
            out.setdefault(p.group, []).append(abs(p.result["error"]))
    return {g: statistics.median(v) for g, v in out.items()}


def table(pts: list[Point]) -> str:
    lines = ["| group | set-up | measured | figure | predicted | error | verdict | source |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pts:
        r = p.result
        meas = "OOM" if not p.ran else ("ran" if p.measured_gib is None else
                                        (f"<= {p.measured_gib:g}" if p.boundary else f"{p.measured_gib:g}"))
        fig = {"device_used_gib": "device", "allocated_peak_gib": "allocated",
               "reserved_peak_gib": "reserved"}[p.figure]
        err = "" if r["error"] is None else f"{r['error'] * 100:+.1f}%"
        verdict = ("fits" if r["fits"] else "does not fit") + ("" if r["verdict_ok"] else " (WRONG)")
        lines.append(f"| {p.group} | {p.label} | {meas} | {fig} | {r['predicted_gib']:.1f} | {err} "
                     f"| {verdict} | {p.source} |")
    return "\n".join(lines)


def main() -> None:
    pts = evaluate()
    print(table(pts))
    print()
    allerr = [abs(p.result["error"]) for p in pts if p.result["error"] is not None and not p.boundary]
    for g, m in group_medians(pts).items():
        print(f"median |error| {g}: {m * 100:.1f}%")
    print(f"median |error| all: {statistics.median(allerr) * 100:.1f}% over {len(allerr)} rows; "
          f"wrong verdicts: {sum(not p.result['verdict_ok'] for p in pts)} of {len(pts)}")


if __name__ == "__main__":
    main()
