"""Model shapes: exact parameter counts and the linear layers LoRA can target.

Pure Python on purpose (no torch, no transformers): the planner runs on login nodes and must
answer in milliseconds. Each architecture family has one builder that derives every count from
the config dimensions; the built-in table only lists dimensions (copied from each model's
config.json), never parameter totals. Tests pin the builders to known exact totals
(Llama-2-70B = 68,976,648,192; Falcon-180B = 178,557,088,768 with tied embeddings).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LinearSpec:
    """One kind of ``nn.Linear`` in a model, all its instances together."""

    name: str
    """Leaf module name, as PEFT's ``target_modules`` matches it (``"q_proj"``)."""
    in_features: int
    """Input width."""
    out_features: int
    """Output width."""
    count: int
    """Instances in the whole model (layers x experts x ...)."""
    bias: bool = False
    """Whether each instance has a bias vector."""
    stream: str = "dec"
    """Tokens that flow through it: ``"dec"`` (decoder / causal stack), ``"enc"`` (encoder
    stack) or ``"mem"`` (cross-attention key/value: encoder tokens, once per decoder layer)."""
    token_fraction: float = 1.0
    """Share of the stream's tokens one instance sees: 1, or top-k / n_experts for MoE experts."""

    @property
    def weight_params(self) -> int:
        """Weight elements over all instances (what bitsandbytes quantizes)."""
        return self.in_features * self.out_features * self.count

    @property
    def params(self) -> int:
        """Weights plus biases over all instances."""
        return self.weight_params + (self.out_features * self.count if self.bias else 0)


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a network, no weights involved."""

    name: str
    """Canonical hub name (``"meta-llama/Llama-2-70b-hf"``) or the local folder."""
    arch: str
    """Family: llama, mistral, mixtral, qwen2, gemma2, phi3, qwen (v1), falcon, bloom, bart or t5
    (mt5 is built as t5)."""
    n_params: int
    """Exact total parameters; tied embeddings counted once."""
    hidden: int
    """Model width (d_model)."""
    layers: int
    """Decoder layers of a causal LM; encoder layers of an encoder-decoder."""
    heads: int
    """Attention (query) heads."""
    kv_heads: int
    """Key/value heads (grouped-query or multi-query attention)."""
    intermediate: int
    """MLP inner width (one expert's, for MoE)."""
    vocab: int
    """Vocabulary size (rows of the token embedding and of the output layer)."""
    n_experts: int = 1
    """Experts per MoE layer (1 = dense)."""
    experts_per_token: int = 1
    """Experts each token is routed to (top-k)."""
    encoder_decoder: bool = False
    """True for seq2seq models (BART, T5)."""
    decoder_layers: int = 0
    """Decoder layers of an encoder-decoder (0 for causal LMs)."""
    head_dim: int = 0
    """Width of one attention head; 0 means hidden // heads."""
    gated_mlp: bool = True
    """Three-matrix MLP (SwiGLU / gated GELU) rather than two matrices (GELU/ReLU)."""
    dropout: float = 0.0
    """Residual dropout at training time (BART and T5: 0.1; decoder-only LLMs: 0)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (T5: 0.1; eager attention stores its mask)."""
    tied_embeddings: bool = False
    """Output layer shares the token embedding."""
    linear_modules: tuple[LinearSpec, ...] = ()
    """Every linear layer LoRA could target; the output layer (lm_head) is not listed, as PEFT's
    "all-linear" leaves it out."""
    embeddings: tuple[tuple[int, int], ...] = ()
    """(numel, count) of the large tensors that are never quantized: token embedding, untied
    output layer, learned position tables."""
    default_lora_targets: tuple[str, ...] = ()
    """PEFT's default ``target_modules`` for this family."""
    learned_positions: int = 0
    """Rows of a learned absolute position table (BART, OPT, GPT-2), i.e. the longest sequence the model
    can take; 0 for rotary, ALiBi or relative positions (rule max-seq-len-positions)."""
    logit_softcap: bool = False
    """Gemma 2 caps the logits (divide, tanh, multiply): two more logits-sized tensors kept."""
    shared_block_norm: bool = False
    """One LayerNorm feeds both the attention and the MLP of a block (Falcon-7B's parallel
    block): their linear layers read the same tensor."""
    eager_only: bool = False
    """The transformers implementation has no flash/sdpa path (BLOOM's ALiBi attention), so the
    attention scores are materialized whatever the recipe asks for."""

    @property
    def q_dim(self) -> int:
        """Width of all query heads together."""
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together."""
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def total_layers(self) -> int:
        """Transformer blocks over all stacks."""
        return self.layers + self.decoder_layers

    @property
    def linear_module_names(self) -> tuple[str, ...]:
        """Distinct leaf names of the linear layers, in model order."""
        return tuple(dict.fromkeys(m.name for m in self.linear_modules))

    @property
    def linear_params(self) -> int:
        """Weights of all linear layers except the output layer: what 4-bit quantizes."""
        return sum(m.weight_params for m in self.linear_modules)

    @property
    def linear_params_per_layer(self) -> int:
        """Linear weights per transformer block (averaged over stacks)."""
        return self.linear_params // self.total_layers

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest single weight: ZeRO-3 must gather at least this much."""
        sizes = [m.in_features * m.out_features for m in self.linear_modules]
        return max(sizes + [n for n, _ in self.embeddings])


# ---------------------------------------------------------------------------- builders
def _decoder_only(name, arch, *, hidden, layers, heads, kv_heads, intermediate, vocab,
                  tied=False, qkv_bias=False, head_dim=0, n_experts=1, top_k=1,
                  norms_per_block=2, softcap=False) -> ModelShape:
    """Llama, Mistral, Mixtral, Qwen2, Gemma 2: RMSNorm, rotary positions, gated MLP.
    Gemma 2 has four norms per block, an explicit head_dim and capped logits."""
    hd = head_dim or hidden // heads
    q, kv = heads * hd, kv_heads * hd
    mods = [LinearSpec("q_proj", hidden, q, layers, qkv_bias),
            LinearSpec("k_proj", hidden, kv, layers, qkv_bias),
            LinearSpec("v_proj", hidden, kv, layers, qkv_bias),
            LinearSpec("o_proj", q, hidden, layers)]
    if n_experts > 1:  # Mixtral names (transformers < 5: one nn.Linear per expert)
        frac = top_k / n_experts
        mods += [LinearSpec("w1", hidden, intermediate, layers * n_experts, token_fraction=frac),
                 LinearSpec("w2", intermediate, hidden, layers * n_experts, token_fraction=frac),
                 LinearSpec("w3", hidden, intermediate, layers * n_experts, token_fraction=frac),
                 LinearSpec("gate", hidden, n_experts, layers)]
    else:
        mods += [LinearSpec("gate_proj", hidden, intermediate, layers),
                 LinearSpec("up_proj", hidden, intermediate, layers),
                 LinearSpec("down_proj", intermediate, hidden, layers)]
    emb = ((vocab * hidden, 1 if tied else 2),)
    norms = (norms_per_block * layers + 1) * hidden
    n = sum(m.params for m in mods) + vocab * hidden * emb[0][1] + norms
    return ModelShape(name, arch, n, hidden, layers, heads, kv_heads, intermediate, vocab,
                      n_experts=n_experts, experts_per_token=top_k, head_dim=head_dim,
                      tied_embeddings=tied, linear_modules=tuple(mods), embeddings=emb,
                      default_lora_targets=("q_proj", "v_proj"), logit_softcap=softcap)


def _phi3(name, *, hidden, layers, heads, kv_heads, intermediate, vocab, tied=False) -> ModelShape:
    """Phi-3: Llama-like with fused qkv_proj and gate_up_proj."""
    hd = hidden // heads
    q, kv = heads * hd, kv_heads * hd
    mods = (LinearSpec("qkv_proj", hidden, q + 2 * kv, layers),
            LinearSpec("o_proj", q, hidden, layers),
            LinearSpec("gate_up_proj", hidden, 2 * intermediate, layers),
            LinearSpec("down_proj", intermediate, hidden, layers))
    emb = ((vocab * hidden, 1 if tied else 2),)
    n = sum(m.params for m in mods) + vocab * hidden * emb[0][1] + (2 * layers + 1) * hidden
    return ModelShape(name, "phi3", n, hidden, layers, heads, kv_heads, intermediate, vocab,
                      tied_embeddings=tied, linear_modules=mods, embeddings=emb,
                      default_lora_targets=("qkv_proj",))


def _qwen1(name, *, hidden, layers, heads, intermediate, vocab) -> ModelShape:
    """Qwen (v1, remote code): fused c_attn with bias, c_proj, a SwiGLU MLP of w1, w2 (each
    intermediate/2 wide) and c_proj; RMSNorm; untied output layer."""
    ff = intermediate // 2
    mods = (LinearSpec("c_attn", hidden, 3 * hidden, layers, True),
            LinearSpec("c_proj", hidden, hidden, layers),
            LinearSpec("w1", hidden, ff, layers),
            LinearSpec("w2", hidden, ff, layers),
            LinearSpec("c_proj", ff, hidden, layers))
    n = sum(m.params for m in mods) + 2 * vocab * hidden + (2 * layers + 1) * hidden
    return ModelShape(name, "qwen", n, hidden, layers, heads, heads, ff, vocab,
                      linear_modules=mods, embeddings=((vocab * hidden, 2),),
                      default_lora_targets=("c_attn",))


def _bloom(name, *, hidden, layers, heads, vocab) -> ModelShape:
    """BLOOM: fused query_key_value, LayerNorm with bias (one more after the embedding),
    GELU MLP, ALiBi (no position table), tied output layer, eager attention only."""
    mods = (LinearSpec("query_key_value", hidden, 3 * hidden, layers, True),
            LinearSpec("dense", hidden, hidden, layers, True),
            LinearSpec("dense_h_to_4h", hidden, 4 * hidden, layers, True),
            LinearSpec("dense_4h_to_h", 4 * hidden, hidden, layers, True))
    n = sum(m.params for m in mods) + vocab * hidden + (2 * layers + 2) * 2 * hidden
    return ModelShape(name, "bloom", n, hidden, layers, heads, heads, 4 * hidden, vocab,
                      gated_mlp=False, tied_embeddings=True, linear_modules=mods,
                      embeddings=((vocab * hidden, 1),), eager_only=True,
                      default_lora_targets=("query_key_value",))


def _falcon(name, *, hidden, layers, heads, kv_heads, vocab, new_arch, ffn=0, bias=False,
            parallel_attn=True, n_ln=0) -> ModelShape:
    """Falcon: fused query_key_value, LayerNorm with bias, GELU MLP, tied embeddings."""
    hd = hidden // heads
    ffn = ffn or 4 * hidden
    if new_arch:  # 40B/180B: grouped kv heads, two LayerNorms per block by default
        qkv_out = (heads + 2 * kv_heads) * hd
        n_ln = n_ln or 2
    else:  # 7B: multi-query (kv_heads = 1) or classic multi-head
        qkv_out = hidden + 2 * hd if kv_heads == 1 else 3 * hidden
        n_ln = 1 if parallel_attn else 2
    mods = (LinearSpec("query_key_value", hidden, qkv_out, layers, bias),
            LinearSpec("dense", hidden, hidden, layers, bias),
            LinearSpec("dense_h_to_4h", hidden, ffn, layers, bias),
            LinearSpec("dense_4h_to_h", ffn, hidden, layers, bias))
    n = sum(m.params for m in mods) + vocab * hidden + (n_ln * layers + 1) * 2 * hidden
    return ModelShape(name, "falcon", n, hidden, layers, heads, kv_heads, ffn, vocab,
                      gated_mlp=False, tied_embeddings=True, linear_modules=mods,
                      embeddings=((vocab * hidden, 1),),
                      shared_block_norm=parallel_attn and n_ln == 1,
                      default_lora_targets=("query_key_value",))


def _bart(name, *, d_model, enc_layers, dec_layers, heads, ffn, vocab, max_pos,
          dropout=0.1, attention_dropout=0.0) -> ModelShape:
    """BART: post-LayerNorm encoder-decoder, learned positions (offset 2), shared embedding."""
    h, le, ld = d_model, enc_layers, dec_layers
    attn = lambda n, stream, kv_stream=None: [  # noqa: E731 - four projections with bias
        LinearSpec("q_proj", h, h, n, True, stream),
        LinearSpec("k_proj", h, h, n, True, kv_stream or stream),
        LinearSpec("v_proj", h, h, n, True, kv_stream or stream),
        LinearSpec("out_proj", h, h, n, True, stream)]
    mods = (attn(le, "enc") + [LinearSpec("fc1", h, ffn, le, True, "enc"),
                               LinearSpec("fc2", ffn, h, le, True, "enc")]
            + attn(ld, "dec") + attn(ld, "dec", "mem")
            + [LinearSpec("fc1", h, ffn, ld, True, "dec"),
               LinearSpec("fc2", ffn, h, ld, True, "dec")])
    emb = ((vocab * h, 1), ((max_pos + 2) * h, 2))
    norms = 2 * h * (2 * le + 3 * ld + 2)  # per-block LNs + layernorm_embedding x2
    n = sum(m.params for m in mods) + vocab * h + 2 * (max_pos + 2) * h + norms
    return ModelShape(name, "bart", n, h, le, heads, heads, ffn, vocab, encoder_decoder=True,
                      decoder_layers=ld, gated_mlp=False, dropout=dropout,
                      attention_dropout=attention_dropout, tied_embeddings=True,
                      linear_modules=tuple(mods), embeddings=emb,
                      default_lora_targets=("q_proj", "v_proj"), learned_positions=max_pos)


def _t5(name, *, d_model, d_kv, d_ff, layers, dec_layers, heads, vocab, gated=True,
        tied=False, buckets=32, dropout=0.1) -> ModelShape:
    """T5 / T5 v1.1 (T0): RMS LayerNorm without bias, relative position bias, no biases."""
    h, inner = d_model, d_kv * heads
    attn = lambda n, stream, kv_stream=None: [  # noqa: E731
        LinearSpec("q", h, inner, n, stream=stream),
        LinearSpec("k", h, inner, n, stream=kv_stream or stream),
        LinearSpec("v", h, inner, n, stream=kv_stream or stream),
        LinearSpec("o", inner, h, n, stream=stream)]

    def ff(n, stream):
        if gated:
            return [LinearSpec("wi_0", h, d_ff, n, stream=stream),
                    LinearSpec("wi_1", h, d_ff, n, stream=stream),
                    LinearSpec("wo", d_ff, h, n, stream=stream)]
        return [LinearSpec("wi", h, d_ff, n, stream=stream),
                LinearSpec("wo", d_ff, h, n, stream=stream)]

    mods = attn(layers, "enc") + ff(layers, "enc") + attn(dec_layers, "dec") \
        + attn(dec_layers, "dec", "mem") + ff(dec_layers, "dec")
    emb = ((vocab * h, 1 if tied else 2),)
    norms = h * (2 * layers + 3 * dec_layers + 2)
    n = (sum(m.params for m in mods) + vocab * h * emb[0][1] + norms + 2 * buckets * heads)
    return ModelShape(name, "t5", n, h, layers, heads, heads, d_ff, vocab, encoder_decoder=True,
                      decoder_layers=dec_layers, head_dim=d_kv, gated_mlp=gated, dropout=dropout,
                      attention_dropout=dropout, tied_embeddings=tied,
                      linear_modules=tuple(mods), embeddings=emb, default_lora_targets=("q", "v"))


def _opt(name, *, hidden, layers, heads, ffn, vocab, max_pos=2048, proj_dim=0,
         final_norm=True) -> ModelShape:
    """OPT: pre-LayerNorm decoder (post-LN for 350m), learned positions (offset 2), q/k/v/out
    projections and fc1/fc2 with bias, ReLU MLP, lm_head tied to the token embedding;
    OPT-350m embeds in 512 dimensions and projects in and out (project_in/project_out)."""
    p = proj_dim or hidden
    mods = [LinearSpec("q_proj", hidden, hidden, layers, True),
            LinearSpec("k_proj", hidden, hidden, layers, True),
            LinearSpec("v_proj", hidden, hidden, layers, True),
            LinearSpec("out_proj", hidden, hidden, layers, True),
            LinearSpec("fc1", hidden, ffn, layers, True),
            LinearSpec("fc2", ffn, hidden, layers, True)]
    if p != hidden:
        mods += [LinearSpec("project_in", p, hidden, 1), LinearSpec("project_out", hidden, p, 1)]
    emb = ((vocab * p, 1), ((max_pos + 2) * hidden, 1))
    norms = 2 * hidden * (2 * layers + (1 if final_norm else 0))
    n = sum(m.params for m in mods) + vocab * p + (max_pos + 2) * hidden + norms
    return ModelShape(name, "opt", n, hidden, layers, heads, heads, ffn, vocab, gated_mlp=False,
                      tied_embeddings=True, linear_modules=tuple(mods), embeddings=emb,
                      default_lora_targets=("q_proj", "v_proj"), learned_positions=max_pos)


def _gpt2(name, *, hidden, layers, heads, vocab=50257, max_pos=1024) -> ModelShape:
    """GPT-2: pre-LayerNorm, learned positions, fused c_attn (Conv1D, bias), c_proj, c_fc and
    c_proj of the GELU MLP (4h), tied output layer."""
    mods = (LinearSpec("c_attn", hidden, 3 * hidden, layers, True),
            LinearSpec("c_proj", hidden, hidden, layers, True),
            LinearSpec("c_fc", hidden, 4 * hidden, layers, True),
            LinearSpec("c_proj", 4 * hidden, hidden, layers, True))
    n = sum(m.params for m in mods) + (vocab + max_pos) * hidden + 2 * hidden * (2 * layers + 1)
    return ModelShape(name, "gpt2", n, hidden, layers, heads, heads, 4 * hidden, vocab,
                      gated_mlp=False, tied_embeddings=True, linear_modules=mods,
                      embeddings=((vocab * hidden, 1), (max_pos * hidden, 1)),
                      default_lora_targets=("c_attn",), learned_positions=max_pos)


def _neox(name, *, hidden, layers, heads, vocab, ffn=0) -> ModelShape:
    """GPT-NeoX / Pythia: parallel attention and MLP with one LayerNorm each, fused
    query_key_value, GELU MLP, all with bias, rotary positions, untied embed_out."""
    ffn = ffn or 4 * hidden
    mods = (LinearSpec("query_key_value", hidden, 3 * hidden, layers, True),
            LinearSpec("dense", hidden, hidden, layers, True),
            LinearSpec("dense_h_to_4h", hidden, ffn, layers, True),
            LinearSpec("dense_4h_to_h", ffn, hidden, layers, True))
    n = sum(m.params for m in mods) + 2 * vocab * hidden + 2 * hidden * (2 * layers + 1)
    return ModelShape(name, "gpt_neox", n, hidden, layers, heads, heads, ffn, vocab,
                      gated_mlp=False, linear_modules=mods, embeddings=((vocab * hidden, 2),),
                      default_lora_targets=("query_key_value",))


def _phi(name, *, hidden, layers, heads, ffn, vocab) -> ModelShape:
    """Phi-1.5 / Phi-2: parallel attention and MLP behind one LayerNorm, q/k/v/dense and
    fc1/fc2 with bias, GELU MLP, untied lm_head with bias."""
    mods = (LinearSpec("q_proj", hidden, hidden, layers, True),
            LinearSpec("k_proj", hidden, hidden, layers, True),
            LinearSpec("v_proj", hidden, hidden, layers, True),
            LinearSpec("dense", hidden, hidden, layers, True),
            LinearSpec("fc1", hidden, ffn, layers, True),
            LinearSpec("fc2", ffn, hidden, layers, True))
    n = sum(m.params for m in mods) + 2 * vocab * hidden + vocab + 2 * hidden * (layers + 1)
    return ModelShape(name, "phi", n, hidden, layers, heads, heads, ffn, vocab, gated_mlp=False,
                      linear_modules=mods, embeddings=((vocab * hidden, 2),),
                      shared_block_norm=True, default_lora_targets=("q_proj", "v_proj"))


# ------------------------------------------------------------------- built-in table
# Dimensions copied from each model's config.json (never parameter totals: the builders
# derive those). Fine-tuned variants (-Instruct, -chat, -it, ...) share their base's shape and
# are found through _family_key; Llama 3 / 3.1 / 3.3 of one size share one shape.
_LLAMA = {  # hidden, layers, heads, kv_heads, intermediate, vocab, tied, head_dim
    "meta-llama/Llama-2-7b-hf": (4096, 32, 32, 32, 11008, 32000, False, 0),
    "meta-llama/Llama-2-13b-hf": (5120, 40, 40, 40, 13824, 32000, False, 0),
    "meta-llama/Llama-2-70b-hf": (8192, 80, 64, 8, 28672, 32000, False, 0),
    "meta-llama/Meta-Llama-3-8B": (4096, 32, 32, 8, 14336, 128256, False, 0),
    "meta-llama/Meta-Llama-3-70B": (8192, 80, 64, 8, 28672, 128256, False, 0),
    "meta-llama/Llama-3.1-8B": (4096, 32, 32, 8, 14336, 128256, False, 0),
    "meta-llama/Llama-3.1-70B": (8192, 80, 64, 8, 28672, 128256, False, 0),
    "meta-llama/Llama-3.1-405B": (16384, 126, 128, 8, 53248, 128256, False, 0),
    "meta-llama/Llama-3.2-1B": (2048, 16, 32, 8, 8192, 128256, True, 64),
    "meta-llama/Llama-3.2-3B": (3072, 28, 24, 8, 8192, 128256, True, 128),
    "meta-llama/Llama-3.3-70B-Instruct": (8192, 80, 64, 8, 28672, 128256, False, 0),
    "mistralai/Mistral-7B-v0.1": (4096, 32, 32, 8, 14336, 32000, False, 0),
    "mistralai/Mistral-7B-v0.3": (4096, 32, 32, 8, 14336, 32768, False, 0),
    "codellama/CodeLlama-7b-hf": (4096, 32, 32, 32, 11008, 32016, False, 0),
    "codellama/CodeLlama-13b-hf": (5120, 40, 40, 40, 13824, 32016, False, 0),
    "01-ai/Yi-34B": (7168, 60, 56, 8, 20480, 64000, False, 0),
    "codellama/CodeLlama-34b-hf": (8192, 48, 64, 8, 22016, 32000, False, 0),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (2048, 22, 32, 4, 5632, 32000, False, 0),
}
_QWEN2 = {  # hidden, layers, heads, kv_heads, intermediate, vocab, tied (Qwen2 = Qwen2.5 sizes)
    "Qwen/Qwen2.5-0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "Qwen/Qwen2.5-1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "Qwen/Qwen2.5-3B": (2048, 36, 16, 2, 11008, 151936, True),
    "Qwen/Qwen2.5-7B": (3584, 28, 28, 4, 18944, 152064, False),
    "Qwen/Qwen2.5-14B": (5120, 48, 40, 8, 13824, 152064, False),
    "Qwen/Qwen2.5-32B": (5120, 64, 40, 8, 27648, 152064, False),
    "Qwen/Qwen2.5-72B": (8192, 80, 64, 8, 29568, 152064, False),
}
_GEMMA = {  # Gemma 1: hidden, layers, heads, kv_heads, intermediate (head_dim 256, tied, 256k vocab)
    "google/gemma-2b": (2048, 18, 8, 1, 16384),
    "google/gemma-7b": (3072, 28, 16, 16, 24576),
}


def _llama(name):
    h, layers, heads, kv, inter, vocab, tied, hd = _LLAMA[name]
    arch = "mistral" if "mistral" in name.lower() else "llama"
    return lambda: _decoder_only(name, arch, hidden=h, layers=layers, heads=heads, kv_heads=kv,
                                 intermediate=inter, vocab=vocab, tied=tied, head_dim=hd)


def _qwen2(name):
    h, layers, heads, kv, inter, vocab, tied = _QWEN2[name]
    return lambda: _decoder_only(name, "qwen2", hidden=h, layers=layers, heads=heads, kv_heads=kv,
                                 intermediate=inter, vocab=vocab, tied=tied, qkv_bias=True)


def _gemma(name):
    h, layers, heads, kv, inter = _GEMMA[name]
    return lambda: _decoder_only(name, "gemma", hidden=h, layers=layers, heads=heads, kv_heads=kv,
                                 intermediate=inter, vocab=256000, tied=True, head_dim=256)


def _t5_named(name, d_model, d_kv, d_ff, layers, heads, vocab, gated=True, tied=False):
    return lambda: _t5(name, d_model=d_model, d_kv=d_kv, d_ff=d_ff, layers=layers,
                       dec_layers=layers, heads=heads, vocab=vocab, gated=gated, tied=tied)


_TABLE = {
    **{name: _llama(name) for name in _LLAMA},
    "mistralai/Mixtral-8x7B-v0.1": lambda: _decoder_only(
        "mistralai/Mixtral-8x7B-v0.1", "mixtral", hidden=4096, layers=32, heads=32, kv_heads=8,
        intermediate=14336, vocab=32000, n_experts=8, top_k=2),
    "tiiuae/falcon-7b": lambda: _falcon("tiiuae/falcon-7b", hidden=4544, layers=32, heads=71,
                                        kv_heads=1, vocab=65024, new_arch=False),
    "tiiuae/falcon-40b": lambda: _falcon("tiiuae/falcon-40b", hidden=8192, layers=60, heads=128,
                                         kv_heads=8, vocab=65024, new_arch=True),
    "tiiuae/falcon-180B": lambda: _falcon("tiiuae/falcon-180B", hidden=14848, layers=80,
                                          heads=232, kv_heads=8, vocab=65024, new_arch=True),
    **{name: _qwen2(name) for name in _QWEN2},
    **{name: _gemma(name) for name in _GEMMA},
    "Qwen/Qwen-7B": lambda: _qwen1("Qwen/Qwen-7B", hidden=4096, layers=32, heads=32,
                                   intermediate=22016, vocab=151936),
    "Qwen/Qwen-14B": lambda: _qwen1("Qwen/Qwen-14B", hidden=5120, layers=40, heads=40,
                                    intermediate=27392, vocab=152064),
    "google/gemma-2-2b": lambda: _decoder_only(
        "google/gemma-2-2b", "gemma2", hidden=2304, layers=26, heads=8, kv_heads=4, head_dim=256,
        intermediate=9216, vocab=256000, tied=True, norms_per_block=4, softcap=True),
    "google/gemma-2-9b": lambda: _decoder_only(
        "google/gemma-2-9b", "gemma2", hidden=3584, layers=42, heads=16, kv_heads=8, head_dim=256,
        intermediate=14336, vocab=256000, tied=True, norms_per_block=4, softcap=True),
    "google/gemma-2-27b": lambda: _decoder_only(
        "google/gemma-2-27b", "gemma2", hidden=4608, layers=46, heads=32, kv_heads=16,
        head_dim=128, intermediate=36864, vocab=256000, tied=True, norms_per_block=4,
        softcap=True),
    "microsoft/Phi-3-mini-4k-instruct": lambda: _phi3(
        "microsoft/Phi-3-mini-4k-instruct", hidden=3072, layers=32, heads=32, kv_heads=32,
        intermediate=8192, vocab=32064),
    "microsoft/Phi-3-medium-4k-instruct": lambda: _phi3(
        "microsoft/Phi-3-medium-4k-instruct", hidden=5120, layers=40, heads=40, kv_heads=10,
        intermediate=17920, vocab=32064),
    "bigscience/bloom-560m": lambda: _bloom("bigscience/bloom-560m", hidden=1024, layers=24,
                                            heads=16, vocab=250880),
    "bigscience/bloom-1b1": lambda: _bloom("bigscience/bloom-1b1", hidden=1536, layers=24,
                                           heads=16, vocab=250880),
    "bigscience/bloom-1b7": lambda: _bloom("bigscience/bloom-1b7", hidden=2048, layers=24,
                                           heads=16, vocab=250880),
    "bigscience/bloom-3b": lambda: _bloom("bigscience/bloom-3b", hidden=2560, layers=30,
                                          heads=32, vocab=250880),
    "bigscience/bloom": lambda: _bloom("bigscience/bloom", hidden=14336, layers=70, heads=112,
                                       vocab=250880),
    "bigscience/bloom-7b1": lambda: _bloom("bigscience/bloom-7b1", hidden=4096, layers=30,
                                           heads=32, vocab=250880),
    "bigscience/bloomz-7b1": lambda: _bloom("bigscience/bloomz-7b1", hidden=4096, layers=30,
                                            heads=32, vocab=250880),
    "facebook/bart-base": lambda: _bart("facebook/bart-base", d_model=768, enc_layers=6,
                                        dec_layers=6, heads=12, ffn=3072, vocab=50265,
                                        max_pos=1024),
    "facebook/bart-large": lambda: _bart("facebook/bart-large", d_model=1024, enc_layers=12,
                                         dec_layers=12, heads=16, ffn=4096, vocab=50265,
                                         max_pos=1024),
    "bigscience/T0_3B": _t5_named("bigscience/T0_3B", 2048, 64, 5120, 24, 32, 32128),
    "google/flan-t5-small": _t5_named("google/flan-t5-small", 512, 64, 1024, 8, 6, 32128),
    "google/flan-t5-base": _t5_named("google/flan-t5-base", 768, 64, 2048, 12, 12, 32128),
    "google/flan-t5-large": _t5_named("google/flan-t5-large", 1024, 64, 2816, 24, 16, 32128),
    "google/flan-t5-xl": _t5_named("google/flan-t5-xl", 2048, 64, 5120, 24, 32, 32128),
    "google/flan-t5-xxl": _t5_named("google/flan-t5-xxl", 4096, 64, 10240, 24, 64, 32128),
    "google-t5/t5-small": _t5_named("google-t5/t5-small", 512, 64, 2048, 6, 8, 32128,
                                    gated=False, tied=True),
    "google-t5/t5-base": _t5_named("google-t5/t5-base", 768, 64, 3072, 12, 12, 32128,
                                   gated=False, tied=True),
    "google-t5/t5-large": _t5_named("google-t5/t5-large", 1024, 64, 4096, 24, 16, 32128,
                                    gated=False, tied=True),
    "google-t5/t5-3b": _t5_named("google-t5/t5-3b", 1024, 128, 16384, 24, 32, 32128,
                                 gated=False, tied=True),
    "google-t5/t5-11b": _t5_named("google-t5/t5-11b", 1024, 128, 65536, 24, 128, 32128,
                                  gated=False, tied=True),
    "google/mt5-small": _t5_named("google/mt5-small", 512, 64, 1024, 8, 6, 250112),
    "google/mt5-base": _t5_named("google/mt5-base", 768, 64, 2048, 12, 12, 250112),
    "google/mt5-large": _t5_named("google/mt5-large", 1024, 64, 2816, 24, 16, 250112),
    "google/mt5-xl": _t5_named("google/mt5-xl", 2048, 64, 5120, 24, 32, 250112),
    "google/mt5-xxl": _t5_named("google/mt5-xxl", 4096, 64, 10240, 24, 64, 250112),
    "bigscience/mt0-xl": _t5_named("bigscience/mt0-xl", 2048, 64, 5120, 24, 32, 250112),
    "bigscience/mt0-xxl": _t5_named("bigscience/mt0-xxl", 4096, 64, 10240, 24, 64, 250112),
    **{f"facebook/opt-{k}": (lambda k=k, d=d: _opt(f"facebook/opt-{k}", **d)) for k, d in {
        "125m": dict(hidden=768, layers=12, heads=12, ffn=3072, vocab=50272),
        "350m": dict(hidden=1024, layers=24, heads=16, ffn=4096, vocab=50272, proj_dim=512,
                     final_norm=False),
        "1.3b": dict(hidden=2048, layers=24, heads=32, ffn=8192, vocab=50272),
        "2.7b": dict(hidden=2560, layers=32, heads=32, ffn=10240, vocab=50272),
        "6.7b": dict(hidden=4096, layers=32, heads=32, ffn=16384, vocab=50272),
        "13b": dict(hidden=5120, layers=40, heads=40, ffn=20480, vocab=50272),
        "30b": dict(hidden=7168, layers=48, heads=56, ffn=28672, vocab=50272),
        "66b": dict(hidden=9216, layers=64, heads=72, ffn=36864, vocab=50272)}.items()},
    **{f"openai-community/{k}": (lambda k=k, d=d: _gpt2(f"openai-community/{k}", **d))
       for k, d in {"gpt2": dict(hidden=768, layers=12, heads=12),
                    "gpt2-medium": dict(hidden=1024, layers=24, heads=16),
                    "gpt2-large": dict(hidden=1280, layers=36, heads=20),
                    "gpt2-xl": dict(hidden=1600, layers=48, heads=25)}.items()},
    **{f"EleutherAI/{k}": (lambda k=k, d=d: _neox(f"EleutherAI/{k}", **d)) for k, d in {
        "pythia-160m": dict(hidden=768, layers=12, heads=12, vocab=50304),
        "pythia-410m": dict(hidden=1024, layers=24, heads=16, vocab=50304),
        "pythia-1b": dict(hidden=2048, layers=16, heads=8, vocab=50304),
        "pythia-1.4b": dict(hidden=2048, layers=24, heads=16, vocab=50304),
        "pythia-2.8b": dict(hidden=2560, layers=32, heads=32, vocab=50304),
        "pythia-6.9b": dict(hidden=4096, layers=32, heads=32, vocab=50432),
        "pythia-12b": dict(hidden=5120, layers=36, heads=40, vocab=50688),
        "gpt-neox-20b": dict(hidden=6144, layers=44, heads=64, vocab=50432)}.items()},
    "microsoft/phi-2": lambda: _phi("microsoft/phi-2", hidden=2560, layers=32, heads=32,
                                    ffn=10240, vocab=51200),
    "microsoft/phi-1_5": lambda: _phi("microsoft/phi-1_5", hidden=2048, layers=24, heads=32,
                                      ffn=8192, vocab=51200),
}

# Name parts of fine-tuned or re-published variants that keep the base model's shape; dropped
# wherever they stand (Llama-2-70b-chat-hf -> llama-2-70b, Mistral-7B-Instruct-v0.2 ->
# mistral-7b). Mistral v0.3 changed the vocabulary, so "v0.3" stays.
_VARIANT_PARTS = frozenset(("hf", "chat", "instruct", "it", "v0.1", "v0.2", "4k", "8k", "128k",
                            "deduped", "cnn", "xsum", "v1.0"))
# Names that denote the same shape under another release name.
_SAME_SHAPE = (("meta-llama-3.1-", "llama-3.1-"), ("meta-llama-3-", "llama-3.1-"),
               ("llama-3-", "llama-3.1-"), ("llama-3.3-70b", "llama-3.1-70b"),
               ("t5-v1_1-", "flan-t5-"), ("t0_3b", "flan-t5-xl"), ("t0pp", "flan-t5-xxl"),
               ("bloomz-", "bloom-"), ("mt0-", "mt5-"), ("qwen2-", "qwen2.5-"),
               ("phi-3.5-mini", "phi-3-mini"), ("tinyllama-1.1b-intermediate-step-1431k-3t", "tinyllama-1.1b"),
               ("zephyr-7b-beta", "mistral-7b"), ("vicuna-7b-v1.5", "llama-2-7b"),
               ("vicuna-13b-v1.5", "llama-2-13b"))


def _family_key(name: str) -> str:
    """The shape key of a hub name: organisation dropped, lower case, variant parts dropped,
    release aliases unified."""
    key = name.strip().strip("/").lower().rsplit("/", 1)[-1].replace("-lm-adapt", "")
    key = "-".join(p for p in key.split("-") if p not in _VARIANT_PARTS)
    for old, new in _SAME_SHAPE:
        if key.startswith(old):
            key = new + key[len(old):]
    return key


_BY_FAMILY: dict[str, str] = {}
for _name in _TABLE:
    _BY_FAMILY.setdefault(_family_key(_name), _name)
_BY_FAMILY.setdefault(_family_key("meta-llama/Llama-3.1-8B"), "meta-llama/Llama-3.1-8B")

# Encoder-only families: the planner (and hpctune's training) needs a causal LM or a seq2seq
# model; these have no generation head to fine-tune with SFT.
_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert",
                 "electra", "albert", "camembert", "modernbert", "mpnet", "ernie", "xlnet"}


