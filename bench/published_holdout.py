"""Out-of-sample published GPU-memory measurements (docs/memory-model.md §9b, "holdout").

bench/published.py holds the rows the planner's constants were fitted to; this file holds rows
from OTHER sources, gathered afterwards to check that the planner generalises. Nothing here was
used to fit a constant (a model term changed after this table existed is said so in the docs,
with the in-sample and holdout errors before and after, and leave-one-group-out errors for any
re-fitted constant).

Each row records what the source states and how it maps to a PlanInput:
* FSDP FULL_SHARD is planned as ZeRO-3 (weights, gradients and optimizer states sharded over
  all ranks, one wrapped block gathered at a time); FSDP ``cpu_offload`` (parameters,
  gradients and the optimizer step on the CPU) as ZeRO-3 offload_param + offload_optimizer
  cpu; FSDP NO_SHARD ("ddp" in Answer.AI's script) as plain DDP (stage 0).
* The figure the source measured: ``allocated`` (torch.cuda.max_memory_allocated),
  ``reserved`` (max_memory_reserved) or ``device`` (nvidia-smi / a monitor).
* ``expressible=False`` rows are listed with the reason and kept out of the error medians and
  of the verdict count (they are still printed, with the prediction).
* "GB" printed by a tool that divides by 1e9 (LitGPT: ``max_memory_allocated() / 1e9``) is
  converted to GiB; GiB stays GiB.

``python bench/published_holdout.py`` prints the table of docs/memory-model.md §9b;
tests/test_plan_holdout.py holds the planner to it.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from published import Point, evaluate, group_medians, table  # noqa: E402

from hpctune.plan import PlanInput, get_shape  # noqa: E402

GB = 1e9 / 2**30  # one decimal GB in GiB

ANSWERAI = "https://github.com/AnswerDotAI/fsdp_qlora/blob/main/benchmarks_03_2024.md"
PEFT_FSDP = "https://huggingface.co/docs/peft/accelerate/fsdp"
LITGPT = "https://github.com/Lightning-AI/litgpt/blob/main/tutorials/resource-tables.md"
FLAN_DS = ("https://github.com/philschmid/deep-learning-pytorch-huggingface/blob/main/training/"
           "deepseed-flan-t5-summarization.ipynb")
ZERO_BLOG = "https://huggingface.co/blog/zero-deepspeed-fairscale"
LITGPT_HUB = "https://github.com/Lightning-AI/litgpt/blob/main/config_hub/finetune/README.md"
ALPACA = "https://github.com/tatsu-lab/stanford_alpaca/blob/main/README.md"
FASTCHAT = "https://github.com/lm-sys/FastChat/blob/main/README.md"
ZEPHYR = "https://github.com/huggingface/alignment-handbook/tree/main/recipes/zephyr-7b-beta"
FSDP70B = "https://huggingface.co/blog/ram-efficient-pytorch-fsdp"
PHIL_FSDP = ("https://github.com/philschmid/deep-learning-pytorch-huggingface/blob/main/training/"
             "fsdp-qlora-distributed-llama3.ipynb")

# Card sizes as nvidia-smi reports the total (the profile's gpu_mem_gib), in GiB.
RTX_24 = 24.0      # RTX 3090 / Titan RTX: 24576 MiB (RTX 4090: 24564 MiB)
A10G = 22.49       # A10G: 23028 MiB
A100_40, A100_80, H100, V100_16 = 40.0, 80.0, 79.6, 15.78


class HPoint(Point):
    """A holdout row: a published Point plus whether hpctune can express the set-up."""

    def __init__(self, *a, expressible: bool = True, why: str = "", **kw):
        super().__init__(*a, **kw)
        self.expressible = expressible
        self.why = why


def _answerai(model, method, batch, ctx=2048, nodes_gpus=2, stage=3, off=False, gpu=RTX_24,
              gpu_model="rtx3090"):
    """Answer.AI fsdp_qlora train.py defaults: LoRA r=64 on q,k,v,gate,up,down (not o_proj),
    dropout 0.1, precision bf16 (pure bf16: model, adapters and AdamW states), FSDP
    FULL_SHARD with activation checkpointing, torch sdpa, dummy data of exactly ctx tokens."""
    return PlanInput(get_shape(model), method=method, lora_r=64,
                     lora_target_modules=("q_proj", "k_proj", "v_proj", "up_proj", "down_proj",
                                          "gate_proj"),
                     lora_dropout=0.1, zero_stage=stage,
                     offload_optimizer="cpu" if off else "none",
                     offload_param="cpu" if off else "none", micro_batch=batch, seq_len=ctx,
                     attn_implementation="sdpa", nodes=1, gpus_per_node=nodes_gpus,
                     gpu_mem_gib=gpu, gpu_model=gpu_model, cpu_ram_gib_per_node=128)


def _litgpt(model, method, batch, gpu=A100_40, seq=1304, r=8, targets=("q_proj", "v_proj"),
            dropout=0.05, gpu_model="a100"):
    """LitGPT resource tables (10/2023): finetune/lora.py, LoRA r=8 on query and value,
    dropout 0.05, --precision bf16-true (pure bf16), no activation checkpointing, torch sdpa,
    Alpaca padded to the batch's longest sample (1304 tokens for Llama 2), one A100 40GB."""
    return PlanInput(get_shape(model), method=method, lora_r=r, lora_target_modules=targets,
                     lora_dropout=dropout, zero_stage=0, micro_batch=batch, seq_len=seq,
                     gradient_checkpointing=False, attn_implementation="sdpa", nodes=1,
                     gpus_per_node=1, gpu_mem_gib=gpu, gpu_model=gpu_model,
                     cpu_ram_gib_per_node=256)


