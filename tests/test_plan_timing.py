"""The time model (hpctune.plan.timing) against hand-computed FLOPs of a small shape, and the
advice it gives. Pure Python."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hpctune.plan import PlanInput, shape_from_config
from hpctune.plan.timing import EFFICIENCY, GPU_PEAK, Workload, advise, estimate_time, flops_per_token

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 390}


def _tiny(**kw):
    base = dict(method="full", zero_stage=0, nodes=1, gpus_per_node=1, micro_batch=2, seq_len=16,
                gradient_checkpointing=False, attn_implementation="sdpa", gpu_model="h100")
    base.update(kw)
    return PlanInput(shape_from_config(TINY, "tiny"), **base)


# Hand count for the tiny Llama (h=64, kv=32, I=128, 2 layers, V=390, s=16):
#   linear weights per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + 3 * 64*128 = 36864
#   forward per token: 2 * 36864 * 2 layers = 147456 (linear)
#                      + 4 * 64 * 16 * 0.5 (causal) * 2 layers = 4096 (scores and AV)
#                      + 2 * 390 * 64 = 49920 (output layer)           -> 201472
LIN, ATT, HEAD = 147456, 4096, 49920


def test_full_finetuning_flops_are_three_forwards():
    fwd, total = flops_per_token(_tiny())
    assert fwd == LIN + ATT + HEAD
    assert total == 3 * (LIN + ATT + HEAD)  # backward: input and weight gradients = 2x


def test_checkpointing_adds_one_forward_of_the_blocks():
    _, total = flops_per_token(_tiny(gradient_checkpointing=True))
    assert total == 3 * (LIN + ATT + HEAD) + LIN + ATT


def test_lora_backward_skips_frozen_weight_gradients():
    _, total = flops_per_token(_tiny(method="lora", lora_r=8, lora_target_modules=("q_proj",)))
    lora = 2 * 8 * (64 + 64) * 2  # r(in+out) per token, q_proj of 2 layers, forward
    # frozen linears and the output layer: forward + input gradient; attention: 1 + 2
    assert total == 2 * LIN + 3 * ATT + 2 * HEAD + 3 * lora


def test_eager_attention_computes_the_masked_half():
    _, flash = flops_per_token(_tiny())
    _, eager = flops_per_token(_tiny(attn_implementation="eager"))
    assert eager - flash == 3 * ATT


def test_step_time_is_flops_over_peak_times_efficiency():
    inp = _tiny()
    tp = estimate_time(inp, Workload(gradient_accumulation_steps=4))
    tokens = 2 * 16 * 4
    expect = tokens * 3 * (LIN + ATT + HEAD) / (GPU_PEAK["h100"][0] * 1e12 * EFFICIENCY)
    assert tp.step_seconds == pytest.approx(expect, rel=1e-9)
    assert tp.comm_seconds == 0 and tp.tokens_per_second == pytest.approx(tokens / expect)


def test_zero3_traffic_over_inter_node_bandwidth_slows_the_step():
    base = _tiny(zero_stage=3, gpus_per_node=8, nodes=1)
    one = estimate_time(base, Workload(intra_node_gbps=300))
    two = estimate_time(replace(base, nodes=2), Workload(intra_node_gbps=300, inter_node_gbps=5))
    assert two.comm_seconds > 50 * one.comm_seconds  # 300 -> 5 GB/s per GPU


def test_epochs_steps_and_gpu_hours():
    inp = _tiny(gpus_per_node=4, zero_stage=2, packing=True)
    tp = estimate_time(inp, Workload(train_samples=1000, mean_sample_tokens=8, epochs=2,
                                     gradient_accumulation_steps=2, save_steps=10))
    seqs = 1000 * 8 // 16  # packed into 16-token sequences
    assert tp.steps_per_epoch == -(-seqs // (2 * 2 * 4))
    assert tp.total_steps == 2 * tp.steps_per_epoch
    assert tp.gpu_hours == pytest.approx((tp.total_seconds + tp.load_seconds) * 4 / 3600)


def test_advice_lead_interval_and_requeues():
    tp = estimate_time(_tiny(), Workload(train_samples=100))
    tp.step_seconds, tp.save_seconds, tp.total_seconds, tp.load_seconds, tp.steps_per_epoch = \
        100.0, 40.0, 10 * 3600.0, 300.0, 500
    a = advise(tp, max_time_minutes=4 * 60, max_attempts=3)
    assert a["signal_seconds_min"] >= 2 * 100 + 40
    assert a["save_steps"] == 18  # 1800 s of work at most between checkpoints
    assert a["attempts"] == 3 and a["attempts_ok"] and a["time_limit_minutes"] == 240
    assert not advise(tp, max_time_minutes=2 * 60, max_attempts=3)["attempts_ok"]
