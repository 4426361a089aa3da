"""Memory model and model-shape table (hpctune.plan): exact counts, the reference
measurements, the known traps, and the auto layout. Pure Python: no torch needed."""

import json
import time
from dataclasses import replace

import pytest

from hpctune.plan import (PlanInput, candidates, estimate, get_shape, known_models,
                          lora_param_count, search, shape_from_config)

GIB = 2**30
H100, A100_40, A100_80 = 79.6, 39.4, 79.6  # GiB as nvidia-smi reports the cards


def within(pred, target, tol=0.15):
    return abs(pred - target) <= tol * target


# ----------------------------------------------------------------------------- shapes
def test_exact_counts_from_formulas():
    assert get_shape("meta-llama/Llama-2-70b-hf").n_params == 68_976_648_192
    assert get_shape("tiiuae/falcon-180B").n_params == 178_557_088_768  # tied embeddings


@pytest.mark.parametrize("name,n", [
    # totals checked against transformers models built on the meta device (see docs)
    ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
    ("meta-llama/Meta-Llama-3-8B", 8_030_261_248),
    ("meta-llama/Llama-3.1-70B", 70_553_706_496),
    ("meta-llama/Llama-3.1-405B", 405_853_388_800),
    ("mistralai/Mistral-7B-v0.1", 7_241_732_096),
    ("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704),
    ("tiiuae/falcon-7b", 6_921_720_704),
    ("Qwen/Qwen2.5-7B", 7_615_616_512),
    ("Qwen/Qwen2.5-72B", 72_706_203_648),
    ("facebook/bart-large", 406_291_456),
    ("bigscience/T0_3B", 2_849_757_184),
])
def test_table_totals(name, n):
    assert get_shape(name).n_params == n


def test_lookup_is_forgiving_and_errors_list_names():
    base = get_shape("meta-llama/Llama-2-70b-hf")
    assert get_shape("LLAMA-2-70B-HF") == base  # case-insensitive, organisation optional
    assert get_shape("meta-llama/Llama-2-70b-chat-hf").n_params == base.n_params
    assert len(known_models()) >= 17
    with pytest.raises(KeyError, match="falcon-180B"):
        get_shape("no-such/model-7b")


def test_local_config_folder(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
           "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
           "vocab_size": 32000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = get_shape(str(tmp_path))
    assert s.n_params == 68_976_648_192 and s.name == str(tmp_path)
    falcon = {"model_type": "falcon", "hidden_size": 14848, "num_hidden_layers": 80,
              "num_attention_heads": 232, "num_kv_heads": 8, "new_decoder_architecture": True,
              "vocab_size": 65024, "bias": False, "parallel_attn": True}
    assert get_shape("x", local_config=falcon).n_params == 178_557_088_768
    t0 = {"model_type": "t5", "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24,
          "num_heads": 32, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
          "tie_word_embeddings": False}
    assert shape_from_config(t0).n_params == 2_849_757_184
    bart = {"model_type": "bart", "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
            "encoder_attention_heads": 16, "encoder_ffn_dim": 4096, "vocab_size": 50265,
            "max_position_embeddings": 1024}
    assert shape_from_config(bart).n_params == 406_291_456
    with pytest.raises(ValueError, match="gptj.*not supported"):
        shape_from_config({"model_type": "gptj"})
    with pytest.raises(ValueError, match="lacks a dimension"):
        shape_from_config({"model_type": "gpt2"})
    with pytest.raises(KeyError, match="config.json"):
        get_shape(str(tmp_path / "missing-dir"))


def test_lora_counts_and_falcon_targets():
    llama, falcon = get_shape("Llama-2-70b-hf"), get_shape("falcon-180B")
    assert lora_param_count(llama, 8, "all-linear") == 103_546_880
    assert lora_param_count(llama, 8, ["q_proj", "v_proj"]) == 16_384_000
    assert lora_param_count(get_shape("facebook/bart-large"), 8, None) == 1_179_648  # q,v default
    assert falcon.linear_module_names == ("query_key_value", "dense", "dense_h_to_4h",
                                          "dense_4h_to_h")
    assert lora_param_count(falcon, 8, "all-linear") == 133_693_440
    with pytest.raises(KeyError, match="query_key_value"):  # user pain 20
        lora_param_count(falcon, 8, ["q_proj", "v_proj"])


# ---------------------------------------------------------- reference measurements
def llama70b_lora():
    """Guide workload 1: 1 node x 8 H100, LoRA r=8 all-linear, bf16, ZeRO-3, mb 8, seq 2048."""
    return PlanInput(get_shape("meta-llama/Llama-2-70b-hf"), gpu_mem_gib=H100,
                     cpu_ram_gib_per_node=1800)


def llama70b_qlora():
    """Guide workload 2: QLoRA nf4 + double quant, bf16 storage, ZeRO-3, 2 x A100 40GB."""
    return replace(llama70b_lora(), method="qlora", micro_batch=2, gpus_per_node=2,
                   gpu_mem_gib=A100_40, cpu_ram_gib_per_node=400)


def seq2seq_offload(model):
    """Guide workload 3: ZeRO-3 + CPU offload of optimizer and params, 1 GPU, fp32, LoRA q,v
    (PEFT default), mb 8, tweets of ~64 tokens, labels of ~4 tokens, eager attention."""
    return PlanInput(get_shape(model), task="seq2seq", lora_target_modules=None,
                     precision="no", quant_storage_dtype="float32", offload_optimizer="cpu",
                     offload_param="cpu", nodes=1, gpus_per_node=1, micro_batch=8, seq_len=64,
                     target_len=4, gradient_checkpointing=False, attn_implementation="eager",
                     gpu_mem_gib=A100_80, cpu_ram_gib_per_node=64)


def test_calibration_llama70b_lora_zero3():
    plan = estimate(llama70b_lora())
    # "64 GB per GPU (80%)": read as 64 GiB (80% of the 79.6 GiB card); also within 15% if
    # it meant 64e9 bytes (59.6 GiB).
    assert within(plan.per_gpu_peak_gib, 64.0) and within(plan.per_gpu_peak_gib, 64e9 / GIB)
    assert plan.fits


def test_calibration_llama70b_qlora_zero3():
    plan = estimate(llama70b_qlora())
    assert within(plan.per_gpu_peak_gib, 36.6) and within(plan.per_gpu_peak_gib, 36.6e9 / GIB)
    assert plan.fits  # it ran on 40 GB cards
    assert plan.load_peak_gib > plan.train_peak_gib  # the unsharded 4-bit load is the peak
    assert any("not sharded at load" in n for n in plan.notes)


def test_calibration_seq2seq_offload_log():
    # The guide's log (9404 MiB GPU = max_memory_allocated, 19411 MiB CPU RSS, both in MiB)
    # matches bigscience/T0_3B, the example's former default model (PEFT README: T0_3B with
    # DeepSpeed CPU offload = 9.8 GB GPU / 17.8 GB CPU). See docs/memory-model.md section 9.
    plan = estimate(seq2seq_offload("bigscience/T0_3B"))
    assert within(plan.allocated_peak_gib, 9404 / 1024)  # a torch counter: the allocated figure
    assert within(plan.cpu_ram_peak_gib_per_node, 19411 / 1024)


def test_bart_large_cannot_produce_that_log():
    # bart-large in fp32 is 1.5 GiB of weights; with these tiny batches nothing gets near 9 GiB
    # (the largest piece is DeepSpeed's 5e8-element fp32 gradient bucket, 1.9 GiB).
    plan = estimate(seq2seq_offload("facebook/bart-large"))
    assert plan.allocated_peak_gib < 5 and plan.cpu_ram_peak_gib_per_node < 8


def test_falcon180b_qlora_zero3_does_not_fit_80gb():
    plan = estimate(PlanInput(get_shape("tiiuae/falcon-180B"), method="qlora", nodes=2,
                              gpus_per_node=8, micro_batch=1, gpu_mem_gib=A100_80,
                              cpu_ram_gib_per_node=1000))
    assert not plan.fits
    assert plan.load_peak_gib > 85  # the whole 4-bit model on every GPU while loading
    assert plan.train_peak_gib < 40  # sharded training itself would fit


def test_falcon180b_lora_bf16_zero3_fits_16_a100():
    plan = estimate(PlanInput(get_shape("tiiuae/falcon-180B"), nodes=2, gpus_per_node=8,
                              micro_batch=1, seq_len=2048, gpu_mem_gib=A100_80,
                              cpu_ram_gib_per_node=1000))
    assert plan.fits, plan.notes


@pytest.mark.parametrize("stage", [0, 2])
def test_llama70b_lora_needs_zero3_on_two_gpus(stage):
    plan = estimate(replace(llama70b_lora(), zero_stage=stage, gpus_per_node=2, micro_batch=1))
    assert not plan.fits and plan.breakdown["weights"] > 120  # whole bf16 model on each GPU


# ------------------------------------------------------------------ model behaviour
def test_breakdown_sums_and_dict_is_json():
    plan = estimate(llama70b_lora())
    assert abs(sum(plan.breakdown.values()) - plan.train_peak_gib) < 1e-6
    d = json.loads(json.dumps(plan.to_dict()))
    assert list(d["breakdown"])[0] == "cuda_context" and "fits" in d


def test_zero3_shards_weights_over_all_nodes():
    one, two = estimate(llama70b_lora()), estimate(replace(llama70b_lora(), nodes=2))
    assert abs(two.breakdown["weights"] * 2 - one.breakdown["weights"]) < 1e-6


def test_full_finetune_states_shrink_with_stage():
    base = PlanInput(get_shape("Llama-2-7b-hf"), method="full", micro_batch=1, gpus_per_node=8)
    states = [sum(estimate(replace(base, zero_stage=z)).breakdown[k]
                  for k in ("weights", "gradients", "optimizer_states")) for z in (0, 1, 2, 3)]
    # stage 0 is DDP on a bf16-loaded model: pure bf16, 2 + 2 + 4 bytes per parameter
    assert within(states[0], 8 * 6_738_415_616 / GIB, 0.01)
    ds = states[1:]  # DeepSpeed: 2 + 2 + 12 (fp32 master + Adam), sharded more with each stage
    assert ds == sorted(ds, reverse=True)
    assert within(states[3], 16 * 6_738_415_616 / GIB / 8, 0.01)


def test_offload_moves_memory_to_cpu():
    base = replace(llama70b_lora(), micro_batch=1)
    off = estimate(replace(base, offload_optimizer="cpu", offload_param="cpu"))
    on = estimate(base)
    assert off.breakdown["weights"] == 0 and off.per_gpu_peak_gib < on.per_gpu_peak_gib - 10
    assert off.cpu_breakdown["offloaded_params"] > 128  # the bf16 model, pinned, per node
    assert any("saves only" in n for n in off.notes)  # LoRA gains little from optimizer offload


def test_activation_knobs():
    base = replace(llama70b_lora(), micro_batch=1, seq_len=4096)
    eager = estimate(replace(base, attn_implementation="eager")).per_gpu_peak_gib
    flash = estimate(base).per_gpu_peak_gib
    no_ckpt = estimate(replace(base, gradient_checkpointing=False)).per_gpu_peak_gib
    assert eager > flash and no_ckpt > flash
    assert estimate(replace(base, micro_batch=2)).per_gpu_peak_gib > flash


def test_zero3_init_off_loads_full_model_per_rank():
    plan = estimate(replace(llama70b_lora(), zero3_init=False, cpu_ram_gib_per_node=1024))
    assert plan.cpu_breakdown["model_loading"] > 1000 and not plan.fits


def test_invalid_inputs_are_named():
    with pytest.raises(ValueError, match="offload_param"):
        replace(llama70b_lora(), zero_stage=2, offload_param="cpu")
    with pytest.raises(ValueError, match="task"):
        replace(llama70b_lora(), task="seq2seq")
    with pytest.raises(ValueError, match="method"):
        replace(llama70b_lora(), method="dora")
    listed = replace(llama70b_lora(), lora_target_modules=["q_proj", "v_proj"])
    assert hash(listed) and listed.lora_target_modules == ("q_proj", "v_proj")


# ---------------------------------------------------------------------- auto layout
def test_auto_layout_llama70b_on_h100_nodes():
    found = search(replace(llama70b_lora(), micro_batch=1), max_nodes=2, gpus_per_node_options=[8],
                   micro_batches=(1, 2, 4, 8, 16), margin_gib=1.0)
    best, plan = found[0]
    assert (best.nodes, best.gpus_per_node, best.zero_stage) == (1, 8, 3)
    assert (best.offload_optimizer, best.offload_param) == ("none", "none")
    assert best.micro_batch == 8 and plan.fits  # the guide's own choice
    assert all(p.fits for _, p in found)


def test_one_ranker_the_product_runs():
    """`layout.nodes: auto` (prepare -> job_plan.choose_layout -> search) and search() on the
    same space choose the same layout: offload is the last resort, not 1 GPU + offload."""
    from hpctune.plan import job_plan
    from hpctune.prepare import prepare
    job = prepare("example-h100", "llama2-70b-lora-zero3").job
    mine = search(job_plan.plan_input(job), max_nodes=16, gpus_per_node_options=[1, 2, 4, 8],
                  exclusive=job.profile.exclusive)[0][0]
    assert (mine.nodes, mine.gpus_per_node, mine.zero_stage, mine.offload_optimizer, mine.offload_param) == \
        (1, 8, 3, "none", "none")
    auto = prepare("example-h100", "llama2-70b-lora-zero3", ["layout.nodes=auto", "deepspeed.zero_stage=0"]).job
    assert (auto.nodes, auto.procs_per_node, auto.recipe.deepspeed.zero_stage,
            auto.recipe.training.per_device_train_batch_size) == (1, 8, 3, mine.micro_batch)
    assert job_plan.describe(job_plan.alternatives(job, limit=1)[0][0]) == job_plan.describe(mine)


def test_search_is_fast_enough():
    base = llama70b_lora()
    kw = dict(max_nodes=8, gpus_per_node_options=[1, 2, 4, 8])
    n = sum(1 for _ in candidates(base, **kw))
    assert n >= 500
    t = time.perf_counter()
    search(base, margin_gib=1.0, **kw)
    assert time.perf_counter() - t < 1.0