def known_models() -> list[str]:
    """Hub names of the built-in table, sorted."""
    return sorted(_TABLE)


def _lookup(model: str):
    exact = {k.lower(): k for k in _TABLE}
    key = model.strip().strip("/").lower()
    hit = exact.get(key) or _BY_FAMILY.get(_family_key(model))
    return _TABLE[hit] if hit else None


def _encoder_only_hint(model: str) -> str | None:
    base = model.strip().lower().rsplit("/", 1)[-1]
    for fam in sorted(_ENCODER_ONLY, key=len, reverse=True):
        if base.startswith(fam):
            return fam
    return None


def get_shape(model: str, local_config: dict | None = None, base_dir: str | None = None) -> ModelShape:
    """Shape of ``model``: a hub name from the table (case-insensitive, organisation optional,
    fine-tuned variants such as ``-Instruct`` or ``-chat-hf`` included), a local folder holding
    ``config.json``, a path to a ``config.json`` file, or any name together with a parsed
    config dict. Relative paths are tried as given, then inside ``base_dir`` (the recipe's
    folder), the order the training's preflight uses.

    Raises KeyError (listing the known names) for anything else, ValueError for a config of an
    unsupported family (encoder-only models with the reason).
    """
    if local_config is not None:
        return shape_from_config(local_config, name=model)
    found = _local(model, base_dir)
    if found is not None:
        cfg_path = found if os.path.isfile(found) else os.path.join(found, "config.json")
        if not os.path.isfile(cfg_path):
            raise KeyError(f"{model!r} is a folder without config.json")
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (OSError, ValueError) as e:
            raise ValueError(f"{cfg_path}: not a readable config.json ({e})") from None
        return shape_from_config(cfg, name=os.path.dirname(cfg_path) if found == cfg_path else found)
    builder = _lookup(model)
    if builder is None:
        enc = _encoder_only_hint(model)
        if enc:
            raise ValueError(_encoder_only_message(model, enc))
        raise KeyError(f"unknown model {model!r}: give a local folder with config.json, or one "
                       f"of: {', '.join(known_models())}")
    return builder()


