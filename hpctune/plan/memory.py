"""Peak GPU memory per GPU and CPU RAM per node of one LoRA / QLoRA / full fine-tuning layout.

Pure Python arithmetic over a ModelShape; every term, its formula and its source is written up
in docs/memory-model.md (section numbers below refer to it). All results are GiB (2**30 bytes),
the unit nvidia-smi (MiB) and torch.cuda.max_memory_allocated()/2**30 report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from .shapes import ModelShape, lora_param_count, resolve_targets

GIB = 2**30

# --- constants (docs/memory-model.md section 9 says which measurement fixed each one) ---
CUDA_CONTEXT_GIB = 0.6
"""CUDA context + cuBLAS/cuDNN workspaces of one process (H100/A100, CUDA 12)."""
NCCL_GIB = 0.4
"""NCCL communicator buffers once the job spans more than one GPU."""
FRAGMENTATION = 0.30
"""Caching-allocator slack: reserved minus allocated, as a share of short-lived memory."""
PROCESS_BASE_CPU_GIB = 3.5
"""Resident memory of one training process before any weight: Python, torch, CUDA host side,
DeepSpeed, tokenizer and dataset (PEFT README measured 2.96 GB without DeepSpeed)."""
CPU_RESERVE_GIB = 4.0
"""RAM a node keeps for the OS, Slurm and page cache; never planned for training."""
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
"""DeepSpeed stage3_max_live_parameters default (elements)."""
DS_ALLGATHER_BUCKET = 500_000_000
"""DeepSpeed ZeRO-1/2 allgather_bucket_size default (elements)."""
NVME_PARAM_BUFFERS, NVME_PARAM_BUFFER_SIZE = 5, 100_000_000
"""DeepSpeed offload_param (nvme) buffer_count and buffer_size defaults."""
NVME_OPT_BUFFERS, DS_SUB_GROUP = 4, 1_000_000_000
"""DeepSpeed offload_optimizer (nvme) buffer_count and sub_group_size defaults."""
QUANT_BLOCK = 64
"""bitsandbytes 4-bit block size: one absmax per 64 weights."""
DQ_BLOCK = 256
"""Double quantization: one fp32 absmax per 256 first-level absmax values."""
MASK_BYTES = 1
"""Bytes per element of a dropout mask on CUDA (native_dropout keeps a bool mask)."""
DEFAULT_MARGIN_GIB = 1.0
"""GPU memory left unplanned for spikes the model does not see (eval, saving)."""

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2,
                "uint8": 1, "int8": 1}
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
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """"all-linear", a list of leaf names, or None for PEFT's per-model default."""
    lora_dropout: float = 0.1
    """LoRA dropout; above 0 each targeted layer stores a dropped copy of its input."""
    quant_bits: int = 4
    """QLoRA weight bits: 4 (nf4/fp4) or 8 (LLM.int8)."""
    double_quant: bool = True
    """bnb_4bit_use_double_quant: quantize the absmax constants to 8 bits."""
    quant_storage_dtype: str = "bfloat16"
    """bnb_4bit_quant_storage, which is also the model's torch_dtype (they must be equal
    under ZeRO-3) and the dtype unquantized weights are loaded in."""
    precision: str = "bf16"
    """Mixed precision: "bf16", "fp16" or "no" (fp32 throughout)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage 0-3; 0 is plain data parallelism (DDP)."""
    offload_optimizer: str = "none"
    """"none", "cpu" or "nvme": where Adam states (and fp32 gradients) live; stage >= 1."""
    offload_param: str = "none"
    """"none", "cpu" or "nvme": where parameter shards live between uses; stage 3 only."""
    micro_batch: int = 8
    """Sequences per GPU per forward pass."""
    seq_len: int = 2048
    """Tokens per sequence (encoder tokens for seq2seq)."""
    target_len: int = 0
    """Decoder tokens per sequence for seq2seq; 0 means seq_len."""
    gradient_checkpointing: bool = True
    """Keep only each block's input; recompute the block in backward."""
    attn_implementation: str = "flash_attention_2"
    """"flash_attention_2", "sdpa" (no s^2 tensor stored) or "eager" (stores b*heads*s^2)."""
    nodes: int = 1
    """Machines in the job."""
    gpus_per_node: int = 8
    """GPUs (= training processes) per machine."""
    gpu_mem_gib: float = 80.0
    """Memory of one GPU as the planner may use it (profile value)."""
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
    """reduce_bucket_size in elements; 0 = accelerate's "auto" = hidden**2."""
    prefetch_bucket_size: int = 0
    """stage3_prefetch_bucket_size in elements; 0 = accelerate's "auto" = 0.9 * hidden**2."""

    def __post_init__(self):
        if isinstance(self.lora_target_modules, list):  # keep the dataclass hashable
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        _check(self)

    @property
    def world(self) -> int:
        """GPUs over all nodes: ZeRO shards over all of them."""
        return self.nodes * self.gpus_per_node


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
    need(i.quant_storage_dtype in _DTYPE_BYTES, f"unknown dtype {i.quant_storage_dtype!r}")
    need(i.task in ("causal_lm", "seq2seq"), "task must be causal_lm or seq2seq")
    need((i.task == "seq2seq") == i.shape.encoder_decoder,
         f"task {i.task!r} does not match {i.shape.name} "
         f"(encoder_decoder={i.shape.encoder_decoder})")
    for name in ("micro_batch", "seq_len", "nodes", "gpus_per_node"):
        need(getattr(i, name) >= 1, f"{name} must be >= 1")
    need(i.method == "full" or i.lora_r >= 1, "lora_r must be >= 1")


