"""Step time, tokens/s, time per epoch, GPU-hours and the advice that follows from them
(docs/memory-model.md §12). Pure Python, like the memory model.

    from hpctune.plan import timing
    t = timing.estimate_time(plan_input, timing.Workload(train_samples=10_000, epochs=1))
    t.step_seconds, t.save_seconds, t.steps_per_epoch, t.epoch_seconds, t.advice

Compute: FLOPs per token from the shape (2 per weight a token passes through, the attention
scores, the output layer), backward = 2x forward for trained weights and 1x for frozen ones
(only the input gradient), + 1 forward of the blocks with gradient checkpointing; divided by
the GPU's dense bf16 peak (GPU_PEAK) times an efficiency factor. QLoRA adds the
dequantization of every 4-bit weight at each use, bounded by memory bandwidth. Communication:
ZeRO-3 all-gathers the weights twice per micro batch (forward, backward with its recompute)
and reduce-scatters the trainable gradients; ZeRO-1/2 and DDP reduce the gradients and
ZeRO-1/2 all-gather the updated weights; over the profile's intra-node bandwidth, or its
inter-node bandwidth shared by a node's GPUs once the job spans nodes; half of it hidden
behind compute. Offload adds PCIe transfers and the CPU Adam step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .shapes import resolve_targets

EFFICIENCY = 0.40
"""Share of the dense peak a Hugging Face Trainer step reaches on large models with flash
attention (model FLOPs utilisation; LLaMA-Factory's 7B LoRA rows give 0.35-0.45 on A100)."""
COMM_OVERLAP = 0.5
"""Share of the communication time hidden behind compute (ZeRO-3 prefetch, DDP buckets)."""
PCIE_GBPS = 25.0
"""Host <-> GPU bandwidth per GPU (PCIe 4 x16), GB/s: offload traffic."""
CPU_ADAM_PARAMS_PER_S = 1.0e9
"""DeepSpeed CPUAdam throughput per rank (parameters per second)."""
FS_WRITE_GBPS = 1.0
"""Checkpoint write bandwidth per node to the shared file system, GB/s."""
FS_READ_GBPS = 2.0
"""Model load bandwidth per node from the shared file system, GB/s."""
STARTUP_S = 120.0
"""Fixed start-up of a job: Python imports, NCCL/rendezvous, data tokenization cache."""
SAVE_FIXED_S = 10.0
"""Fixed part of one checkpoint: barriers, config/tokenizer files, rotation."""
LOST_WORK_S = 1800.0
"""The checkpoint interval the advice aims at: at most this much work lost per interruption."""
SAVE_SHARE = 0.05
"""... while saving takes at most this share of the training time."""

# GPU: (dense bf16 TFLOPs, HBM GB/s, NVLink collective bandwidth per GPU GB/s; 0 = PCIe only)
GPU_PEAK = {
    "b200": (2250, 8000, 900), "h200": (989, 4800, 450), "gh200": (989, 4000, 450),
    "h100": (989, 3350, 450), "a100": (312, 2000, 300), "a40": (150, 696, 0),
    "a30": (165, 933, 0), "a10": (125, 600, 0), "a6000": (155, 768, 0), "l40s": (362, 864, 0),
    "l40": (181, 864, 0), "l4": (121, 300, 0), "rtx6000ada": (364, 960, 0),
    "v100": (125, 900, 150), "p100": (21, 732, 80), "t4": (65, 320, 0),
    "mi300x": (1307, 5300, 448), "mi250x": (383, 3277, 200), "mi250": (362, 3277, 200),
    "mi210": (181, 1638, 0),
}
INTER_NODE_DEFAULT_GBPS = 12.5
"""Network bandwidth per GPU between nodes when the profile does not say (one 100 Gb/s link
per GPU)."""
CPU_TFLOPS = 0.05
"""A CPU training process (the test cluster): rough, calibrate with `plan --calibrate`."""


@dataclass(frozen=True)
class Workload:
    """What the time depends on beyond the layout (the recipe's data and training sections)."""

    train_samples: int | None = None
    """Rows of the train split; None: unknown (no per-epoch figures)."""
    mean_sample_tokens: int | None = None
    """Mean tokens of one sample; None: max_seq_len (padded batches are planned full)."""
    epochs: float = 1.0
    max_steps: int = -1
    """Optimizer steps to run; -1: epochs decide."""
    gradient_accumulation_steps: int = 1
    save_steps: int | None = None
    """Checkpoint interval in optimizer steps (save_strategy steps), None: per epoch / never."""
    intra_node_gbps: float | None = None
    """Collective bandwidth per GPU inside a node, GB/s (profile network.intra_node_gbps);
    None: the GPU's NVLink figure (GPU_PEAK), or PCIe."""
    inter_node_gbps: float | None = None
    """Network bandwidth per GPU between nodes, GB/s: the node's NICs divided by its GPUs
    (profile network.inter_node_gbps); None: INTER_NODE_DEFAULT_GBPS."""
    time_factor: float = 1.0
    """Per-cluster correction of the step time (hpctune plan --calibrate)."""


@dataclass
class TimePlan:
    step_seconds: float
    """One optimizer step (all micro batches of the accumulation)."""
    compute_seconds: float
    comm_seconds: float
    """Communication per step before overlap."""
    offload_seconds: float
    tokens_per_second: float
    """Tokens of all GPUs per second (padding included)."""
    save_seconds: float
    """One checkpoint (adapter or weights + optimizer states)."""
    load_seconds: float
    """Start-up and model load of one attempt."""
    steps_per_epoch: int | None
    epoch_seconds: float | None
    total_steps: int | None
    total_seconds: float | None
    """Training time of the whole run (steps + saves), without start-up."""
    gpu_hours: float | None
    flops_per_token: float
    advice: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _gpu(gpu_model: str) -> tuple[float, float, float]:
    fam = (gpu_model or "").lower()
    for key in sorted(GPU_PEAK, key=len, reverse=True):
        if fam.startswith(key):
            return GPU_PEAK[key]
    return (CPU_TFLOPS, 50.0, 0.0) if fam in ("", "none", "cpu") else GPU_PEAK["a100"]


def flops_per_token(inp) -> tuple[float, float]:
    """(forward FLOPs, forward + backward [+ recompute] FLOPs) per *sequence token*; for
    seq2seq the encoder and decoder tokens are weighted by their share."""
    s = inp.shape
    full = inp.method == "full"
    targets = set() if full else {(m.name, m.stream) for m in resolve_targets(s, inp.lora_target_modules)}
    t_len = (inp.target_len or inp.seq_len) if s.encoder_decoder else inp.seq_len
    share = {"enc": 1.0, "dec": t_len / inp.seq_len if s.encoder_decoder else 1.0,
             "mem": 1.0}
    fwd = bwd = 0.0
    for m in s.linear_modules:
        f = 2.0 * m.in_features * m.out_features * m.count * m.token_fraction * share[m.stream]
        fwd += f
        bwd += 2 * f if full else f  # frozen: input gradient only
        if (m.name, m.stream) in targets:
            lf = 2.0 * inp.lora_r * (m.in_features + m.out_features) * m.count * m.token_fraction * share[m.stream]
            fwd += lf
            bwd += 2 * lf
    # attention scores and their product with V: 4 * q_dim * keys per query token per layer;
    # causal kernels (flash, sdpa) skip the masked half
    if s.encoder_decoder:  # encoder self-attention; decoder self- and cross-attention
        attn = 4.0 * s.q_dim * (inp.seq_len * s.layers
                                + share["dec"] * s.decoder_layers * (t_len + inp.seq_len))
    else:
        causal = 0.5 if inp.attn_implementation != "eager" else 1.0
        attn = 4.0 * s.q_dim * inp.seq_len * causal * s.layers
    head = 2.0 * s.vocab * s.hidden * share["dec"]
    blocks_fwd = fwd + attn
    total = (blocks_fwd + head) + (bwd + 2 * attn + (2 if full else 1) * head)
    if inp.gradient_checkpointing:
        total += blocks_fwd
    return blocks_fwd + head, total


def _comm_bytes_per_step(inp, plan_model_bytes: float, trainable: int, ga: int) -> float:
    """Bytes one GPU sends per optimizer step (ring collectives: (N-1)/N of the payload)."""
    n = inp.world
    if n <= 1:
        return 0.0
    ring = (n - 1) / n
    eng = inp.engine
    grads = trainable * eng.grad_bytes
    if inp.zero_stage == 3:
        return ga * ring * (2 * plan_model_bytes + grads)
    if inp.zero_stage in (1, 2):
        return ring * ((ga if inp.zero_stage == 2 else 1) * grads + trainable * eng.param_bytes)
    return 2 * ring * grads  # DDP all-reduce once per step (no_sync while accumulating)


def estimate_time(inp, work: Workload, plan=None) -> TimePlan:
    """Step, save, epoch and run time of one layout (pure arithmetic)."""
    from .memory import _model_bytes, _trainable  # noqa: PLC0415 (memory imports nothing of ours)

    peak_tflops, hbm_gbps, nvlink = _gpu(inp.gpu_model)
    ga = max(1, work.gradient_accumulation_steps)
    fwd, total = flops_per_token(inp)
    tokens_micro = inp.micro_batch * _tokens_per_sequence(inp, work)
    compute = ga * tokens_micro * total / (peak_tflops * 1e12 * EFFICIENCY)
    model_b, _ = _model_bytes(inp)
    psi = _trainable(inp)
    if inp.method == "qlora":  # dequantize each 4-bit weight at every use: read 4-bit, write bf16
        uses = 3 if inp.gradient_checkpointing else 2
        compute += ga * uses * inp.shape.linear_params * 2.5 / (hbm_gbps * 1e9)
    intra = work.intra_node_gbps or (nvlink or PCIE_GBPS)
    bw = intra if inp.nodes == 1 else min(intra, work.inter_node_gbps or INTER_NODE_DEFAULT_GBPS)
    comm = _comm_bytes_per_step(inp, model_b, psi, ga) / (bw * 1e9)
    offload = 0.0
    n = inp.world
    if inp.offload_optimizer != "none":
        offload += psi / n / CPU_ADAM_PARAMS_PER_S + psi / n * 2 * inp.engine.grad_bytes / (PCIE_GBPS * 1e9)
    if inp.offload_param != "none":
        offload += ga * 2 * model_b / n / (PCIE_GBPS * 1e9)
    step = (max(compute, comm) + (1 - COMM_OVERLAP) * min(compute, comm) + offload) * work.time_factor
    tokens_step = tokens_micro * ga * n
    save = _save_seconds(inp, psi, model_b, bw)
    load = STARTUP_S + inp.shape.n_params * 2 / (FS_READ_GBPS * 1e9)
    steps_epoch = epoch_s = total_steps = total_s = gpu_h = None
    if work.train_samples:
        if inp.packing and work.mean_sample_tokens:
            seqs = math.ceil(work.train_samples * work.mean_sample_tokens / inp.seq_len)
        else:
            seqs = work.train_samples
        steps_epoch = max(1, math.ceil(seqs / (inp.micro_batch * ga * n)))
        epoch_s = steps_epoch * step
    if work.max_steps and work.max_steps > 0:
        total_steps = work.max_steps
    elif steps_epoch is not None:
        total_steps = math.ceil(steps_epoch * work.epochs)
    if total_steps is not None:
        n_saves = (total_steps // work.save_steps) if work.save_steps else max(1, math.ceil(work.epochs))
        total_s = total_steps * step + n_saves * save
        gpu_h = (total_s + load) * n / 3600
    tp = TimePlan(step_seconds=step, compute_seconds=compute, comm_seconds=comm,
                  offload_seconds=offload, tokens_per_second=tokens_step / step if step else 0.0,
                  save_seconds=save, load_seconds=load, steps_per_epoch=steps_epoch,
                  epoch_seconds=epoch_s, total_steps=total_steps, total_seconds=total_s,
                  gpu_hours=gpu_h, flops_per_token=total)
    tp.advice = advise(tp)
    return tp


def _tokens_per_sequence(inp, work: Workload) -> float:
    """Tokens one sequence of a micro batch really carries through the model: max_seq_len when
    packed; padded to the longest sample of the batch otherwise (about 1.5x the mean)."""
    if inp.packing or not work.mean_sample_tokens:
        return inp.seq_len
    return min(inp.seq_len, 1.5 * work.mean_sample_tokens)


def _save_seconds(inp, psi: int, model_b: float, bw_gbps: float) -> float:
    """One checkpoint: the Trainer's save_model (adapter, or 16-bit weights gathered on rank
    0 under ZeRO-3) plus the optimizer states every rank writes in parallel."""
    eng = inp.engine
    states = psi * (eng.param_bytes + eng.optimizer_bytes)  # written by all ranks together
    model = psi * 2 if inp.method == "full" else psi * eng.param_bytes
    gather = model_b / (bw_gbps * 1e9) if inp.zero_stage == 3 else 0.0
    return SAVE_FIXED_S + gather + model / (FS_WRITE_GBPS * 1e9) + states / (FS_WRITE_GBPS * 1e9 * inp.nodes)


def advise(tp: TimePlan, *, max_time_minutes: float | None = None, max_attempts: int = 1) -> dict:
    """Time limit (with requeues), warning lead and checkpoint interval for a TimePlan.

    * signal_seconds >= 2 optimizer steps + one save (+30 s for the launcher to pass it on):
      the stop is checked at a step end, so up to one step runs before the save starts;
    * save_steps: lose at most LOST_WORK_S of work, save for at most SAVE_SHARE of the time;
    * time limit: the run plus start-up and 10 %, split over requeued attempts when longer than
      the partition allows.
    """
    out: dict = {"signal_seconds_min": math.ceil(2 * tp.step_seconds + tp.save_seconds + 30)}
    by_loss = LOST_WORK_S / tp.step_seconds
    by_cost = tp.save_seconds / (SAVE_SHARE * tp.step_seconds)
    save_steps = max(1, int(max(by_cost, min(by_loss, tp.steps_per_epoch or by_loss))))
    out["save_steps"] = save_steps
    if tp.total_seconds is not None:
        need = (tp.total_seconds + tp.load_seconds) * 1.1
        attempts = 1
        if max_time_minutes and need > max_time_minutes * 60:
            per = max_time_minutes * 60 - tp.load_seconds - out["signal_seconds_min"]
            attempts = math.ceil(tp.total_seconds / max(per, 1.0))
            need = max_time_minutes * 60
        out["time_limit_minutes"] = math.ceil(need / 60)
        out["attempts"] = attempts
        out["attempts_ok"] = attempts <= max_attempts
    return out
