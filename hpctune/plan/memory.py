"""Peak GPU memory per GPU and CPU RAM per node of one LoRA / QLoRA / full fine-tuning layout.

Pure Python arithmetic over a ModelShape; every term, its formula and its source is written up
in docs/memory-model.md (section numbers below refer to it). All results are GiB (2**30 bytes),
the unit nvidia-smi (MiB) and torch.cuda.max_memory_allocated()/2**30 report.

Three figures per GPU (§3b): ``allocated`` (what torch.cuda.max_memory_allocated() reports),
``reserved`` (torch.cuda.max_memory_reserved(): allocated plus the caching allocator's slack)
and ``device_used`` (what nvidia-smi shows: reserved plus the CUDA context and NCCL's
buffers). "fits" is judged on device_used plus a margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from . import allocator
from .activations import activations, attention_kind
from .engines import DTYPE_BYTES, Engine
from .inputs import PlanInput
from .shapes import ModelShape, lora_param_count

GIB = 2**30

# --- constants (docs/memory-model.md section 9 says where each one comes from) ---
PROCESS_BASE_CPU_GIB = 3.5
"""Resident memory of one training process before any weight: Python, torch, CUDA host side,
DeepSpeed, tokenizer and dataset (PEFT README measured 2.96 GB without DeepSpeed)."""
CPU_RESERVE_GIB = 4.0
"""RAM a node keeps for the OS, Slurm and page cache; never planned for training."""
DS_REDUCE_BUCKET = 500_000_000
"""DeepSpeed reduce_bucket_size default (elements). hpctune's accelerate config sets no bucket
key, so DeepSpeed's defaults apply, not accelerate's hidden-size "auto" values."""
DS_PREFETCH_BUCKET = 50_000_000
"""DeepSpeed stage3_prefetch_bucket_size default (elements)."""
DS_ALLGATHER_BUCKET = 500_000_000
"""DeepSpeed ZeRO-1/2 allgather_bucket_size default (elements)."""
GATHER_REUSE_SHARE = 0.24
"""ZeRO-3 without gradient checkpointing: share of the parameters beyond
stage3_max_live_parameters that stay gathered from their forward to their backward use
(fitted to the PEFT ZeRO-3 + offload measurements of T0_3B, mt0-xxl and bloomz-7b1, §9)."""
DS_SUB_GROUP = 1_000_000_000
"""DeepSpeed sub_group_size default: the ZeRO-3 optimizer steps this many elements at a time."""
NVME_PARAM_BUFFERS, NVME_PARAM_BUFFER_SIZE = 5, 100_000_000
"""DeepSpeed offload_param (nvme) buffer_count and buffer_size defaults."""
NVME_OPT_BUFFERS = 4
"""DeepSpeed offload_optimizer (nvme) buffer_count default."""
QUANT_BLOCK = 64
"""bitsandbytes 4-bit block size: one absmax per 64 weights."""
DQ_BLOCK = 256
"""Double quantization: one fp32 absmax per 256 first-level absmax values."""
DEFAULT_MARGIN_GIB = 0.5
"""Device memory left unplanned for spikes the model does not see (evaluation, saving); the
fit is judged on the device-used figure (nvidia-smi), which already holds the allocator's
slack, the CUDA context and NCCL."""


FIGURES = {
    "allocated_peak_gib": "torch.cuda.max_memory_allocated(): tensors alive at the peak",
    "reserved_peak_gib": "torch.cuda.max_memory_reserved(): allocated + the caching allocator's "
                         "cached, fragmented blocks",
    "device_used_gib": "nvidia-smi / DCGM memory used: reserved + CUDA context + NCCL buffers "
                       "(the figure 'fits' is judged on)",
}


@dataclass
class Plan:
    """The estimate: the three peak figures, whether they fit, and where the memory goes."""

    per_gpu_peak_gib: float
    """Headline: device-used peak of one GPU (what nvidia-smi shows), max(load, training)."""
    cpu_ram_peak_gib_per_node: float
    """Peak RAM of one node: all its training processes together."""
    fits: bool
    """device_used + margin <= gpu_mem_gib, and CPU peak <= RAM minus the OS reserve."""
    headroom_gib: float
    """gpu_mem_gib - per_gpu_peak_gib (negative: short by that much)."""
    breakdown: dict[str, float]
    """Training-time components, GiB per GPU, in model order; they sum to train_peak_gib."""
    cpu_breakdown: dict[str, float]
    """CPU components, GiB per node."""
    notes: list[str] = field(default_factory=list)
    """Warnings and explanations (QLoRA load, offload caveats, what does not fit)."""
    train_peak_gib: float = 0.0
    """Device-used peak while training (sum of breakdown)."""
    load_peak_gib: float = 0.0
    """Device-used peak while the model is loaded and before DeepSpeed partitions it."""
    allocated_peak_gib: float = 0.0
    """Peak of torch.cuda.max_memory_allocated() (load or training, whichever is higher)."""
    reserved_peak_gib: float = 0.0
    """Peak of torch.cuda.max_memory_reserved()."""
    device_used_gib: float = 0.0
    """Peak nvidia-smi memory used (= per_gpu_peak_gib)."""
    margin_gib: float = DEFAULT_MARGIN_GIB
    """Memory the fit leaves free on top of device_used."""
    engine: str = ""
    """The engine that trains: DeepSpeed ZeRO-n, DDP or one process, with its state dtypes."""

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready), numbers rounded to 0.01 GiB; ``figures`` says which tool
        each of the three peak figures compares with."""
        d = asdict(self)
        for k in ("breakdown", "cpu_breakdown"):
            d[k] = {n: round(v, 2) for n, v in d[k].items()}
        d = {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}
        d["figures"] = dict(FIGURES)
        return d


