"""What the training does on each engine, decided from the recipe and the launch alone.

Pure Python, no torch: the node (``hpctune.train``) acts on these decisions and the rule book
(``hpctune check``, ``render``, ``submit``) reports them from the same functions, so the login
side says what the node will do. Each function names the library behaviour it answers to
(see docs/training-on-gpus.md and the GPU-path review, D-numbers).

An engine is what ``accelerate launch`` starts: DeepSpeed or not, its ZeRO stage, the number
of processes, and whether there is a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

# DeepSpeed's (and autocast's) compute dtype per recipe precision; "no" is fp32.
HALF_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
# Compute capability FlashAttention-2 needs (Ampere); its kernels do not exist below.
FLASH_ATTN_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Engine:
    deepspeed: bool
    zero_stage: int  # 0 without DeepSpeed
    world_size: int = 1
    cuda: bool = True

    @property
    def ddp(self) -> bool:
        """torch DistributedDataParallel: several processes without DeepSpeed."""
        return not self.deepspeed and self.world_size > 1

    @property
    def zero3(self) -> bool:
        return self.deepspeed and self.zero_stage == 3

    @classmethod
    def planned(cls, recipe, world_size: int, cuda: bool = True) -> "Engine":
        """The engine a job's layout starts (the accelerate config: DeepSpeed for ZeRO >= 1)."""
        stage = recipe.deepspeed.zero_stage
        return cls(deepspeed=stage > 0, zero_stage=stage, world_size=world_size, cuda=cuda)


def is_peft(recipe) -> bool:
    return recipe.method.type in ("lora", "qlora")


# --- gradient checkpointing (D3, D11) ---------------------------------------------------------

def use_reentrant(recipe, engine: Engine) -> bool:
    """``use_reentrant`` of gradient checkpointing as it runs on ``engine``.

    - PEFT under ZeRO-3: True. TRL forces it for the SFT trainer (sft_trainer.py, "PEFT +
      DeepSpeed ZeRO-3 requires reentrant checkpointing", trl#2514, until DeepSpeed#8130);
      the seq2seq loop follows the same rule for the same reason.
    - DDP with 2+ processes: False. A reentrant checkpoint runs its segment's backward as a
      separate backward pass, and DDP's reducer (find_unused_parameters=False, as
      transformers sets it with checkpointing) then marks a parameter ready twice: "Expected
      to mark a variable ready only once" at the first backward.
    - Anywhere else (one process, ZeRO-1/2): the recipe's value.
    """
    if engine.zero3 and is_peft(recipe):
        return True
    if engine.ddp:
        return False
    return recipe.training.use_reentrant


def use_reentrant_note(recipe, engine: Engine) -> str | None:
    """Why the value that runs differs from the recipe's, or None when they agree."""
    if not recipe.training.gradient_checkpointing:
        return None
    runs = use_reentrant(recipe, engine)
    if runs == recipe.training.use_reentrant:
        return None
    if runs:
        return ("is false, but PEFT under DeepSpeed ZeRO-3 needs reentrant checkpointing (TRL forces it): "
                "true runs")
    return (f"is true, but reentrant checkpointing crashes DDP with {engine.world_size} processes at the first "
            "backward (a parameter marked ready twice): false runs")


# --- dtypes (D1, D2, D17) ----------------------------------------------------------------------

def storage_dtype_problem(recipe, deepspeed: bool) -> str | None:
    """QLoRA 4-bit under DeepSpeed: the storage dtype must be DeepSpeed's precision dtype.

    Quantized models are never built under zero.Init (transformers loads them whole), so
    DeepSpeed, at every ZeRO stage, casts each floating parameter of the module to its
    precision dtype (engine.py ``_cast_module_mixed_precision``). A ``Params4bit`` stored as
    float16/bfloat16/float32 holds packed 4-bit codes viewed as floats: the cast converts the
    bit patterns numerically and the quantized weights become garbage, silently.
    """
    m = recipe.method
    if m.type != "qlora" or m.quant_bits != 4 or not deepspeed:
        return None
    want = HALF_DTYPE.get(recipe.precision)
    if want is None or m.bnb_4bit_quant_storage_dtype == want:
        return None
    return (f"is {m.bnb_4bit_quant_storage_dtype} but DeepSpeed runs precision {recipe.precision}: DeepSpeed casts "
            f"every parameter of a 4-bit model to {want}, which rewrites the packed 4-bit weights (silently wrong "
            f"training); the storage dtype must be {want}")


