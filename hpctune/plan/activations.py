"""Activation memory of one training process (docs/memory-model.md §5).

Counted per token per block as the bytes autograd saves for backward (what
``torch.autograd.graph.saved_tensors_hooks`` sees), then kept through the step (everything
without gradient checkpointing, each block's input with it) plus a transient peak on top: one
recomputed block with the gradients in flight in it, or the logits and the loss.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from .shapes import ModelShape, resolve_targets

if TYPE_CHECKING:  # pragma: no cover
    from .engines import Engine
    from .inputs import PlanInput

MASK_BYTES = 1
"""Bytes per element of a dropout mask on CUDA (native_dropout keeps a bool mask)."""
LOSS_EXTRA_BYTES = 12
"""Bytes per logit the loss holds on top of the logits themselves at its peak: the fp32
upcast (4), cross-entropy's fp32 log-softmax output (4) and, in backward, the fp32 gradient
(4) before it is cast back. (transformers 5 ``ForCausalLMLoss`` holds about 10; the releases
of the published measurements upcast in the model's forward and copied the shifted logits,
about 16: 12 is fitted to the long-sequence rows of §9, where the logits dominate.)"""

_LAYERNORM_ARCHS = ("falcon", "bart", "bloom", "opt", "gpt2", "gpt_neox", "phi")
_PARALLEL_ARCHS = ("falcon", "gpt_neox", "phi")
"""Attention and MLP read the same block input: its saved copy for the norms is kept once."""


def act_bytes(precision: str) -> int:
    """Bytes of one activation element: 2 under bf16/fp16 autocast, 4 in fp32."""
    return 4 if precision == "no" else 2


def attention_kind(inp: "PlanInput") -> str:
    """The kernel that really runs: BLOOM's ALiBi attention has only an eager path."""
    return "eager" if inp.shape.eager_only else inp.attn_implementation


def _norm_per_token(s: ModelShape, a: int, trainable: bool) -> float:
    """Bytes one normalization layer stores per token (§5.1)."""
    h = s.hidden
    if s.arch in _LAYERNORM_ARCHS:  # LayerNorm saves its input (+ mean/rstd, ~0)
        kept = a * h
    elif s.arch == "t5":  # fp32 copy for the variance + the input it rescales
        kept = 4 * h + (a * h if a < 4 else 0)
    else:  # RMSNorm (Llama, Gemma, Phi-3, Qwen): one fp32 copy of the input
        kept = 4 * h
    # A trainable RMSNorm weight is a Python multiply that keeps the normalized output;
    # LayerNorm's weight gradient comes from the input and its saved statistics.
    return kept + (a * h if trainable and s.arch not in _LAYERNORM_ARCHS else 0)