# ------------------------------------------------------------------------ bytes helpers
def _quant_bytes_per_param(i: PlanInput) -> float:
    """Bytes per quantized weight, constants included (section 1.2)."""
    if i.quant_bits == 8:  # LLM.int8: int8 weight + one fp32 scale per output row (~0)
        return 1.0
    consts = (1 / QUANT_BLOCK + 4 / (QUANT_BLOCK * DQ_BLOCK)) if i.double_quant else 4 / QUANT_BLOCK
    return 0.5 + consts


@lru_cache(maxsize=4096)
def _model_bytes(i: PlanInput) -> tuple[float, float]:
    """(total bytes of the base weights as stored on GPU, bytes of its largest tensor)."""
    s, eng = i.shape, i.engine
    if i.method != "qlora":
        b = eng.weight_bytes
        return s.n_params * b, s.largest_tensor * b
    q = _quant_bytes_per_param(i)
    # Unquantized rest (embeddings, lm_head, norms, biases): DeepSpeed keeps it in its half
    # dtype; without DeepSpeed TRL's prepare_model_for_kbit_training upcasts it to fp32.
    rest_b = eng.weight_bytes if eng.uses_deepspeed else 4
    rest = s.n_params - s.linear_params
    big_linear = max(m.in_features * m.out_features for m in s.linear_modules)
    return s.linear_params * q + rest * rest_b, max(big_linear * q, max(
        n for n, _ in s.embeddings) * rest_b)


def _trainable(i: PlanInput) -> int:
    """Trainable parameters: the whole model, or the LoRA A/B matrices."""
    if i.method == "full":
        return i.shape.n_params
    return lora_param_count(i.shape, i.lora_r, i.lora_target_modules)


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
    elem = DTYPE_BYTES[i.quant_storage_dtype] if i.method == "qlora" else i.engine.weight_bytes
    per_param = _quant_bytes_per_param(i) if i.method == "qlora" else elem
    prefetch = (i.prefetch_bucket_size or DS_PREFETCH_BUCKET) * elem
    cap = i.max_live_parameters * elem
    floor = largest_b + prefetch  # one module is fetched whole, whatever the cap
    if i.gradient_checkpointing:
        return min(model_b, max(min(_layer_linear_params(s) * per_param + prefetch, cap), floor))
    return min(model_b, max(cap + GATHER_REUSE_SHARE * max(0.0, model_b - cap), floor))