@dataclass
class Plan:
    """The estimate: peaks, whether they fit, and where the memory goes."""

    per_gpu_peak_gib: float
    """Peak GPU memory of one GPU: max(load peak, training peak)."""
    cpu_ram_peak_gib_per_node: float
    """Peak RAM of one node: all its training processes together."""
    fits: bool
    """GPU peak + margin <= gpu_mem_gib and CPU peak <= RAM minus the OS reserve."""
    headroom_gib: float
    """gpu_mem_gib - per_gpu_peak_gib (negative: short by that much)."""
    breakdown: dict[str, float]
    """Training-time components, GiB per GPU, in model order; they sum to train_peak_gib."""
    cpu_breakdown: dict[str, float]
    """CPU components, GiB per node."""
    notes: list[str] = field(default_factory=list)
    """Warnings and explanations (QLoRA load, offload caveats, what does not fit)."""
    train_peak_gib: float = 0.0
    """Steady-state training peak per GPU (sum of breakdown)."""
    load_peak_gib: float = 0.0
    """Peak per GPU while the model is loaded and before DeepSpeed partitions it."""

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready), numbers rounded to 0.01 GiB."""
        d = asdict(self)
        for k in ("breakdown", "cpu_breakdown"):
            d[k] = {n: round(v, 2) for n, v in d[k].items()}
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


# ------------------------------------------------------------------------ bytes helpers
def _act_bytes(i: PlanInput) -> int:
    """Bytes of one activation element: 2 under bf16/fp16 autocast, 4 in fp32."""
    return 4 if i.precision == "no" else 2


def _weight_bytes(i: PlanInput) -> int:
    """Bytes per unquantized weight on the GPU (section 1). DeepSpeed casts the module to the
    half dtype when mixed precision is on (zero.Init does it while building); plain DDP keeps
    the dtype the model was loaded in."""
    if i.zero_stage >= 1 and i.precision != "no":
        return 2
    return _DTYPE_BYTES[i.quant_storage_dtype]


def _quant_bytes_per_param(i: PlanInput) -> float:
    """Bytes per quantized weight, constants included (section 1.2)."""
    if i.quant_bits == 8:  # LLM.int8: int8 weight + one fp32 scale per output row (~0)
        return 1.0
    consts = (1 / QUANT_BLOCK + 4 / (QUANT_BLOCK * DQ_BLOCK)) if i.double_quant else 4 / QUANT_BLOCK
    return 0.5 + consts


@lru_cache(maxsize=4096)
def _model_bytes(i: PlanInput) -> tuple[float, float]:
    """(total bytes of the base weights as stored on GPU, bytes of its largest tensor)."""
    s = i.shape
    if i.method != "qlora":
        b = _weight_bytes(i)
        return s.n_params * b, s.largest_tensor * b
    q = _quant_bytes_per_param(i)
    # Unquantized rest (embeddings, lm_head, norms, biases) stays in the storage dtype under
    # ZeRO-3; without it TRL's prepare_model_for_kbit_training upcasts it to fp32.
    rest_b = _DTYPE_BYTES[i.quant_storage_dtype] if i.zero_stage == 3 else 4
    rest = s.n_params - s.linear_params
    big_linear = max(m.in_features * m.out_features for m in s.linear_modules)
    return s.linear_params * q + rest * rest_b, max(big_linear * q, max(
        n for n, _ in s.embeddings) * rest_b)


def _trainable(i: PlanInput) -> int:
    """Trainable parameters: the whole model, or the LoRA A/B matrices."""
    if i.method == "full":
        return i.shape.n_params
    return lora_param_count(i.shape, i.lora_r, i.lora_target_modules)


def _state_bytes(i: PlanInput) -> tuple[int, int, int]:
    """(param, grad, optimizer) bytes per trainable parameter (section 2). Half-precision
    params need an fp32 master copy besides Adam's m and v (2+2+12); fp32 params need only
    m and v (4+4+8). PEFT keeps adapters in fp32 unless DeepSpeed casts the module."""
    if i.method == "full":
        p = _weight_bytes(i)
    else:
        p = 2 if i.zero_stage >= 1 and i.precision != "no" else 4
    return p, p, 8 if p == 4 else 12


# ------------------------------------------------------------------------- activations
def _norm_per_token(s: ModelShape, a: int, trainable: bool) -> float:
    """Bytes a normalization layer stores per token (section 5.1)."""
    h = s.hidden
    if s.arch in ("falcon", "bart"):  # LayerNorm saves its input (+ mean/rstd, ~0)
        kept = a * h
    elif s.arch == "t5":  # fp32 copy for the variance + the input it rescales
        kept = 4 * h + (a * h if a < 4 else 0)
    else:  # Llama RMSNorm: one fp32 copy of the input
        kept = 4 * h
    # A trainable RMSNorm weight is a Python multiply that keeps the normalized output;
    # LayerNorm's weight gradient comes from the input and its saved statistics.
    return kept + (a * h if trainable and s.arch not in ("falcon", "bart") else 0)


def _block_per_token(s: ModelShape, a: int, s_kv: int, attn: str, full: bool,
                     cross: bool = False) -> float:
    """Bytes stored for backward per token by one block (section 5), LoRA excluded.

    A frozen linear layer (LoRA, QLoRA) stores nothing for its own weight, so its input is
    kept only where another op needs it; full fine-tuning also keeps every linear input.
    """
    h, q, kv, heads = s.hidden, s.q_dim, s.kv_dim, s.heads
    norm = _norm_per_token(s, a, full)
    if s.arch == "falcon" or attn == "eager":  # k/v repeated to every query head first
        kv = q
    if attn == "eager":  # softmax output (fp32 when upcast) + the probs fed to the matmul
        probs = (4 + a if a < 4 else 4) + ((MASK_BYTES + a) if s.attention_dropout else 0)
        core = heads * s_kv * probs
    else:  # flash / memory-efficient kernels keep their output and a log-sum-exp per head
        core = a * q + 4 * heads
    mask = MASK_BYTES * h if s.dropout else 0  # residual dropout keeps its mask
    lin_in = (a * h + a * q) if full else 0  # q/k/v input and o_proj input
    if cross:  # query side only; keys/values over encoder tokens are counted by the caller
        return norm + a * q + core + mask + lin_in
    attn_part = norm + a * (q + 2 * kv) + core + mask + lin_in
    width = s.intermediate * s.experts_per_token
    # gated: gate out, act out, up out (+ down input when trained); plain: fc1 out (+ fc2 input)
    mlp = (3 if s.gated_mlp else 1) * a * width + mask + ((a * h + a * width) if full else 0)
    if s.arch != "falcon":  # Falcon's parallel block: both norms read the same stored input
        mlp += norm
    if s.arch == "t5":
        # gelu_new is composed of Python ops (tanh form): three more I-wide tensors, and T5
        # drops out inside the MLP (a mask)
        mlp += (3 * a * width if s.gated_mlp else 0) + (MASK_BYTES * width if s.dropout else 0)
    return attn_part + mlp


def _lora_per_layer(i: PlanInput, a: int) -> dict[str, float]:
    """Bytes per token per layer that LoRA adds, by stream (dec/enc/mem)."""
    if i.method == "full":
        return {}
    lp = _state_bytes(i)[0]
    cast = lp if lp != a else 0  # PEFT casts the input to the adapter dtype (a saved copy)
    drop = (lp + MASK_BYTES) if i.lora_dropout > 0 else 0  # dropped input + its mask
    out: dict[str, float] = {}
    for m in resolve_targets(i.shape, i.lora_target_modules):
        per = (m.in_features * (cast + drop) + i.lora_r * lp) * m.count * m.token_fraction
        out[m.stream] = out.get(m.stream, 0.0) + per
    return out


def _activations(i: PlanInput) -> tuple[float, float]:
    """(bytes kept through the step, transient peak on top of them), section 5."""
    s, a, b, attn = i.shape, _act_bytes(i), i.micro_batch, i.attn_implementation
    full = i.method == "full"
    lora = _lora_per_layer(i, a)
    widest = max(s.intermediate * s.experts_per_token, s.q_dim + 2 * s.kv_dim, s.hidden)
    if s.encoder_decoder:
        t_enc, t_dec = b * i.seq_len, b * (i.target_len or i.seq_len)
        enc = t_enc * (_block_per_token(s, a, i.seq_len, attn, full)
                       + lora.get("enc", 0) / s.layers)
        dec = t_dec * (_block_per_token(s, a, i.target_len or i.seq_len, attn, full)
                       + _block_per_token(s, a, i.seq_len, attn, full, cross=True)
                       + lora.get("dec", 0) / s.decoder_layers) \
            + t_enc * (2 * a * s.kv_dim + lora.get("mem", 0) / s.decoder_layers)
        memory = a * s.hidden * t_enc  # encoder output, read by every decoder layer
        if i.gradient_checkpointing:
            kept = a * s.hidden * (s.layers * t_enc + s.decoder_layers * t_dec) + memory
            layer = max(enc, dec)
        else:
            kept, layer = s.layers * enc + s.decoder_layers * dec + memory, 0.0
        tokens, logit_tokens = max(t_enc, t_dec), t_dec
    else:
        t = b * i.seq_len
        per_layer = t * (_block_per_token(s, a, i.seq_len, attn, full)
                         + lora.get("dec", 0) / s.layers)
        if i.gradient_checkpointing:
            kept, layer = s.layers * a * s.hidden * t, per_layer
        else:
            kept, layer = s.layers * per_layer, 0.0
        tokens = logit_tokens = t
    workspace = a * tokens * (2 * widest + s.hidden)  # gradients in flight inside one block
    logits = logit_tokens * s.vocab * (a + 8)  # logits + fp32 upcast + log-softmax output
    return kept, max(logits, layer + workspace)


def _layer_linear_params(s: ModelShape) -> float:
    """Linear weights of the largest block (decoder blocks of seq2seq models carry
    cross-attention too)."""
    if not s.encoder_decoder:
        return s.linear_params / s.layers
    enc = sum(m.weight_params for m in s.linear_modules if m.stream == "enc")
    return max(enc / s.layers, (s.linear_params - enc) / s.decoder_layers)


def _gathered(i: PlanInput, model_b: float, largest_b: float) -> float:
    """Bytes of full (gathered) parameters a ZeRO-3 GPU holds at once (section 4).

    DeepSpeed fetches a module's parameters before it runs, prefetches up to
    stage3_prefetch_bucket_size more, and keeps a parameter gathered while its next use is
    closer than stage3_max_reuse_distance (1e9 elements, as max_live_parameters). Without
    checkpointing the forward-to-backward turn is such a reuse, so up to max_live_parameters
    stay gathered; with checkpointing one block is gathered for its recompute and backward.
    """
    s = i.shape
    elem = _DTYPE_BYTES[i.quant_storage_dtype] if i.method == "qlora" else _weight_bytes(i)
    per_param = _quant_bytes_per_param(i) if i.method == "qlora" else elem
    prefetch = (i.prefetch_bucket_size or int(0.9 * s.hidden**2)) * elem
    cap = i.max_live_parameters * elem
    floor = largest_b + prefetch  # one module is fetched whole, whatever the cap
    if i.gradient_checkpointing:
        return min(model_b, max(min(_layer_linear_params(s) * per_param + prefetch, cap), floor))
    return min(model_b, max(cap, floor))


# ---------------------------------------------------------------------------- estimate
def estimate(inp: PlanInput, margin_gib: float = DEFAULT_MARGIN_GIB) -> Plan:
    """Estimate peak GPU memory per GPU and CPU RAM per node for one layout."""
    s, n, stage = inp.shape, inp.world, inp.zero_stage
    notes: list[str] = []
    model_b, largest_b = _model_bytes(inp)
    psi = _trainable(inp)
    p, g, o = _state_bytes(inp)
    full = inp.method == "full"
    off_opt, off_par = inp.offload_optimizer != "none", inp.offload_param != "none"

    # --- weights and training states (sections 1-3)
    weights = model_b / n if stage == 3 else model_b
    if off_par:
        weights = 0.0
    tp, tg, to = psi * p, psi * g, psi * o  # trainable param / grad / optimizer bytes
    if full:
        tp = 0.0  # the trainable params are the weights, already counted
    shard_p = stage == 3
    shard_g = stage >= 2
    shard_o = stage >= 1
    gpu_p = 0.0 if off_par else (tp / n if shard_p else tp)
    gpu_g = (0.0 if off_opt and stage >= 2 else (tg / n if shard_g else tg))
    gpu_o = 0.0 if off_opt else (to / n if shard_o else to)

    # --- ZeRO-3 gathered parameters (section 4)
    gathered = _gathered(inp, model_b, largest_b) if stage == 3 else 0.0

    # --- communication buckets (section 4)
    bucket = inp.reduce_bucket_size or s.hidden**2
    if stage == 0:
        comm = tg  # DDP gradient buckets: a second copy of every gradient
    elif stage == 3:
        comm = 2 * min(bucket, psi) * g
    else:
        comm = 2 * min(bucket, psi) * g + min(DS_ALLGATHER_BUCKET, psi) * p
    dequant = 2 * max(m.in_features * m.out_features for m in s.linear_modules) * 2 \
        if inp.method == "qlora" else 0.0  # bf16 copy of the widest weight, forward and backward

    kept, transient = _activations(inp)
    ctx = (CUDA_CONTEXT_GIB + (NCCL_GIB if n > 1 else 0.0)) * GIB
    dynamic = gathered + comm + dequant + kept + transient
    parts = {
        "cuda_context": ctx,
        "weights": weights,
        "trainable_params": gpu_p,
        "gradients": gpu_g,
        "optimizer_states": gpu_o,
        "zero3_gathered_params": gathered,
        "comm_buckets": comm,
        "dequant_buffers": dequant,
        "activations_kept": kept,
        "activations_transient": transient,
        "fragmentation": FRAGMENTATION * dynamic,
    }
    breakdown = {k: v / GIB for k, v in parts.items()}
    train_peak = sum(breakdown.values())

    # --- load peak (section 6): 4-bit weights are not sharded while loading under ZeRO-3
    load_peak = (ctx + (model_b if stage < 3 else largest_b)) / GIB
    if inp.method == "qlora" and stage == 3:
        full_q = (model_b + 2 * max(m.in_features * m.out_features for m in s.linear_modules)) / GIB
        load_peak = ctx / GIB + full_q
        notes.append(f"{inp.quant_bits}-bit weights are not sharded at load under ZeRO-3 "
                     f"(peft#1844, DeepSpeed#5637): every GPU holds the whole quantized model "
                     f"while loading ({model_b / GIB:.1f} GiB)")
    peak = max(train_peak, load_peak)

    cpu_breakdown = _cpu(inp, psi, model_b, notes)
    cpu_peak = _cpu_peak(cpu_breakdown)
    _advise(inp, notes, psi, o, train_peak, load_peak)

    headroom = inp.gpu_mem_gib - peak
    gpu_ok = headroom >= margin_gib
    cpu_ok = cpu_peak <= inp.cpu_ram_gib_per_node - CPU_RESERVE_GIB
    if not gpu_ok:
        notes.append(f"GPU: needs {peak:.1f} GiB + {margin_gib:.1f} GiB margin per GPU, "
                     f"has {inp.gpu_mem_gib:.1f} GiB")
    if not cpu_ok:
        notes.append(f"CPU: needs {cpu_peak:.1f} GiB per node (+{CPU_RESERVE_GIB:.0f} GiB for "
                     f"the OS), has {inp.cpu_ram_gib_per_node:.0f} GiB")
    return Plan(per_gpu_peak_gib=peak, cpu_ram_peak_gib_per_node=cpu_peak,
                fits=gpu_ok and cpu_ok, headroom_gib=headroom, breakdown=breakdown,
                cpu_breakdown=cpu_breakdown, notes=notes, train_peak_gib=train_peak,
                load_peak_gib=load_peak)


# ------------------------------------------------------------------------------- CPU
def _pinned(numel: float, bytes_per: float) -> float:
    """Pinned host bytes for one tensor: torch's caching host allocator rounds every pinned
    block up to a power of two (section 7)."""
    raw = max(int(numel * bytes_per), 1)
    return float(1 << (raw - 1).bit_length())


@lru_cache(maxsize=4096)
def _offloaded_param_bytes(i: PlanInput) -> float:
    """Pinned CPU bytes of one rank's parameter partitions (ZeRO-3 offload_param=cpu):
    DeepSpeed pins each parameter's partition separately."""
    s, n = i.shape, i.world
    bpp = _quant_bytes_per_param(i) if i.method == "qlora" else _weight_bytes(i)
    total = sum(_pinned(m.in_features * m.out_features / n, bpp) * m.count
                for m in s.linear_modules)
    rest_b = _DTYPE_BYTES[i.quant_storage_dtype] if i.method == "qlora" else _weight_bytes(i)
    total += sum(_pinned(numel / n, rest_b) * c for numel, c in s.embeddings)
    rest = s.n_params - s.linear_params - sum(numel * c for numel, c in s.embeddings)
    return total + rest * rest_b / n  # norms and biases: small tensors, no rounding modelled