def load_dtype(recipe, deepspeed: bool) -> str:
    """The dtype the base weights are loaded in on this engine.

    Full fine-tuning with fp16/bf16 and no DeepSpeed trains under autocast, which needs fp32
    master weights: fp16 weights make the grad scaler stop ("Attempting to unscale FP16
    gradients"), bf16 weights train without master weights. So ``torch_dtype: auto`` loads
    float32 there. Under DeepSpeed the optimizer keeps fp32 master weights itself.
    """
    if (recipe.method.type == "full" and not deepspeed and recipe.precision in HALF_DTYPE
            and recipe.model.torch_dtype == "auto"):
        return "float32"
    return recipe.model_dtype


def full_fp16_problem(recipe, deepspeed: bool) -> str | None:
    """Full fine-tuning, fp16, no DeepSpeed, weights loaded as float16: cannot run."""
    if (recipe.method.type == "full" and not deepspeed and recipe.precision == "fp16"
            and recipe.model.torch_dtype == "float16"):
        return ("is float16 with full fine-tuning, precision fp16 and no DeepSpeed: the fp16 grad scaler "
                "refuses fp16 gradients ('Attempting to unscale FP16 gradients'); use torch_dtype auto (float32 "
                "master weights under autocast) or a DeepSpeed zero_stage")
    return None


def upcast_adapters(recipe, deepspeed: bool) -> bool:
    """QLoRA + fp16 without DeepSpeed: the trainable adapters must be float32.

    TRL casts every trainable parameter of a quantized model to bfloat16 (sft_trainer.py,
    after get_peft_model), and CUDA's fp16 grad scaler has no bfloat16 kernel
    (``_amp_foreach_non_finite_check_and_unscale_``, pytorch#127176): the first optimizer step
    fails. Under DeepSpeed the engine recasts them to fp16 and scales the loss itself.
    """
    return recipe.method.type == "qlora" and recipe.precision == "fp16" and not deepspeed


# --- placement (D20) ----------------------------------------------------------------------------

def device_map(engine: Engine, local_rank: int) -> dict | None:
    """Load the weights straight onto this rank's GPU unless ZeRO-3 shards them.

    Without it every rank first builds the whole model in CPU RAM (8 ranks x a 13 GB model)
    and the trainer then moves it. ZeRO-3 refuses a device_map (transformers
    integrations/accelerate.py: "DeepSpeed Zero-3 is not compatible with passing a device_map").
    """
    if not engine.cuda or engine.zero3:
        return None
    return {"": local_rank}


# --- data (D10) ----------------------------------------------------------------------------------

def packing_strategy(recipe) -> str:
    """TRL's packing strategy: best-fit that keeps every token (``bfd_split``) with FlashAttention.

    ``bfd`` truncates every sample longer than max_seq_len (TRL data_utils.pack_dataset), so
    multi-turn conversations lose their tails; ``bfd_split`` splits them instead, as the
    reference's concatenate-and-chunk packing kept every token. Both keep samples apart only
    through FlashAttention's position ids; other kernels get the classic ``wrapped`` packing.
    """
    return "bfd_split" if recipe.model.attn_implementation == "flash_attention_2" else "wrapped"


# --- FlashAttention on this node (D12) ------------------------------------------------------------