def _engine_name(i: PlanInput, eng: Engine) -> str:
    if eng.uses_deepspeed:
        dt = "bf16/fp16 weights, fp32 master + Adam" if eng.master_bytes else "fp32 weights and Adam"
        return f"DeepSpeed ZeRO-{i.zero_stage} ({dt})"
    who = "DDP" if eng.kind == "ddp" else "one process, no DDP"
    p = {2: "bf16", 4: "fp32"}.get(eng.param_bytes, "?")
    return f"{who} (trainable {p}, Adam moments {p}, no master copy)"


# ---------------------------------------------------------------------------- estimate
def estimate(inp: PlanInput, margin_gib: float = DEFAULT_MARGIN_GIB,
             correction: float = 1.0) -> Plan:
    """Estimate the three per-GPU peak figures and CPU RAM per node for one layout.

    ``correction`` multiplies the short-lived memory (activations, buffers, allocator slack):
    a per-cluster factor stored by ``hpctune plan --calibrate`` (hpctune.plan.calibration).
    """
    s, n, stage = inp.shape, inp.world, inp.zero_stage
    eng = inp.engine
    notes: list[str] = []
    model_b, largest_b = _model_bytes(inp)
    psi = _trainable(inp)
    full = inp.method == "full"
    off_opt, off_par = inp.offload_optimizer != "none", inp.offload_param != "none"

    # --- weights and training states (sections 1-3)
    weights = model_b / n if stage == 3 else model_b
    if off_par:
        weights = 0.0
    tp = 0.0 if full else psi * eng.param_bytes  # full FT: the trainable params are the weights
    tg, to = psi * eng.grad_bytes, psi * eng.optimizer_bytes
    gpu_p = 0.0 if off_par else (tp / n if stage == 3 else tp)
    gpu_g = 0.0 if off_opt and stage >= 2 else (tg / n if stage >= 2 else tg)
    gpu_o = 0.0 if off_opt else (to / n if stage >= 1 else to)

    # --- ZeRO-3 gathered parameters, communication buffers (section 4)
    gathered = _gathered(inp, model_b, largest_b) if stage == 3 else 0.0
    # DeepSpeed allocates its gradient bucket at the configured size whatever the number of
    # trainable parameters (deepspeed 0.19.8 stage3.py: ``torch.empty(self.reduce_bucket_size)``
    # per gradient dtype once the optimizer is built; stage_1_and_2.py ``setup_buckets``: one,
    # two with overlap_comm, which stages 1-2 leave off). ZeRO-3 also holds the 1/N
    # reduce-scatter result of the gradients in one bucket while it copies them into the
    # partitions.
    bucket = inp.reduce_bucket_size or DS_REDUCE_BUCKET
    if eng.ddp_buckets:
        comm = tg  # DDP's gradient buckets: a second copy of every trainable gradient
    elif stage == 3:
        comm = (bucket + min(bucket, psi) / n) * eng.grad_bytes
    elif stage >= 1:
        comm = bucket * eng.grad_bytes
    else:
        comm = 0.0
    widest = max(m.in_features * m.out_features for m in s.linear_modules)
    dequant = 2 * widest * 2 if inp.method == "qlora" else 0.0  # bf16 copy, fwd and bwd
    # autocast: fp32 weights are cast to bf16/fp16 at each use and the copy is saved for
    # backward: every layer's without checkpointing, one block's with it
    autocast = 0.0
    if eng.autocast_weights and inp.method != "qlora":
        autocast = 2 * (_layer_linear_params(s) if inp.gradient_checkpointing else s.linear_params)

    kept, transient = activations(inp, eng)
    # optimizer step (activations freed): ZeRO builds an fp32 gradient partition per sub-group
    # and ZeRO-1/2 all-gather the updated half parameters through a bucket
    step = 0.0
    if eng.uses_deepspeed and not off_opt:
        step = min(DS_SUB_GROUP, psi / n) * eng.step_grad_bytes
        if stage in (1, 2):
            step += min(DS_ALLGATHER_BUCKET, psi) * eng.param_bytes
    short = (gathered + comm + dequant + autocast + kept + transient) * correction
    static = weights + gpu_p + gpu_g + gpu_o
    allocated = static + max(short, step)
    slack = allocator.slack(kept=kept * correction, transient=transient * correction,
                            buffers=(gathered + comm + dequant + autocast) * correction)
    ctx = allocator.cuda_context(inp.gpu_model)
    nccl = allocator.nccl(n, inp.nodes, inp.gpu_model)
    parts = {
        "cuda_context": ctx,
        "nccl_buffers": nccl,
        "weights": weights,
        "trainable_params": gpu_p,
        "gradients": gpu_g,
        "optimizer_states": gpu_o,
        "zero3_gathered_params": gathered * correction,
        "comm_buckets": comm * correction,
        "dequant_buffers": dequant * correction,
        "autocast_weight_copies": autocast * correction,
        "activations_kept": kept * correction,
        "activations_transient": transient * correction,
        "optimizer_step": max(0.0, step - short),
        "allocator_slack": slack,
    }
    breakdown = {k: v / GIB for k, v in parts.items()}
    train_peak = sum(breakdown.values())
    train_alloc = allocated / GIB
    train_reserved = (allocated + slack) / GIB

    # --- load peak (section 6): 4-bit weights are not sharded while loading under ZeRO-3
    load_alloc = (model_b if stage < 3 else largest_b) / GIB
    if inp.method == "qlora" and stage == 3:
        load_alloc = (model_b + 2 * widest) / GIB  # + the bf16 tensor being quantized
        notes.append(f"{inp.quant_bits}-bit weights are not sharded at load under ZeRO-3 "
                     f"(peft#1844, DeepSpeed#5637): every GPU holds the whole quantized model "
                     f"while loading ({model_b / GIB:.1f} GiB)")
    load_peak = load_alloc + (ctx + nccl) / GIB
    peak = max(train_peak, load_peak)
    alloc_peak = max(train_alloc, load_alloc)
    reserved_peak = max(train_reserved, load_alloc)

    cpu_breakdown = _cpu(inp, psi, model_b, notes)
    cpu_peak = _cpu_peak(cpu_breakdown)
    _advise(inp, notes, psi, eng.optimizer_bytes, train_peak, load_peak)

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
                load_peak_gib=load_peak, allocated_peak_gib=alloc_peak,
                reserved_peak_gib=reserved_peak, device_used_gib=peak, margin_gib=margin_gib,
                engine=_engine_name(inp, eng))


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
    w = i.engine.weight_bytes
    bpp = _quant_bytes_per_param(i) if i.method == "qlora" else w
    total = sum(_pinned(m.in_features * m.out_features / n, bpp) * m.count
                for m in s.linear_modules)
    rest_b = DTYPE_BYTES[i.quant_storage_dtype] if i.method == "qlora" else w
    total += sum(_pinned(numel / n, rest_b) * c for numel, c in s.embeddings)
    rest = s.n_params - s.linear_params - sum(numel * c for numel, c in s.embeddings)
    return total + rest * rest_b / n  # norms and biases: small tensors, no rounding modelled


def _cpu(i: PlanInput, psi: int, model_b: float, notes: list[str]) -> dict[str, float]:
    """CPU RAM per node by component, GiB (section 7). Every local rank is alike."""
    ranks, n = i.gpus_per_node, i.world
    eng = i.engine
    p, o = eng.param_bytes, eng.optimizer_bytes
    params = 0.0
    if i.offload_param == "cpu":
        params = _offloaded_param_bytes(i)
        if i.method != "full":  # adapters are offloaded with the weights
            params += psi * p / n
    elif i.offload_param == "nvme":  # staging buffers only; the shards live on disk
        elem = eng.weight_bytes
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
        load = i.shape.n_params * DTYPE_BYTES[i.quant_storage_dtype]
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