def _cpu(i: PlanInput, psi: int, model_b: float, notes: list[str]) -> dict[str, float]:
    """CPU RAM per node by component, GiB (section 7). Every local rank is alike."""
    ranks, n = i.gpus_per_node, i.world
    p, _, o = _state_bytes(i)
    params = 0.0
    if i.offload_param == "cpu":
        params = _offloaded_param_bytes(i)
        if i.method != "full":  # adapters are offloaded with the weights
            params += psi * p / n
    elif i.offload_param == "nvme":  # staging buffers only; the shards live on disk
        elem = _weight_bytes(i)
        params = NVME_PARAM_BUFFERS * max(NVME_PARAM_BUFFER_SIZE, i.shape.largest_tensor) * elem
    opt = 0.0
    if i.offload_optimizer == "cpu":
        opt = psi / n * (o + 4)  # Adam states (+ fp32 master) and an fp32 gradient partition
    elif i.offload_optimizer == "nvme":
        opt = NVME_OPT_BUFFERS * min(DS_SUB_GROUP, psi / n) * 4
    # Loading (section 6): without zero3_init (or below stage 3) each rank materializes the
    # whole unquantized model in CPU RAM before it is moved to the GPU. QLoRA quantizes tensor
    # by tensor on the way to the GPU.
    load = 0.0
    if i.method != "qlora" and (i.zero_stage < 3 or not i.zero3_init):
        load = i.shape.n_params * _DTYPE_BYTES[i.quant_storage_dtype]
        if i.zero_stage == 3:
            notes.append("zero3_init is off: every rank loads the whole model into CPU RAM first")
    return {
        "process_base": ranks * PROCESS_BASE_CPU_GIB,
        "offloaded_params": ranks * params / GIB,
        "offloaded_optimizer": ranks * opt / GIB,
        "model_loading": ranks * load / GIB,
    }


