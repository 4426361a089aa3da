"""Planner v2: the engine and precision of each layout, the three per-GPU figures, the new
shape inputs and the published measurements. Pure Python (no torch)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hpctune.plan import PlanInput, estimate, get_shape, shape_from_config
from hpctune.plan.engines import engine_for

GIB = 2**30
N7 = 6_738_415_616  # Llama-2-7B parameters


def _7b(**kw):
    base = dict(method="full", micro_batch=1, seq_len=512, nodes=1, gpus_per_node=1,
                gpu_mem_gib=80.0, cpu_ram_gib_per_node=512)
    base.update(kw)
    return PlanInput(get_shape("meta-llama/Llama-2-7b-hf"), **base)


def _states(plan):
    return sum(plan.breakdown[k] for k in ("weights", "trainable_params", "gradients", "optimizer_states"))


# ---------------------------------------------------------------- engines and precisions
@pytest.mark.parametrize("stage,world,load,precision,kind,per_param", [
    (0, 1, "bfloat16", "bf16", "single", 8),   # plain Trainer, bf16-loaded: pure bf16
    (0, 2, "bfloat16", "bf16", "ddp", 8),
    (0, 1, "float32", "bf16", "single", 16),   # fp32 weights, bf16 autocast
    (0, 1, "float32", "no", "single", 16),     # fp32 throughout
    (1, 2, "bfloat16", "bf16", "deepspeed", 16),  # bf16 + fp32 master + fp32 Adam
    (2, 2, "bfloat16", "fp16", "deepspeed", 16),
    (3, 2, "float32", "no", "deepspeed", 16),  # DeepSpeed fp32: no master copy
])
def test_full_finetuning_state_bytes_per_engine(stage, world, load, precision, kind, per_param):
    eng = engine_for("full", precision, stage, world, load)
    assert eng.kind == kind
    assert eng.param_bytes + eng.grad_bytes + eng.optimizer_bytes == per_param
    if kind == "deepspeed" and precision != "no":
        assert (eng.master_bytes, eng.moment_bytes, eng.weight_bytes) == (4, 8, 2)


def test_lora_adapter_dtypes_per_engine():
    # PEFT keeps adapters fp32 outside DeepSpeed; TRL casts QLoRA adapters to bf16; under
    # DeepSpeed the adapters take the half dtype with an fp32 master copy
    assert engine_for("lora", "bf16", 0, 1, "bfloat16").param_bytes == 4
    assert engine_for("qlora", "bf16", 0, 1, "bfloat16").param_bytes == 2
    ds = engine_for("lora", "bf16", 3, 8, "bfloat16")
    assert (ds.param_bytes, ds.master_bytes, ds.moment_bytes) == (2, 4, 8)


def test_pure_bf16_full_finetuning_is_half_of_mixed_precision():
    pure = estimate(_7b(zero_stage=0, quant_storage_dtype="bfloat16"))
    mixed = estimate(_7b(zero_stage=0, quant_storage_dtype="float32"))
    assert abs(_states(pure) - 8 * N7 / GIB) < 0.05
    assert abs(_states(mixed) - 16 * N7 / GIB) < 0.05
    assert mixed.breakdown["autocast_weight_copies"] > 0 and pure.breakdown["autocast_weight_copies"] == 0
    assert "no master copy" in pure.engine and "one process" in pure.engine


def test_one_gpu_without_deepspeed_has_no_ddp_buckets():
    one = estimate(_7b(method="lora", zero_stage=0, gpus_per_node=1))
    two = estimate(_7b(method="lora", zero_stage=0, gpus_per_node=2))
    assert one.breakdown["comm_buckets"] == 0 and one.breakdown["nccl_buffers"] == 0
    assert two.breakdown["comm_buckets"] > 0 and "DDP" in two.engine
    full_ddp = estimate(_7b(zero_stage=0, gpus_per_node=2))
    assert abs(full_ddp.breakdown["comm_buckets"] - 2 * N7 / GIB) < 0.05  # a copy of the bf16 grads


def test_deepspeed_shards_by_stage_and_steps_with_an_fp32_gradient():
    base = _7b(gpus_per_node=4, micro_batch=1, seq_len=256)
    z1, z2, z3 = (estimate(replace(base, zero_stage=z)) for z in (1, 2, 3))
    assert abs(z1.breakdown["gradients"] - 2 * N7 / GIB) < 0.05          # full bf16 gradients
    assert abs(z2.breakdown["gradients"] - 2 * N7 / GIB / 4) < 0.05      # partitioned
    assert abs(z3.breakdown["weights"] - 2 * N7 / GIB / 4) < 0.05
    for p in (z1, z2, z3):
        assert abs(p.breakdown["optimizer_states"] - 12 * N7 / GIB / 4) < 0.05


# ---------------------------------------------------------------------- three figures
def test_three_figures_are_ordered_and_documented():
    plan = estimate(_7b(method="lora", zero_stage=3, gpus_per_node=8, micro_batch=4, seq_len=2048))
    assert plan.allocated_peak_gib < plan.reserved_peak_gib < plan.device_used_gib
    assert plan.per_gpu_peak_gib == plan.device_used_gib
    d = plan.to_dict()
    assert "nvidia-smi" in d["figures"]["device_used_gib"]
    assert "max_memory_allocated" in d["figures"]["allocated_peak_gib"]
    assert abs(sum(plan.breakdown.values()) - plan.train_peak_gib) < 1e-6
    # device = reserved + context + NCCL
    extra = plan.breakdown["cuda_context"] + plan.breakdown["nccl_buffers"]
    assert abs(plan.device_used_gib - plan.reserved_peak_gib - extra) < 1e-6


def test_allocator_slack_grows_with_batch_times_sequence():
    base = _7b(method="qlora", zero_stage=0, micro_batch=1)
    slack = [estimate(replace(base, seq_len=s)).breakdown["allocator_slack"] for s in (1024, 4096, 16384)]
    assert slack[0] < slack[1] < slack[2]
    assert slack[2] / slack[0] > 8  # roughly linear in tokens, not a constant share of the model
    mb = estimate(replace(base, seq_len=1024, micro_batch=16)).breakdown["allocator_slack"]
    assert abs(mb - slack[2]) / slack[2] < 0.05  # 16 x 1024 tokens ~ 1 x 16384


def test_fit_is_judged_on_device_used_with_margin():
    plan = estimate(_7b(method="lora", zero_stage=0, micro_batch=1, seq_len=512))
    tight = replace(_7b(method="lora", zero_stage=0, micro_batch=1, seq_len=512),
                    gpu_mem_gib=plan.device_used_gib + 0.3)
    assert plan.reserved_peak_gib + 0.5 < tight.gpu_mem_gib  # reserved alone would "fit"
    assert not estimate(tight).fits  # device-used + 0.5 GiB margin does not


# --------------------------------------------------------------- seq2seq, attention, packing
def test_seq2seq_target_length_reaches_the_activations():
    t5 = PlanInput(get_shape("google/flan-t5-xl"), task="seq2seq", lora_target_modules=None,
                   micro_batch=8, seq_len=512, zero_stage=0, nodes=1, gpus_per_node=1)
    short = estimate(replace(t5, target_len=8)).breakdown["activations_kept"]
    long = estimate(t5).breakdown["activations_kept"]  # 0 = as long as the source
    assert long > 1.5 * short


def test_bloom_attention_is_eager_whatever_the_recipe_says():
    bloom = PlanInput(get_shape("bigscience/bloom-7b1"), zero_stage=0, nodes=1, gpus_per_node=1,
                      micro_batch=1, seq_len=2048, gradient_checkpointing=False)
    flash = estimate(bloom).breakdown["activations_kept"]
    eager = estimate(replace(bloom, attn_implementation="eager")).breakdown["activations_kept"]
    assert flash == eager


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name,n", [
    ("bigscience/bloomz-7b1", 7_069_016_064),
    ("Qwen/Qwen-7B", 7_721_324_544),
    ("google/gemma-2-9b", 9_241_705_984),
    ("microsoft/Phi-3-mini-4k-instruct", 3_821_079_552),
    ("google/gemma-2-2b", 2_614_341_888),
])
def test_new_families_exact_counts(name, n):
    assert get_shape(name).n_params == n


@pytest.mark.parametrize("alias,base", [
    ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-3.1-70B"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
    ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-v0.1"),
    ("meta-llama/Llama-2-13b-chat-hf", "meta-llama/Llama-2-13b-hf"),
    ("tiiuae/falcon-7b-instruct", "tiiuae/falcon-7b"),
    ("google/gemma-2-9b-it", "google/gemma-2-9b"),
    ("Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B"),
])
def test_hub_name_family_patterns(alias, base):
    assert get_shape(alias).n_params == get_shape(base).n_params


def test_mistral_v03_keeps_its_own_vocabulary():
    assert get_shape("mistralai/Mistral-7B-Instruct-v0.3").vocab == 32768


def test_config_json_file_and_recipe_relative_folder(tmp_path, monkeypatch):
    cfg = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "vocab_size": 32064}
    folder = tmp_path / "recipes" / "models" / "phi"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    assert get_shape(str(folder / "config.json")).n_params == 3_821_079_552
    monkeypatch.chdir(tmp_path)  # "models/phi" is not under the working directory...
    assert get_shape("models/phi", base_dir=str(tmp_path / "recipes")).n_params == 3_821_079_552
    with pytest.raises(KeyError, match="also tried inside"):
        get_shape("./models/none", base_dir=str(tmp_path / "recipes"))


@pytest.mark.parametrize("cfg,n", [
    ({"model_type": "bloom", "n_embed": 4096, "n_layer": 30, "n_head": 32, "vocab_size": 250880},
     7_069_016_064),
    ({"model_type": "qwen", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
      "intermediate_size": 22016, "vocab_size": 151936}, 7_721_324_544),
    ({"model_type": "gemma2", "hidden_size": 3584, "num_hidden_layers": 42, "num_attention_heads": 16,
      "num_key_value_heads": 8, "head_dim": 256, "intermediate_size": 14336, "vocab_size": 256000,
      "final_logit_softcapping": 30.0}, 9_241_705_984),
])
def test_new_model_types_from_config(cfg, n):
    assert shape_from_config(cfg).n_params == n


def test_mt5_from_config_is_untied():
    mt5 = {"model_type": "mt5", "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
           "num_heads": 64, "vocab_size": 250112, "feed_forward_proj": "gated-gelu",
           "tie_word_embeddings": False}
    assert shape_from_config(mt5).n_params == get_shape("bigscience/mt0-xxl").n_params


def test_encoder_only_models_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="encoder-only"):
        shape_from_config({"model_type": "bert"})
    with pytest.raises(ValueError, match="encoder-only"):
        get_shape("FacebookAI/roberta-large")


# ------------------------------------------------------------- published measurements
def test_published_measurements_median_error_and_verdicts():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import published
    pts = published.evaluate()
    medians = published.group_medians(pts)
    assert medians and all(m <= 0.12 for m in medians.values()), medians
    wrong = [p.label for p in pts if not p.result["verdict_ok"]]
    assert not wrong, wrong