def _hub(model, method, batch, r, targets, dropout=0.05):
    """LitGPT config hub (2024): finetune_lora, bf16-true, no activation checkpointing,
    Alpaca2k cut at max_seq_length 512, one A10G 24GB; peak = max_memory_allocated / 1e9.
    QLoRA is bnb.nf4 without double quantization (bitsandbytes < 0.43.2 then)."""
    return _litgpt(model, method, batch, gpu=A10G, seq=512, r=r, targets=targets,
                   dropout=dropout, gpu_model="a10")


def _fsdp_full(model, gpus, batch, seq, gc, gpu, gpu_model, nodes=1, attn="sdpa"):
    """HF Trainer full fine-tuning with FSDP FULL_SHARD and bf16 mixed precision (fp32 shards:
    4 + 4 + 8 bytes per parameter, as ZeRO-3's 2 + 2 + 4 + 8), planned as ZeRO-3."""
    return PlanInput(get_shape(model), method="full", zero_stage=3, micro_batch=batch,
                     seq_len=seq, gradient_checkpointing=gc, attn_implementation=attn,
                     nodes=nodes, gpus_per_node=gpus, gpu_mem_gib=gpu, gpu_model=gpu_model,
                     cpu_ram_gib_per_node=1000)


def _flan(model, gpus, batch, precision, off, gpu, gpu_model):
    """philschmid's FLAN-T5 DeepSpeed run: full fine-tuning, Seq2SeqTrainer, ZeRO-3 (with
    offload: optimizer and parameters on CPU), sources padded to 500 tokens, targets to 129,
    no gradient checkpointing; the HF Trainer fills reduce_bucket_size = h^2 and
    stage3_prefetch_bucket_size = 0.9 h^2 ("auto")."""
    s = get_shape(model)
    h2 = s.hidden * s.hidden
    return PlanInput(s, method="full", precision=precision,
                     quant_storage_dtype="float32" if precision == "no" else "bfloat16",
                     zero_stage=3, offload_optimizer="cpu" if off else "none",
                     offload_param="cpu" if off else "none", micro_batch=batch, seq_len=500,
                     target_len=129, gradient_checkpointing=False, attn_implementation="eager",
                     task="seq2seq", nodes=1, gpus_per_node=gpus, gpu_mem_gib=gpu,
                     gpu_model=gpu_model, cpu_ram_gib_per_node=1100,
                     reduce_bucket_size=h2, prefetch_bucket_size=int(0.9 * h2))