def _local(model: str, base_dir: str | None) -> str | None:
    """An existing local folder or config.json file for ``model``, or None."""
    path = os.path.expanduser(model)
    cands = [path] if os.path.isabs(path) or base_dir is None else [path, os.path.join(base_dir, path)]
    looks_local = model.startswith(("/", "./", "../", "~")) or model.endswith(".json")
    for c in cands:
        if os.path.isdir(c) or (os.path.isfile(c) and c.endswith(".json")):
            return c
    if looks_local:
        raise KeyError(f"{model!r}: no such folder or config.json"
                       + (f" (also tried inside {base_dir})" if base_dir else ""))
    return None


def _encoder_only_message(name: str, model_type: str) -> str:
    return (f"{name}: {model_type} is an encoder-only model: hpctune fine-tunes causal LMs (SFT) "
            "and encoder-decoder (seq2seq) models, which have a generation head; an encoder-only "
            "model has none")


def shape_from_config(cfg: dict, name: str = "") -> ModelShape:
    """Build a shape from a Hugging Face ``config.json`` dict (see ``_from_config``); a config
    that lacks a dimension its model type needs raises ValueError naming the type."""
    try:
        return _from_config(cfg, name)
    except TypeError:  # a needed field is missing (None in arithmetic)
        mt = cfg.get("model_type", "?")
        raise ValueError(f"{name or cfg.get('_name_or_path') or 'config'}: config.json of "
                         f"model_type {mt!r} lacks a dimension the planner needs (hidden size, "
                         "layers, heads, MLP width or vocabulary)") from None