def _cpu_peak(c: dict[str, float]) -> float:
    """Loading happens before offloaded states exist (or is freed before they grow)."""
    offloaded = c["offloaded_params"] + c["offloaded_optimizer"]
    return c["process_base"] + max(c["model_loading"], offloaded)


def _advise(i: PlanInput, notes: list[str], psi: int, o: int, train: float, load: float) -> None:
    """Explanations that name a known trap (docs/memory-model.md section 8)."""
    half_or_float = ("bfloat16", "float16", "float32")
    if i.method == "qlora" and i.zero_stage == 3 and i.quant_storage_dtype not in half_or_float:
        notes.append("ZeRO-3 shards 4-bit weights only when bnb_4bit_quant_storage equals the "
                     "model's torch_dtype, e.g. bfloat16 (DeepSpeed#4295, transformers#29266)")
    if i.method == "qlora" and i.offload_param != "none":
        notes.append("CPU offload with QLoRA gives no GPU saving: the quantized load peak stays, "
                     "and offload uses more GPU memory (PEFT docs, transformers#24395)")
    if i.method != "full" and i.offload_optimizer != "none":
        saved = psi * o / max(1, i.world if i.zero_stage >= 1 else 1) / GIB
        notes.append(f"optimizer offload saves only {saved:.2f} GiB per GPU with LoRA (adapter "
                     "states are small); it mostly moves work to the CPU")
    if load > train:
        notes.append(f"loading ({load:.1f} GiB) is the peak, not training ({train:.1f} GiB)")
    if i.attn_implementation == "eager" and i.seq_len >= 2048:
        notes.append("eager attention stores micro_batch x heads x seq_len^2 scores per layer: "
                     "flash_attention_2 or sdpa avoid it")