def flash_attention_problem(cuda: bool, capability: tuple[int, int] | None, import_error: str | None) -> str | None:
    """Why flash_attention_2 cannot run here, or None.

    The package must import (a wheel built for another torch or CUDA installs fine and fails
    at import, i.e. at model load, after the data preparation), and every GPU must be Ampere
    or newer (compute capability 8.0).
    """
    if not cuda:
        return "flash_attention_2 needs a GPU and none is visible here: use sdpa"
    if import_error is not None:
        return f"flash_attention_2 needs the flash-attn package, which does not import here ({import_error}): install a build for this torch/CUDA or use sdpa"
    if capability is not None and tuple(capability) < FLASH_ATTN_MIN_CAPABILITY:
        major, minor = capability
        return (f"flash_attention_2 needs compute capability {FLASH_ATTN_MIN_CAPABILITY[0]}.{FLASH_ATTN_MIN_CAPABILITY[1]} "
                f"(Ampere) or newer; this GPU has {major}.{minor}: use sdpa")
    return None


# --- ZeRO-3 initialisation (D14) -----------------------------------------------------------------

def zero3_init_flag_problem(recipe) -> str | None:
    """zero3_init_flag: false under ZeRO-3, which transformers 5 + accelerate 1.x ignore.

    What makes ``from_pretrained`` build a model sharded (deepspeed.zero.Init) is transformers'
    DeepSpeed config (``is_deepspeed_zero3_enabled``), and accelerate sets it whenever its
    DeepSpeed plugin is active, whatever the flag says: ``TrainingArguments`` on the SFT path
    (training_args.py -> ``DeepSpeedPlugin.set_deepspeed_weakref``) and ``AcceleratorState``
    for the seq2seq loop's plain Accelerator (state.py -> ``DeepSpeedPlugin.select``). So every
    non-quantized ZeRO-3 model is built sharded on both paths; 4-bit models never are.
    tests/test_train_engines.py checks that premise against the installed libraries.
    """
    ds = recipe.deepspeed
    if ds.zero_stage == 3 and not ds.zero3_init_flag:
        return ("is false, but with transformers 5 every ZeRO-3 model is built sharded (deepspeed.zero.Init) "
                "whatever the flag says (accelerate sets transformers' DeepSpeed config regardless), and 4-bit "
                "models never are: the flag has no effect; set it true")
    return None


# --- sequence length (D16) ------------------------------------------------------------------------

def positions_problem(max_seq_len: int, max_positions: int | None, learned: bool) -> tuple[str, str] | None:
    """(severity, message) when max_seq_len exceeds the model's positions, or None.

    Learned absolute positions (BART, GPT-2, OPT) have no row past the table: the lookup is
    an index error on CPU and a device-side assert that poisons the CUDA context on a GPU.
    Rotary models run past ``max_position_embeddings`` but were not trained there.
    """
    if not max_positions or max_seq_len <= max_positions:
        return None
    if learned:
        return ("error", f"is {max_seq_len} but the model has learned positions for {max_positions} tokens only "
                         f"(an index error / CUDA device-side assert); use max_seq_len <= {max_positions}")
    return ("warning", f"is {max_seq_len}, above the model's max_position_embeddings {max_positions}: rotary positions "
                       "run there but the model was not trained on such lengths")


# --- tokens added by the chat format (D7) ------------------------------------------------------------

def trainable_token_rows(tied_embeddings: bool, engine: Engine) -> tuple[bool, bool]:
    """(input rows, output rows) of the added tokens that train with PEFT ``trainable_token_indices``.

    Trained rows are what lets the model tell the role markers apart and learn to end its turn
    (new rows start equal: the mean of the old ones). Under ZeRO-3, TRL 1.16's fused LM head
    gathers ``lm_head.weight`` as a ZeRO-3 parameter, but PEFT's trainable-token wrapper on the
    output layer answers ``weight`` with a computed tensor (the base rows with the trained rows
    merged), which it cannot gather ("'Tensor' object has no attribute 'ds_status'" at the
    first step). So there the output rows stay as initialised, and with tied embeddings
    (Falcon), where PEFT ties the input rows into the output layer, the input rows too.
    """
    if not engine.zero3:
        return True, True
    return (not tied_embeddings), False