def block_per_token(s: ModelShape, a: int, s_kv: int, attn: str, full: bool,
                    cross: bool = False) -> float:
    """Bytes stored for backward per token by one block (§5), LoRA excluded.

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
    if s.arch not in _PARALLEL_ARCHS:  # parallel blocks: both norms read one stored input
        mlp += norm
    if s.arch == "gemma2":  # two more RMSNorms per block (post-attention, post-MLP)
        mlp += 2 * _norm_per_token(s, a, full)
    if s.arch in ("gpt2", "phi"):  # gelu_new from Python ops: three more I-wide tensors
        mlp += 3 * a * width
    if s.arch == "t5":
        # gelu_new is composed of Python ops (tanh form): three more I-wide tensors, and T5
        # drops out inside the MLP (a mask)
        mlp += (3 * a * width if s.gated_mlp else 0) + (MASK_BYTES * width if s.dropout else 0)
    return attn_part + mlp


def _lora_per_layer(inp: "PlanInput", eng: "Engine", a: int) -> dict[str, float]:
    """Bytes per token per layer that LoRA's own tensors add, by stream (dec/enc/mem).

    PEFT's LoRA forward is ``lora_B(lora_A(dropout(cast(x))))``: with dropout each targeted
    layer keeps its dropped input and the mask, in·(p + 1); without dropout but with a cast
    (adapter dtype != activation dtype) it keeps the cast copy, in·p; without either lora_A
    keeps ``x`` itself, which other layers share (counted once by ``_kept_inputs``). lora_B
    keeps lora_A's output, r·p. Here p is the adapter dtype bytes. (Checked with
    saved_tensors_hooks on PEFT 0.21: the cast copy is not kept when dropout follows it.)
    """
    if inp.method == "full":
        return {}
    lp = eng.param_bytes
    if inp.lora_dropout > 0:
        own = lp + MASK_BYTES
    else:
        own = lp if lp != a else 0
    out: dict[str, float] = {}
    for m in resolve_targets(inp.shape, inp.lora_target_modules):
        per = (m.in_features * own + inp.lora_r * lp) * m.count * m.token_fraction
        out[m.stream] = out.get(m.stream, 0.0) + per
    return out


# Which input tensor a linear layer reads, by leaf name: layers with one role in one block read
# the same tensor (q, k, v read the normed hidden states).
_ATTN_IN = frozenset(("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn",
                      "q", "k", "v"))
_ATTN_OUT = frozenset(("o_proj", "o", "out_proj", "dense"))
_MLP_IN = frozenset(("gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "dense_h_to_4h", "fc1",
                     "wi", "wi_0", "wi_1", "gate"))


def _role(s: ModelShape, m) -> str:
    if m.name in _ATTN_IN:
        return "attn_in"
    if m.name in _ATTN_OUT or (m.name == "c_proj" and m.in_features == s.hidden):
        return "attn_out"  # Qwen v1 names its attention output c_proj too
    if m.name in _MLP_IN or (m.name == "w2" and m.in_features == s.hidden):
        return "attn_in" if s.shared_block_norm else "mlp_in"  # Qwen v1 w2 is an input layer
    return "mlp_mid"  # down_proj, dense_4h_to_h, fc2, wo, Mixtral w2, Qwen v1 c_proj


def _mid_is_kept(s: ModelShape) -> bool:
    """The down projection reads a tensor the MLP keeps anyway: ReLU keeps its output (OPT; T5
    v1.0 when no dropout follows it)."""
    return s.arch == "opt" or (s.arch == "t5" and not s.gated_mlp and not s.dropout)


def _kept_inputs(inp: "PlanInput", eng: "Engine", a: int, attn: str) -> dict[str, float]:
    """Bytes per token per layer, by stream, of the inputs of frozen linear layers that stay
    alive for backward although the frozen weight needs no gradient:

    * bitsandbytes < 0.43.2 ``MatMul4Bit`` kept its input ``A`` for every 4-bit layer
      (bitsandbytes CHANGELOG 0.43.2, PR #1270: "activations being unnecessary for frozen
      parameters ... still erroneously allocated"); ``PlanInput.bnb_keeps_input``.
    * LoRA without dropout and without a dtype cast: lora_A keeps ``x`` itself.

    Layers of one role in one block share their input tensor (q, k, v read the same normed
    hidden states), so each (stream, role, occurrence) is counted once. The attention output
    feeding o_proj is a fresh copy only under eager attention (matmul, transpose, contiguous);
    flash and sdpa kernels return it in the (batch, seq, heads, dim) layout they keep for
    backward, so o_proj reads a view of a kept tensor. Cross-attention keys and values read
    the encoder output, which is kept anyway ("mem" stream: nothing more). (Checked with
    saved_tensors_hooks on transformers 5.23, CPU: Llama, Gemma, OPT, GPT-NeoX, Phi within 1%,
    GPT-2 within 7%.)
    """
    if inp.method == "full":
        return {}  # full fine-tuning keeps every linear input already (block_per_token)
    quant_all = inp.method == "qlora" and inp.quant_bits == 4 and inp.bnb_keeps_input
    shares_x = inp.lora_dropout <= 0 and eng.param_bytes == a
    if not (quant_all or shares_x):
        return {}
    return _kept_inputs_of(inp.shape, quant_all, inp.lora_target_modules if shares_x else (),
                           a, attn)


@lru_cache(maxsize=1024)
def _kept_inputs_of(s: ModelShape, quant_all: bool, targets, a: int, attn: str) -> dict:
    chosen = {id(m) for m in resolve_targets(s, targets)} if targets != () else set()
    widths: dict[tuple, float] = {}
    seen: dict[tuple, int] = {}
    for m in s.linear_modules:
        occ = seen.get((m.stream, m.name), 0)
        seen[(m.stream, m.name)] = occ + 1
        if m.stream == "mem" or not (quant_all or id(m) in chosen):
            continue
        role = _role(s, m)
        if role == "attn_out" and attn != "eager":
            continue  # flash / sdpa kernels keep their output; o_proj reads a view of it
        if role == "mlp_mid" and _mid_is_kept(s):
            continue
        layers = s.decoder_layers if (s.encoder_decoder and m.stream == "dec") else s.layers
        w = m.in_features * m.token_fraction * m.count / layers
        key = (m.stream, role, occ)
        widths[key] = max(widths.get(key, 0.0), w)
    out: dict[str, float] = {}
    for (stream, _, _), w in widths.items():
        out[stream] = out.get(stream, 0.0) + a * w
    return out


def logits_bytes_per_token(s: ModelShape, a: int) -> float:
    """Peak bytes per output token of the logits and the loss (Gemma 2's capping keeps two more
    logits-sized tensors: the divided logits and their tanh)."""
    return s.vocab * (a + LOSS_EXTRA_BYTES + (2 * a if s.logit_softcap else 0))


def activations(inp: "PlanInput", eng: "Engine") -> tuple[float, float]:
    """(bytes kept through the step, transient peak on top of them), §5."""
    s, a, b = inp.shape, act_bytes(inp.precision), inp.micro_batch
    attn = attention_kind(inp)
    full = inp.method == "full"
    lora = _lora_per_layer(inp, eng, a)
    kept_in = _kept_inputs(inp, eng, a, attn)
    widest = max(s.intermediate * s.experts_per_token, s.q_dim + 2 * s.kv_dim, s.hidden)
    if s.encoder_decoder:
        t_len = inp.target_len or inp.seq_len
        t_enc, t_dec = b * inp.seq_len, b * t_len
        enc = t_enc * (block_per_token(s, a, inp.seq_len, attn, full)
                       + lora.get("enc", 0) / s.layers + kept_in.get("enc", 0))
        dec = t_dec * (block_per_token(s, a, t_len, attn, full)
                       + block_per_token(s, a, inp.seq_len, attn, full, cross=True)
                       + lora.get("dec", 0) / s.decoder_layers + kept_in.get("dec", 0)) \
            + t_enc * (2 * a * s.kv_dim + lora.get("mem", 0) / s.decoder_layers)
        memory = a * s.hidden * t_enc  # encoder output, read by every decoder layer
        if inp.gradient_checkpointing:
            kept = a * s.hidden * (s.layers * t_enc + s.decoder_layers * t_dec) + memory
            layer = max(enc, dec)
        else:
            kept, layer = s.layers * enc + s.decoder_layers * dec + memory, 0.0
        tokens, logit_tokens = max(t_enc, t_dec), t_dec
    else:
        t = b * inp.seq_len
        per_layer = t * (block_per_token(s, a, inp.seq_len, attn, full)
                         + lora.get("dec", 0) / s.layers + kept_in.get("dec", 0))
        if inp.gradient_checkpointing:
            kept, layer = s.layers * a * s.hidden * t, per_layer
        else:
            kept, layer = s.layers * per_layer, 0.0
        tokens = logit_tokens = t
    workspace = a * tokens * (2 * widest + s.hidden)  # gradients in flight inside one block
    logits = logit_tokens * logits_bytes_per_token(s, a)
    return kept, max(logits, layer + workspace)