def _stas(model, gpus, batch, precision, stage, off, load="float32"):
    """Stas Bekman's ZeRO blog (transformers 4.2, DeepSpeed 0.3): finetune_trainer.py on
    wmt_en_ro, max_source_length = max_target_length = 128, --freeze_embeds, no gradient
    checkpointing, Titan RTX / RTX 3090 24GB."""
    return PlanInput(get_shape(model), method="full", precision=precision,
                     quant_storage_dtype=load, zero_stage=stage,
                     offload_optimizer="cpu" if off else "none", micro_batch=batch, seq_len=128,
                     target_len=128, gradient_checkpointing=False, attn_implementation="eager",
                     task="seq2seq", nodes=1, gpus_per_node=gpus, gpu_mem_gib=RTX_24,
                     gpu_model="rtx", cpu_ram_gib_per_node=128)


def points() -> list[HPoint]:
    l7, l13, yi = "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "01-ai/Yi-34B"
    l70, m7 = "meta-llama/Llama-2-70b-hf", "mistralai/Mistral-7B-v0.2"
    seq2seq_full = ("seq2seq full fine-tuning: hpctune's seq2seq task trains LoRA only (rule "
                    "seq2seq-lora-only)")
    fsdp_fp32 = ("FSDP keeps the frozen weights in their fp32 load dtype (PEFT's script loads "
                 "float32) and casts per unit; DeepSpeed ZeRO-3 stores them in bf16")
    fsdp_q = ("FSDP-QLoRA loads the 4-bit model shard by shard (Answer.AI's loader / "
              "cpu_ram_efficient_loading); hpctune's DeepSpeed ZeRO-3 path loads the whole "
              "4-bit model on every GPU first (transformers gives a 4-bit model no zero.Init)")
    rows = [
        # --- Answer.AI FSDP-QLoRA benchmarks: peak reserved GiB per GPU, 2 x 24 GB
        *[HPoint("answerai", f"Llama-2-7B {m} FSDP 2x3090 bs{b} ctx{c}", ANSWERAI,
                 _answerai(l7, m, b, c), v, figure="reserved_peak_gib")
          for m, b, c, v in (("qlora", 1, 512, 4.98), ("qlora", 1, 2048, 5.21),
                             ("lora", 1, 512, 10.24), ("lora", 1, 2048, 10.22),
                             ("qlora", 4, 2048, 11.22), ("qlora", 10, 2048, 20.97),
                             ("lora", 4, 2048, 16.14), ("lora", 6, 2048, 21.35))],
        HPoint("answerai", "Llama-2-7B LoRA ctx512 (allocated)", ANSWERAI,
               _answerai(l7, "lora", 1, 512), 8.28, figure="allocated_peak_gib"),
        HPoint("answerai", "Llama-2-7B LoRA ctx2048 (allocated)", ANSWERAI,
               _answerai(l7, "lora", 1, 2048), 9.16, figure="allocated_peak_gib"),
        HPoint("answerai", "Llama-2-7B QLoRA NO_SHARD (DDP) bs8", ANSWERAI,
               _answerai(l7, "qlora", 8, stage=0), 20.94, figure="reserved_peak_gib"),
        HPoint("answerai", "Llama-2-7B LoRA NO_SHARD (DDP) bs4", ANSWERAI,
               _answerai(l7, "lora", 4, stage=0), 22.04, figure="reserved_peak_gib"),
        HPoint("answerai", "Llama-2-7B LoRA FSDP+offload 2x4090 bs10", ANSWERAI,
               _answerai(l7, "lora", 10, off=True, gpu_model="rtx4090"), 22.69,
               figure="reserved_peak_gib"),
        HPoint("answerai", "Llama-2-7B QLoRA FSDP+offload 2x4090 bs12", ANSWERAI,
               _answerai(l7, "qlora", 12, off=True, gpu_model="rtx4090"), 22.38,
               figure="reserved_peak_gib"),
        HPoint("answerai", "Yi-34B QLoRA FSDP 2x3090 bs2", ANSWERAI,
               _answerai(yi, "qlora", 2), 23.05, figure="reserved_peak_gib",
               note="the whole 4-bit model (18 GiB) fits one card: hpctune's load is no peak"),
        HPoint("answerai", "Yi-34B QLoRA FSDP+offload 2x3090 bs4", ANSWERAI,
               _answerai(yi, "qlora", 4, off=True), 22.98, figure="reserved_peak_gib"),
        HPoint("answerai", "Llama-2-70B QLoRA FSDP+offload 2x3090 bs2", ANSWERAI,
               _answerai(l70, "qlora", 2, off=True), 14.92, figure="reserved_peak_gib",
               expressible=False, why=fsdp_q),
        HPoint("answerai", "Mistral-7B QLoRA FSDP+offload 2x4090 bs12", ANSWERAI,
               _answerai(m7, "qlora", 12, off=True, gpu_model="rtx4090"), 22.54,
               figure="reserved_peak_gib"),
        HPoint("answerai", "Mistral-7B QLoRA FSDP+offload 2x4090 bs1 ctx24576", ANSWERAI,
               _answerai(m7, "qlora", 1, 24576, off=True, gpu_model="rtx4090"), 22.54,
               figure="reserved_peak_gib"),
        # --- PEFT FSDP guide: Llama-2-70B on one node, nvidia-smi style figures
        HPoint("peft-fsdp", "Llama-2-70B LoRA FSDP 8xH100 mb8 s2048", PEFT_FSDP,
               PlanInput(get_shape(l70), lora_r=8, lora_dropout=0.1, micro_batch=8,
                         seq_len=2048, gpu_mem_gib=H100, gpu_model="h100",
                         cpu_ram_gib_per_node=1800), 76.0,
               note="'72-80 GB (90-98%)' per GPU: the middle, 76", expressible=False,
               why=fsdp_fp32),
        HPoint("peft-fsdp", "Llama-2-70B QLoRA FSDP 2 GPUs mb2 s2048", PEFT_FSDP,
               PlanInput(get_shape(l70), method="qlora", lora_r=8, lora_dropout=0.1,
                         micro_batch=2, seq_len=2048, gpus_per_node=2, gpu_mem_gib=A100_80,
                         gpu_model="a100", cpu_ram_gib_per_node=400), 35.6,
               note="'35.6 GB/GPU' without CPU offloading", expressible=False, why=fsdp_q),
        HPoint("peft-fsdp", "Llama-2-70B QLoRA FSDP+offload 2x24GB mb2 s2048", PEFT_FSDP,
               PlanInput(get_shape(l70), method="qlora", lora_r=8, lora_dropout=0.1,
                         micro_batch=2, seq_len=2048, gpus_per_node=2,
                         offload_optimizer="cpu", offload_param="cpu", gpu_mem_gib=RTX_24,
                         gpu_model="rtx", cpu_ram_gib_per_node=400), 19.6,
               expressible=False, why=fsdp_q),
        HPoint("phil-fsdp", "Llama-3-70B QLoRA FSDP+offload 4xA10G s3072 bs1", PHIL_FSDP,
               PlanInput(get_shape("meta-llama/Meta-Llama-3-70B"), method="qlora", lora_r=16,
                         lora_dropout=0.05, micro_batch=1, seq_len=3072, gpus_per_node=4,
                         attn_implementation="sdpa", offload_optimizer="cpu",
                         offload_param="cpu", gpu_mem_gib=RTX_24, gpu_model="a10g",
                         cpu_ram_gib_per_node=192), 22.0,
               expressible=False, why=fsdp_q, note="'22 GB/GPU and 127 GB CPU RAM'"),
        # --- LitGPT resource tables: torch max_memory_allocated / 1e9, one A100 40GB
        *[HPoint("litgpt", f"{n} {lab} mb{b}", LITGPT, _litgpt(m, meth, b), v * GB,
                 figure="allocated_peak_gib",
                 **({} if dq else {"note": "nf4 without double quantization"}))
          for n, m, lab, meth, b, v, dq in (
              ("Llama-2-7B", l7, "LoRA bf16-true", "lora", 1, 21.30, True),
              ("Llama-2-7B", l7, "LoRA bf16-true", "lora", 2, 29.07, True),
              ("Llama-2-7B", l7, "QLoRA nf4-dq", "qlora", 1, 13.84, True),
              ("Llama-2-13B", l13, "LoRA bf16-true", "lora", 1, 38.12, True),
              ("Llama-2-13B", l13, "QLoRA nf4-dq", "qlora", 1, 22.55, True))],
        *[HPoint("litgpt", f"Llama-2-7B QLoRA nf4 mb1", LITGPT,
                 replace(_litgpt(l7, "qlora", 1), double_quant=False), 14.14 * GB,
                 figure="allocated_peak_gib")],
        *[HPoint("litgpt", f"{n} OOM", LITGPT, p, None, ran=False) for n, p in (
            ("Llama-2-7B LoRA mb4", _litgpt(l7, "lora", 4)),
            ("Llama-2-13B LoRA mb2", _litgpt(l13, "lora", 2)),
            ("Falcon-40B LoRA mb1", replace(_litgpt("tiiuae/falcon-40b", "lora", 1),
                                            lora_target_modules=("query_key_value",),
                                            seq_len=1079)),
            ("Falcon-40B QLoRA nf4-dq mb1", replace(_litgpt("tiiuae/falcon-40b", "qlora", 1),
                                                    lora_target_modules=("query_key_value",),
                                                    seq_len=1079)))],
        # --- LitGPT config hub (2024): one A10G, no checkpointing, max_seq_length 512
        HPoint("litgpt-hub", "Llama-2-7B LoRA r32 q,v mb2", LITGPT_HUB,
               _hub(l7, "lora", 2, 32, ("q_proj", "v_proj")), 19.77 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Llama-2-7B QLoRA nf4 r32 q,v mb2", LITGPT_HUB,
               replace(_hub(l7, "qlora", 2, 32, ("q_proj", "v_proj")), double_quant=False),
               13.68 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Llama-3-8B LoRA r32 q,v mb1", LITGPT_HUB,
               _hub("meta-llama/Meta-Llama-3-8B", "lora", 1, 32, ("q_proj", "v_proj")),
               19.73 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Llama-3-8B QLoRA nf4 r32 q,v mb2", LITGPT_HUB,
               replace(_hub("meta-llama/Meta-Llama-3-8B", "qlora", 2, 32, ("q_proj", "v_proj")),
                       double_quant=False), 17.41 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Mistral-7B LoRA r32 q,v mb2", LITGPT_HUB,
               _hub("mistralai/Mistral-7B-v0.1", "lora", 2, 32, ("q_proj", "v_proj")),
               20.66 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Mistral-7B QLoRA nf4 r32 q,v mb2", LITGPT_HUB,
               replace(_hub("mistralai/Mistral-7B-v0.1", "qlora", 2, 32, ("q_proj", "v_proj")),
                       double_quant=False), 14.29 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Falcon-7B LoRA r32 qkv mb1", LITGPT_HUB,
               _hub("tiiuae/falcon-7b", "lora", 1, 32, ("query_key_value",)), 16.69 * GB,
               figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Falcon-7B QLoRA nf4 r32 qkv mb1", LITGPT_HUB,
               replace(_hub("tiiuae/falcon-7b", "qlora", 1, 32, ("query_key_value",)),
                       double_quant=False), 9.44 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "TinyLlama-1.1B LoRA r32 all mb8", LITGPT_HUB,
               _hub("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "lora", 8, 32, "all-linear"),
               13.50 * GB, figure="allocated_peak_gib"),
        HPoint("litgpt-hub", "Gemma-7B LoRA r16 all mb1 (OOM)", LITGPT_HUB,
               _hub("google/gemma-7b", "lora", 1, 16, "all-linear", 0.1), None, ran=False),
        HPoint("litgpt-hub", "Gemma-2-9B LoRA r16 all mb1 (OOM)", LITGPT_HUB,
               _hub("google/gemma-2-9b", "lora", 1, 16, "all-linear", 0.1), None, ran=False),
        HPoint("litgpt-hub", "Gemma-2-9B QLoRA nf4 r16 all mb1", LITGPT_HUB,
               replace(_hub("google/gemma-2-9b", "qlora", 1, 16, "all-linear", 0.1),
                       double_quant=False), 20.92 * GB, figure="allocated_peak_gib"),
        # --- full fine-tuning that trained (FSDP FULL_SHARD / DeepSpeed ZeRO-3 recipes)
        HPoint("full-ft", "LLaMA-7B FSDP 4xA100-80G mb4 s512 (Alpaca)", ALPACA,
               _fsdp_full(l7, 4, 4, 512, False, A100_80, "a100"), None),
        HPoint("full-ft", "OPT-6.7B FSDP 4xA100-80G mb4 s512 (Alpaca)", ALPACA,
               _fsdp_full("facebook/opt-6.7b", 4, 4, 512, False, A100_80, "a100"), None),
        HPoint("full-ft", "Vicuna-7B FSDP 4xA100-40G mb2 s2048 GC (FastChat)", FASTCHAT,
               _fsdp_full(l7, 4, 2, 2048, True, A100_40, "a100", attn="flash_attention_2"), None),
        HPoint("full-ft", "Zephyr-7B SFT ZeRO-3 8x80G mb16 s2048 GC FA2", ZEPHYR,
               _fsdp_full("mistralai/Mistral-7B-v0.1", 8, 16, 2048, True, A100_80, "a100",
                          attn="flash_attention_2"), None),
        HPoint("full-ft", "Llama-2-70B FSDP 2x8 A100-80G mb1 s2048 GC FA2", FSDP70B,
               _fsdp_full(l70, 8, 1, 2048, True, A100_80, "a100", nodes=2,
                          attn="flash_attention_2"), None),
        # --- philschmid FLAN-T5 + DeepSpeed ZeRO-3: which batch trained, which went OOM
        HPoint("flan-t5-ds", "FLAN-T5-XL ZeRO-3 4xV100 fp32 (OOM)", FLAN_DS,
               _flan("google/flan-t5-xl", 4, 1, "no", False, V100_16, "v100"), None, ran=False),
        HPoint("flan-t5-ds", "FLAN-T5-XL ZeRO-3 8xV100 fp32 bs1", FLAN_DS,
               _flan("google/flan-t5-xl", 8, 1, "no", False, V100_16, "v100"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XL ZeRO-3 8xA100-40G bf16 bs72", FLAN_DS,
               _flan("google/flan-t5-xl", 8, 72, "bf16", False, A100_40, "a100"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XL ZeRO-3 offload 4xV100 fp32 bs8", FLAN_DS,
               _flan("google/flan-t5-xl", 4, 8, "no", True, V100_16, "v100"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XL ZeRO-3 offload 8xV100 fp32 bs8", FLAN_DS,
               _flan("google/flan-t5-xl", 8, 8, "no", True, V100_16, "v100"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XXL ZeRO-3 8xA100-40G bf16 bs8", FLAN_DS,
               _flan("google/flan-t5-xxl", 8, 8, "bf16", False, A100_40, "a100"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XXL ZeRO-3 offload 4xV100 fp32 (OOM)", FLAN_DS,
               _flan("google/flan-t5-xxl", 4, 1, "no", True, V100_16, "v100"), None, ran=False),
        HPoint("flan-t5-ds", "FLAN-T5-XXL ZeRO-3 offload 8xV100 fp32 (OOM)", FLAN_DS,
               _flan("google/flan-t5-xxl", 8, 1, "no", True, V100_16, "v100"), None, ran=False),
        HPoint("flan-t5-ds", "FLAN-T5-XXL ZeRO-3 offload 4xA10G bf16 bs24", FLAN_DS,
               _flan("google/flan-t5-xxl", 4, 24, "bf16", True, RTX_24, "a10g"), None),
        HPoint("flan-t5-ds", "FLAN-T5-XXL ZeRO-3 offload 8xA100-40G bf16 bs48", FLAN_DS,
               _flan("google/flan-t5-xxl", 8, 48, "bf16", True, A100_40, "a100"), None),
        # --- Stas Bekman's ZeRO blog: t5-large on 2 x Titan RTX, t5-3b on one RTX 3090
        HPoint("zero-blog", "t5-large DDP fp32 2 GPUs bs16", ZERO_BLOG,
               _stas("google-t5/t5-large", 2, 16, "no", 0, False), None),
        HPoint("zero-blog", "t5-large DDP fp16 (amp) 2 GPUs bs20", ZERO_BLOG,
               _stas("google-t5/t5-large", 2, 20, "fp16", 0, False), None),
        HPoint("zero-blog", "t5-large ZeRO-2 fp16 2 GPUs bs40", ZERO_BLOG,
               _stas("google-t5/t5-large", 2, 40, "fp16", 2, False), None),
        HPoint("zero-blog", "t5-large ZeRO-2 offload fp16 2 GPUs bs50", ZERO_BLOG,
               _stas("google-t5/t5-large", 2, 50, "fp16", 2, True), None),
        HPoint("zero-blog", "t5-3b one GPU fp16 (amp) bs1 (OOM)", ZERO_BLOG,
               _stas("google-t5/t5-3b", 1, 1, "fp16", 0, False), None, ran=False),
        HPoint("zero-blog", "t5-3b ZeRO-2 offload fp16 one GPU bs20", ZERO_BLOG,
               _stas("google-t5/t5-3b", 1, 20, "fp16", 2, True), None),
        HPoint("zero-blog", "t5-3b ZeRO-2 offload fp16 one GPU bs30 (OOM)", ZERO_BLOG,
               _stas("google-t5/t5-3b", 1, 30, "fp16", 2, True), None, ran=False),
    ]
    for p in rows:  # full fine-tuning of an encoder-decoder: not a recipe hpctune accepts
        if p.inp.task == "seq2seq" and p.inp.method == "full":
            p.expressible, p.why = False, seq2seq_full
    return rows


def summary(pts) -> dict:
    """Median |error| per group and overall, and the wrong verdicts, over expressible rows."""
    ok = [p for p in pts if p.expressible]
    med = group_medians(ok)
    errs = [abs(p.result["error"]) for p in ok if p.result["error"] is not None and not p.boundary]
    wrong = [p.label for p in ok if not p.result["verdict_ok"]]
    return {"groups": med, "all": statistics.median(errs) if errs else None, "n_err": len(errs),
            "wrong": wrong, "n": len(ok)}


def main() -> None:
    pts = evaluate(points())
    print(table(pts))
    print()
    for p in pts:
        if not p.expressible:
            print(f"not expressible: {p.label}: {p.why}")
    s = summary(pts)
    print()
    for g, m in s["groups"].items():
        print(f"median |error| {g}: {m * 100:.1f}%")
    print(f"median |error| all: {s['all'] * 100:.1f}% over {s['n_err']} rows; wrong verdicts: "
          f"{len(s['wrong'])} of {s['n']} expressible rows {s['wrong']}")


if __name__ == "__main__":
    main()
