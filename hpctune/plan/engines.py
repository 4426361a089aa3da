"""Which engine trains a layout, and the dtype of everything it keeps (docs/memory-model.md §2).

hpctune renders DeepSpeed (accelerate ``distributed_type: DEEPSPEED``) for ZeRO stages 1-3,
plain PyTorch DDP (``MULTI_GPU``) for stage 0 on more than one process, and one process
without any wrapper (``NO``) for stage 0 on one GPU (hpctune.job.Job.distributed_type). The
three keep different copies of the weights, checked against the installed code:

* DeepSpeed with bf16/fp16 (deepspeed 0.19.8 ``engine._configure_distributed_model`` ->
  ``_cast_module_mixed_precision``): every floating parameter is cast to the half dtype (a
  zero.Init model is built in it); the ZeRO optimizer keeps an fp32 master copy and fp32 Adam
  moments of the trainable parameters (``single_partition_of_fp32_groups`` / stage 3
  ``fp32_partitioned_groups_flat``), plus an fp32 gradient partition while it steps:
  2 + 2 + 4 + 8 bytes (+4 at the step). Precision "no": fp32 weights, no master copy.
* DDP or one process (transformers Trainer, torch ``adamw_torch_fused`` by default from
  torch 2.8): no master copy. Adam's moments take the parameter's dtype, so a model loaded in
  bf16 trains in pure bf16 (2 + 2 + 4 = 8 bytes per parameter) and a model loaded in fp32
  keeps 4 + 4 + 8 = 16 (with bf16 autocast copies of the weights on top). The recipe field
  that chooses is ``model.torch_dtype``: auto loads fp32 master weights for full fine-tuning
  under fp16/bf16 autocast (hpctune.policy.load_dtype; fp16 weights cannot be unscaled),
  bfloat16 asks for pure bf16.
* LoRA adapters: PEFT's default ``autocast_adapter_dtype`` makes them fp32 outside ZeRO-3
  (hpctune passes False under ZeRO-3: adapters take the base dtype); TRL casts the trainable
  parameters of a quantized (QLoRA) model to bf16 (sft_trainer), so QLoRA without DeepSpeed
  keeps bf16 adapters and bf16 moments (with fp16, hpctune upcasts them to fp32 again:
  hpctune.policy.upcast_adapters; small next to the 4-bit base).
* DDP keeps one more copy of the trainable gradients in its buckets
  (``gradient_as_bucket_view=False``); one process has no buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2,
               "uint8": 1, "int8": 1}


@dataclass(frozen=True)
class Engine:
    """What one process keeps, in bytes per parameter, and how ZeRO shards it."""

    kind: str
    """"deepspeed", "ddp" or "single"."""
    weight_bytes: int
    """Bytes of one unquantized base weight on the GPU."""
    param_bytes: int
    """Bytes of one trainable parameter (LoRA adapters; for full fine-tuning = weight_bytes)."""
    grad_bytes: int
    """Bytes of its gradient."""
    master_bytes: int
    """fp32 master copy (DeepSpeed with mixed precision), else 0."""
    moment_bytes: int
    """Adam's two moments together."""
    step_grad_bytes: int
    """fp32 gradient partition the ZeRO optimizer builds while it steps (0 outside DeepSpeed)."""
    ddp_buckets: bool
    """DDP keeps a second copy of the trainable gradients in its buckets."""
    autocast_weights: bool
    """Weights stored in fp32 but computed in bf16/fp16 by autocast (a cast copy per use)."""

    @property
    def optimizer_bytes(self) -> int:
        """Master copy + moments per trainable parameter."""
        return self.master_bytes + self.moment_bytes

    @property
    def uses_deepspeed(self) -> bool:
        return self.kind == "deepspeed"


def engine_for(method: str, precision: str, zero_stage: int, world: int, load_dtype: str) -> Engine:
    """The engine hpctune launches for these recipe settings, with its dtypes."""
    half = precision in ("bf16", "fp16")
    load_b = DTYPE_BYTES[load_dtype]
    if zero_stage >= 1:
        w = 2 if half else 4
        # LoRA adapters are cast with the module (ZeRO-1/2) or created in the zero.Init dtype
        # (ZeRO-3, autocast_adapter_dtype=False): the same dtype as the weights.
        return Engine("deepspeed", w, w, w, 4 if half else 0, 8, 4 if half else 0,
                      ddp_buckets=False, autocast_weights=False)
    kind = "ddp" if world > 1 else "single"
    if method == "full":
        p = load_b
    elif method == "qlora":
        p = 2  # TRL casts a quantized model's trainable parameters to bf16
    else:
        p = 4  # PEFT autocast_adapter_dtype: fp32 adapters
    return Engine(kind, load_b, p, p, 0, 2 * p, 0, ddp_buckets=kind == "ddp",
                  autocast_weights=half and load_b == 4)