def _from_config(cfg: dict, name: str = "") -> ModelShape:
    """The shape of a ``config.json`` dict: llama, mistral, mixtral, qwen2, gemma, gemma2, phi,
    phi3, qwen (v1), falcon, bloom, opt, gpt2, gpt_neox, bart, t5 and mt5. Encoder-only model
    types are refused with the reason; others raise ValueError naming the supported types."""
    mt = str(cfg.get("model_type", "")).lower()
    name = name or cfg.get("_name_or_path", mt)
    g = cfg.get
    if mt in ("llama", "mistral", "mixtral", "qwen2", "gemma2"):
        heads = g("num_attention_heads")
        gemma = mt == "gemma2"
        return _decoder_only(
            name, mt, hidden=g("hidden_size"), layers=g("num_hidden_layers"), heads=heads,
            kv_heads=g("num_key_value_heads") or heads, intermediate=g("intermediate_size"),
            vocab=g("vocab_size"), tied=bool(g("tie_word_embeddings", gemma)),
            qkv_bias=mt == "qwen2" or bool(g("attention_bias", False)),
            head_dim=g("head_dim") or 0, n_experts=g("num_local_experts") or 1,
            top_k=g("num_experts_per_tok") or 1, norms_per_block=4 if gemma else 2,
            softcap=bool(g("final_logit_softcapping")))
    if mt == "gemma":
        return _decoder_only(name, "gemma", hidden=g("hidden_size"), layers=g("num_hidden_layers"),
                             heads=g("num_attention_heads"),
                             kv_heads=g("num_key_value_heads") or g("num_attention_heads"),
                             intermediate=g("intermediate_size"), vocab=g("vocab_size"),
                             tied=bool(g("tie_word_embeddings", True)), head_dim=g("head_dim") or 0)
    if mt == "opt":
        return _opt(name, hidden=g("hidden_size"), layers=g("num_hidden_layers"),
                    heads=g("num_attention_heads"), ffn=g("ffn_dim"), vocab=g("vocab_size"),
                    max_pos=g("max_position_embeddings", 2048),
                    proj_dim=g("word_embed_proj_dim") or 0,
                    final_norm=bool(g("do_layer_norm_before", True))
                    and not g("_remove_final_layer_norm", False))
    if mt == "gpt2":
        return _gpt2(name, hidden=g("n_embd"), layers=g("n_layer"), heads=g("n_head"),
                     vocab=g("vocab_size"), max_pos=g("n_positions", 1024))
    if mt == "gpt_neox":
        return _neox(name, hidden=g("hidden_size"), layers=g("num_hidden_layers"),
                     heads=g("num_attention_heads"), vocab=g("vocab_size"),
                     ffn=g("intermediate_size") or 0)
    if mt == "phi":
        return _phi(name, hidden=g("hidden_size"), layers=g("num_hidden_layers"),
                    heads=g("num_attention_heads"), ffn=g("intermediate_size"),
                    vocab=g("vocab_size"))
    if mt == "phi3":
        heads = g("num_attention_heads")
        return _phi3(name, hidden=g("hidden_size"), layers=g("num_hidden_layers"), heads=heads,
                     kv_heads=g("num_key_value_heads") or heads,
                     intermediate=g("intermediate_size"), vocab=g("vocab_size"),
                     tied=bool(g("tie_word_embeddings", False)))
    if mt == "qwen":
        return _qwen1(name, hidden=g("hidden_size"), layers=g("num_hidden_layers"),
                      heads=g("num_attention_heads"), intermediate=g("intermediate_size"),
                      vocab=g("vocab_size") or g("padded_vocab_size"))
    if mt in ("falcon", "refinedweb", "refinedwebmodel"):
        hidden, heads = g("hidden_size"), g("num_attention_heads") or g("n_head")
        new = bool(g("new_decoder_architecture", False))
        kv = (g("num_kv_heads") or g("n_head_kv") or heads) if new else \
            (1 if g("multi_query", True) else heads)
        return _falcon(name, hidden=hidden, layers=g("num_hidden_layers") or g("n_layer"),
                       heads=heads, kv_heads=kv, vocab=g("vocab_size"), new_arch=new,
                       ffn=g("ffn_hidden_size") or 0, bias=bool(g("bias", False)),
                       parallel_attn=bool(g("parallel_attn", True)),
                       n_ln=g("num_ln_in_parallel_attn") or 0)
    if mt == "bloom":
        return _bloom(name, hidden=g("hidden_size") or g("n_embed"),
                      layers=g("n_layer") or g("num_hidden_layers"),
                      heads=g("n_head") or g("num_attention_heads"), vocab=g("vocab_size"))
    if mt == "bart":
        return _bart(name, d_model=g("d_model"), enc_layers=g("encoder_layers"),
                     dec_layers=g("decoder_layers"), heads=g("encoder_attention_heads"),
                     ffn=g("encoder_ffn_dim"), vocab=g("vocab_size"),
                     max_pos=g("max_position_embeddings"), dropout=g("dropout", 0.1),
                     attention_dropout=g("attention_dropout", 0.0))
    if mt in ("t5", "mt5"):
        proj = str(g("feed_forward_proj", "relu" if mt == "t5" else "gated-gelu"))
        return _t5(name, d_model=g("d_model"), d_kv=g("d_kv"), d_ff=g("d_ff"),
                   layers=g("num_layers"), dec_layers=g("num_decoder_layers") or g("num_layers"),
                   heads=g("num_heads"), vocab=g("vocab_size"), gated=proj.startswith("gated"),
                   tied=bool(g("tie_word_embeddings", mt == "t5")),
                   buckets=g("relative_attention_num_buckets", 32), dropout=g("dropout_rate", 0.1))
    if mt in _ENCODER_ONLY:
        raise ValueError(_encoder_only_message(name or "config", mt))
    raise ValueError(f"{name or 'config'}: model_type {mt!r} is not supported by the planner "
                     f"({', '.join(SUPPORTED_MODEL_TYPES)})")


SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "gemma", "gemma2", "phi", "phi3",
                         "qwen", "falcon", "bloom", "opt", "gpt2", "gpt_neox", "bart", "t5", "mt5")


# ------------------------------------------------------------------------------ LoRA
def resolve_targets(shape: ModelShape, target_modules) -> list[LinearSpec]:
    """Linear layers that ``target_modules`` selects, the way PEFT matches leaf names.

    ``"all-linear"`` selects every linear layer but the output layer; a list (or a
    comma-separated string) selects by leaf name. A name the model lacks raises KeyError, as
    PEFT raises "Target modules ... not found in the base model" (Falcon has no q_proj).
    """
    if target_modules is None:
        target_modules = shape.default_lora_targets
    if isinstance(target_modules, str):
        if target_modules.strip().lower() == "all-linear":
            return list(shape.linear_modules)
        target_modules = [t for t in re.split(r"[,\s]+", target_modules) if t]
    wanted = set(target_modules)
    missing = wanted - set(shape.linear_module_names)
    if missing:
        raise KeyError(f"target modules {sorted(missing)} not found in {shape.name}; its linear "
                       f"layers are {', '.join(shape.linear_module_names)} (or use 'all-linear')")
    return [m for m in shape.linear_modules if m.name in wanted]


def lora_param_count(shape: ModelShape, r: int, target_modules="all-linear") -> int:
    """Trainable LoRA parameters: r x (in + out) per targeted linear layer (A and B)."""
    return sum(r * (m.in_features + m.out_features) * m.count
               for m in resolve_targets(shape, target_modules))
