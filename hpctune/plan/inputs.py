"""What the memory and time models take: one layout of one recipe on one cluster, checked.

Below memory.py and activations.py (both read it), above engines.py and shapes.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engines import DTYPE_BYTES, Engine, engine_for
from .shapes import ModelShape

DS_MAX_LIVE_PARAMETERS = 1_000_000_000
"""DeepSpeed stage3_max_live_parameters default (elements)."""

_METHODS, _PRECISIONS = ("lora", "qlora", "full"), ("bf16", "fp16", "no")
_OFFLOADS, _ATTN = ("none", "cpu", "nvme"), ("flash_attention_2", "sdpa", "eager")


@dataclass(frozen=True)
class PlanInput:
    """Everything the estimate depends on; defaults are the guide's Llama-2-70B LoRA run."""

    shape: ModelShape
    """The network (hpctune.plan.shapes.get_shape)."""
    method: str = "lora"
    """"lora", "qlora" (LoRA on a bitsandbytes-quantized base) or "full"."""
    lora_r: int = 8
    """LoRA rank."""
    lora_target_modules: str | tuple[str, ...] | None = "all-linear"
    """"all-linear", a tuple of leaf names, or None for PEFT's per-model default."""
    lora_dropout: float = 0.1
    """LoRA dropout; above 0 each targeted layer stores a dropped copy of its input."""
    quant_bits: int = 4
    """QLoRA weight bits: 4 (nf4/fp4) or 8 (LLM.int8)."""
    double_quant: bool = True
    """bnb_4bit_use_double_quant: quantize the absmax constants to 8 bits."""
    bnb_keeps_input: bool = True
    """bitsandbytes before 0.43.2 keeps the input of every 4-bit layer for backward (CHANGELOG
    0.43.2, PR #1270). hpctune accepts bitsandbytes>=0.43.0 on the nodes and cannot see which
    one a node has, so the plan charges it (the safe side); False plans for >= 0.43.2."""
    quant_storage_dtype: str = "bfloat16"
    """The dtype the model is loaded in (the recipe's model dtype: torch_dtype, or for QLoRA
    bnb_4bit_quant_storage, which must equal it under ZeRO-3)."""
    precision: str = "bf16"
    """Mixed precision: "bf16", "fp16" or "no" (fp32 throughout)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage 1-3; 0 is no DeepSpeed: DDP on several GPUs, one process on one."""
    offload_optimizer: str = "none"
    """"none", "cpu" or "nvme": where Adam states (and fp32 gradients) live; stage >= 1."""
    offload_param: str = "none"
    """"none", "cpu" or "nvme": where parameter shards live between uses; stage 3 only."""
    micro_batch: int = 8
    """Sequences per GPU per forward pass."""
    seq_len: int = 2048
    """Tokens per sequence (encoder tokens for seq2seq): the longest batch, which sets the peak."""
    target_len: int = 0
    """Decoder tokens per sequence for seq2seq; 0 means seq_len."""
    gradient_checkpointing: bool = True
    """Keep only each block's input; recompute the block in backward."""
    attn_implementation: str = "flash_attention_2"
    """"flash_attention_2", "sdpa" (no s^2 tensor stored) or "eager" (stores b*heads*s^2)."""
    packing: bool = True
    """Sequences packed to seq_len (every batch full) or padded to the longest in the batch;
    the peak is the same (a full-length batch), the time differs (hpctune.plan.timing)."""
    nodes: int = 1
    """Machines in the job."""
    gpus_per_node: int = 8
    """GPUs (= training processes) per machine."""
    gpu_mem_gib: float = 80.0
    """Memory of one GPU as nvidia-smi reports its total (profile value)."""
    gpu_model: str = ""
    """GPU model name of the profile (hpctune.gpus), for the CUDA context and the timing."""
    cpu_ram_gib_per_node: float = 512.0
    """RAM of one machine available to the job."""
    task: str = "causal_lm"
    """"causal_lm" or "seq2seq" (must match the shape)."""
    zero3_init: bool = True
    """ZeRO-3 only: build the model already partitioned (zero3_init_flag), so no rank ever
    holds a whole unquantized copy on CPU."""
    max_live_parameters: int = DS_MAX_LIVE_PARAMETERS
    """stage3_max_live_parameters (elements)."""
    reduce_bucket_size: int = 0
    """reduce_bucket_size in elements; 0 = DeepSpeed's default (5e8)."""
    prefetch_bucket_size: int = 0
    """stage3_prefetch_bucket_size in elements; 0 = DeepSpeed's default (5e7)."""

    def __post_init__(self):
        if isinstance(self.lora_target_modules, list):  # keep the dataclass hashable
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        _check(self)

    @property
    def world(self) -> int:
        """GPUs over all nodes: ZeRO shards over all of them."""
        return self.nodes * self.gpus_per_node

    @property
    def engine(self) -> Engine:
        """The engine hpctune launches for this layout, with its dtypes (engines.py)."""
        return engine_for(self.method, self.precision, self.zero_stage, self.world,
                          self.quant_storage_dtype)


def _check(i: PlanInput) -> None:
    """Reject settings DeepSpeed/PEFT would reject, naming the field and the valid values."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    need(i.method in _METHODS, f"method must be one of {_METHODS}, got {i.method!r}")
    need(i.precision in _PRECISIONS, f"precision must be one of {_PRECISIONS}, got {i.precision!r}")
    need(i.zero_stage in (0, 1, 2, 3), f"zero_stage must be 0-3, got {i.zero_stage!r}")
    need(i.offload_optimizer in _OFFLOADS and i.offload_param in _OFFLOADS,
         f"offload_optimizer / offload_param must be one of {_OFFLOADS}")
    need(i.offload_param == "none" or i.zero_stage == 3, "offload_param needs zero_stage 3")
    need(i.offload_optimizer == "none" or i.zero_stage >= 1,
         "offload_optimizer needs ZeRO (stage >= 1)")
    need(i.attn_implementation in _ATTN, f"attn_implementation must be one of {_ATTN}")
    need(i.method != "qlora" or i.quant_bits in (4, 8), "quant_bits must be 4 or 8")
    need(i.quant_storage_dtype in DTYPE_BYTES, f"unknown dtype {i.quant_storage_dtype!r}")
    need(i.task in ("causal_lm", "seq2seq"), "task must be causal_lm or seq2seq")
    need((i.task == "seq2seq") == i.shape.encoder_decoder,
         f"task {i.task!r} does not match {i.shape.name} "
         f"(encoder_decoder={i.shape.encoder_decoder})")
    for name in ("micro_batch", "seq_len", "nodes", "gpus_per_node"):
        need(getattr(i, name) >= 1, f"{name} must be >= 1")
    need(i.target_len >= 0, "target_len must be >= 0")
    need(i.method == "full" or i.lora_r >= 1, "lora_r must be >= 1")
