"""The training's per-engine decisions (hpctune.policy) and the GPU-only logic around them.

Pure Python, fast: what runs on which engine (use_reentrant, load dtype, adapter dtype,
device_map, packing, FlashAttention, zero3_init_flag, max_seq_len, trainable token rows) and
the nest-safe GPU peak bookkeeping. The CUDA-only defects (D2, D5, D8, D12, D20 of the
GPU-path review) cannot run here: their decision logic is tested here, on CPU, and their
effect by bench/gpu_check.py on a GPU. The GPU counter below is a plain-Python stand-in
with torch.cuda's semantics (one peak per device, reset to the current allocation).
"""

from __future__ import annotations

import pytest

from hpctune import policy, recipe as recipe_mod
from hpctune.train import memory, metrics
from tests import tiny_assets as ta


def _recipe(tmp_path, **overrides):
    return recipe_mod.load(ta.write_recipe(tmp_path, overrides))


DDP2 = policy.Engine(deepspeed=False, zero_stage=0, world_size=2)
ONE = policy.Engine(deepspeed=False, zero_stage=0, world_size=1)
Z2 = policy.Engine(deepspeed=True, zero_stage=2, world_size=2)
Z3 = policy.Engine(deepspeed=True, zero_stage=3, world_size=8)


@pytest.mark.parametrize("method,engine,recipe_value,runs", [
    ("lora", DDP2, True, False),    # D3: reentrant crashes DDP's reducer
    ("qlora", DDP2, True, False),   # the W2 recipe's true, on a ZeRO-0 layout
    ("lora", Z3, False, True),      # D11: TRL forces reentrant for PEFT + ZeRO-3
    ("qlora", Z3, True, True),
    ("full", Z3, False, False),     # no PEFT: TRL leaves it alone
    ("lora", ONE, True, True),      # one process: the recipe's choice
    ("lora", Z2, True, True),
    ("lora", Z2, False, False),
])
def test_use_reentrant_per_engine(tmp_path, method, engine, recipe_value, runs):
    r = _recipe(tmp_path, **{"method.type": method, "training.gradient_checkpointing": True,
                             "training.use_reentrant": recipe_value})
    assert policy.use_reentrant(r, engine) is runs
    note = policy.use_reentrant_note(r, engine)
    assert (note is None) == (runs == recipe_value)
    if note:
        assert ("true runs" if runs else "false runs") in note


def test_storage_dtype_must_be_deepspeeds_precision(tmp_path):
    """D1: every DeepSpeed stage casts a 4-bit model's parameters to the precision dtype."""
    def problem(precision, storage, deepspeed=True, bits=4):
        r = _recipe(tmp_path, **{"method.type": "qlora", "precision": precision, "method.quant_bits": bits,
                                 "method.bnb_4bit_quant_storage_dtype": storage})
        return policy.storage_dtype_problem(r, deepspeed)
    assert problem("bf16", "bfloat16") is None and problem("fp16", "float16") is None
    assert "must be bfloat16" in problem("bf16", "float16")
    assert "must be float16" in problem("fp16", "bfloat16")  # W2 with --set precision=fp16
    assert problem("bf16", "float32") is not None
    assert problem("no", "bfloat16") is None  # fp32 DeepSpeed casts nothing
    assert problem("fp16", "bfloat16", deepspeed=False) is None  # no DeepSpeed, no cast
    assert problem("fp16", "bfloat16", bits=8) is None


def test_full_fine_tuning_loads_fp32_master_weights_without_deepspeed(tmp_path):
    """D17: autocast needs fp32 weights; DeepSpeed keeps its own fp32 master copy."""
    full16 = _recipe(tmp_path, **{"method.type": "full", "precision": "fp16"})
    assert policy.load_dtype(full16, deepspeed=False) == "float32"
    assert policy.load_dtype(full16, deepspeed=True) == "float16"
    full_bf = _recipe(tmp_path, **{"method.type": "full", "precision": "bf16"})
    assert policy.load_dtype(full_bf, deepspeed=False) == "float32"
    pure_bf = _recipe(tmp_path, **{"method.type": "full", "precision": "bf16", "model.torch_dtype": "bfloat16"})
    assert policy.load_dtype(pure_bf, deepspeed=False) == "bfloat16"  # asked for explicitly: pure bf16
    lora = _recipe(tmp_path, **{"precision": "bf16"})
    assert policy.load_dtype(lora, deepspeed=False) == "bfloat16"  # frozen base: half is right
    explicit16 = _recipe(tmp_path, **{"method.type": "full", "precision": "fp16", "model.torch_dtype": "float16"})
    assert "Attempting to unscale FP16 gradients" in policy.full_fp16_problem(explicit16, deepspeed=False)
    assert policy.full_fp16_problem(explicit16, deepspeed=True) is None
    assert policy.full_fp16_problem(full16, deepspeed=False) is None


def test_qlora_fp16_without_deepspeed_upcasts_adapters(tmp_path):
    """D2 (CUDA-only crash): the decision; the upcast itself runs on a real trainer below."""
    def up(method, precision, deepspeed):
        return policy.upcast_adapters(_recipe(tmp_path, **{"method.type": method, "precision": precision}), deepspeed)
    assert up("qlora", "fp16", False)
    assert not up("qlora", "fp16", True)   # DeepSpeed recasts to fp16 and scales the loss itself
    assert not up("qlora", "bf16", False)  # no grad scaler
    assert not up("lora", "fp16", False)   # PEFT's adapters are fp32 already


def test_device_map_loads_onto_the_gpu_unless_zero3():
    """D20: every non-ZeRO-3 GPU rank loads straight to its device."""
    cuda = lambda stage, world: policy.Engine(deepspeed=stage > 0, zero_stage=stage, world_size=world, cuda=True)  # noqa: E731
    assert policy.device_map(cuda(0, 8), local_rank=3) == {"": 3}
    assert policy.device_map(cuda(2, 8), local_rank=1) == {"": 1}
    assert policy.device_map(cuda(3, 8), local_rank=1) is None  # ZeRO-3 refuses a device_map
    assert policy.device_map(policy.Engine(False, 0, 1, cuda=False), 0) is None


def test_flash_attention_needs_an_importable_package_and_ampere():
    """D12: found-but-broken wheels and pre-Ampere GPUs are refused before the data is prepared."""
    assert policy.flash_attention_problem(True, (9, 0), None) is None
    assert policy.flash_attention_problem(True, (8, 0), None) is None
    assert "7.5" in policy.flash_attention_problem(True, (7, 5), None)  # T4
    assert "7.0" in policy.flash_attention_problem(True, (7, 0), None)  # V100
    msg = policy.flash_attention_problem(True, (8, 0), "undefined symbol: _ZN3c10...")
    assert "does not import here" in msg and "undefined symbol" in msg
    assert "needs a GPU" in policy.flash_attention_problem(False, None, None)


def test_flash_attention_facts_import_the_package(tmp_path):
    from hpctune.errors import ConfigError
    from hpctune.train import preflight
    capability, error = preflight.flash_attention_facts(cuda=False)
    assert capability is None and error is not None  # flash-attn is not installed here
    # the node refuses before the data is prepared (check_machine runs in the preflight)
    fa2 = _recipe(tmp_path, **{"model.attn_implementation": "flash_attention_2"})
    with pytest.raises(ConfigError, match="flash_attention_2 needs a GPU") as e:
        preflight.check_machine(fa2, cuda=False)
    assert e.value.rule == "node-devices" and e.value.field == "model.attn_implementation"


def test_zero3_init_flag_false_is_a_no_op_on_both_paths(tmp_path):
    """D14: transformers 5 builds every ZeRO-3 model sharded whatever the flag says, on the SFT
    path and in the seq2seq loop alike (the premise is checked against the libraries in
    test_train_engines.py)."""
    r = _recipe(tmp_path, **{"deepspeed.zero_stage": 3, "deepspeed.zero3_init_flag": False})
    assert "has no effect" in policy.zero3_init_flag_problem(r)
    assert policy.zero3_init_flag_problem(_recipe(tmp_path, **{"deepspeed.zero_stage": 3})) is None
    assert policy.zero3_init_flag_problem(_recipe(tmp_path, **{"deepspeed.zero_stage": 2, "deepspeed.zero3_init_flag": False})) is None
    s2s = _recipe(tmp_path, **{"task": "seq2seq", "deepspeed.zero_stage": 3, "deepspeed.zero3_init_flag": False})
    assert "has no effect" in policy.zero3_init_flag_problem(s2s)  # its plain Accelerator ignores it too


def test_max_seq_len_against_positions():
    """D16: learned positions have no row past the table (a CUDA device-side assert)."""
    assert policy.positions_problem(1024, 1024, learned=True) is None
    severity, msg = policy.positions_problem(2048, 1024, learned=True)
    assert severity == "error" and "max_seq_len <= 1024" in msg
    assert policy.positions_problem(8192, 4096, learned=False)[0] == "warning"  # rotary: runs, untrained
    assert policy.positions_problem(8192, None, learned=True) is None


def test_packing_keeps_every_token(tmp_path):
    """D10: best-fit packing splits long samples (bfd_split) instead of truncating them (bfd)."""
    import datasets
    from trl.data_utils import pack_dataset
    fa2 = _recipe(tmp_path, **{"model.attn_implementation": "flash_attention_2", "data.packing": True})
    assert policy.packing_strategy(fa2) == "bfd_split"
    assert policy.packing_strategy(_recipe(tmp_path)) == "wrapped"
    from hpctune.train import trainer as trainer_mod  # what the SFT trainer is given
    args = trainer_mod.make_args(fa2, tmp_path / "out", cuda=False, has_eval=False, engine=ONE)
    assert args.packing and args.packing_strategy == "bfd_split"
    rows = [list(range(1, 150)), list(range(1, 20)), list(range(1, 45))]  # one sample 2x longer than a pack
    ds = datasets.Dataset.from_dict({"input_ids": rows})
    total = sum(len(r) for r in rows)
    kept = lambda strategy: sum(len(r) for r in pack_dataset(ds, 64, strategy=strategy)["input_ids"])  # noqa: E731
    assert kept(policy.packing_strategy(fa2)) == total
    assert kept("bfd") < total  # what ran before: the long conversation's tail was dropped


def test_trainable_token_rows_per_engine():
    """D7: added tokens' rows train wherever TRL's fused LM head lets PEFT's trainable tokens work."""
    assert policy.trainable_token_rows(False, DDP2) == (True, True)
    assert policy.trainable_token_rows(True, ONE) == (True, True)
    assert policy.trainable_token_rows(False, Z3) == (True, False)
    assert policy.trainable_token_rows(True, Z3) == (False, False)


# --- GPU peaks per phase (D5, D8) -------------------------------------------------------------

class FakeCuda:
    """torch.cuda's allocator statistics, by hand: one peak per device, reset to the current."""

    def __init__(self):
        self.allocated = self.max = 0

    def alloc(self, n):
        self.allocated += n
        self.max = max(self.max, self.allocated)

    def free(self, n):
        self.allocated -= n

    def peak(self):
        return self.max

    def current(self):
        return self.allocated

    def reset(self):
        self.max = self.allocated


def test_phase_peaks_are_nest_safe():
    gpu = FakeCuda()
    phases = memory.PhasePeaks(gpu)
    gpu.alloc(50)   # the model
    gpu.alloc(30)   # DeepSpeed's initialisation, freed before training: QLoRA's real peak (D8)
    gpu.free(30)
    phases.enter("train")
    gpu.alloc(20)   # activations
    gpu.free(20)
    with phases.phase("eval"):  # nested, as seq2seq's evaluation inside its training loop (D5)
        gpu.alloc(5)
        gpu.free(5)
    gpu.alloc(10)   # training goes on after the evaluation
    gpu.free(10)
    phases.exit("train")
    with phases.phase("eval"):
        gpu.alloc(8)
        gpu.free(8)
    rep = phases.report()
    assert rep == {"load": 80, "train": 70, "eval": 58, "overall": 80}
    assert phases.before["train"] == 50


def test_rank_reports_and_summary_name_every_phase():
    gpu = FakeCuda()
    phases = memory.PhasePeaks(gpu)
    gpu.alloc(3 * metrics.GIB)
    with phases.phase("train"):
        gpu.alloc(metrics.GIB)
        gpu.free(metrics.GIB)
    r0 = metrics.gpu_report(phases)
    assert r0["gpu_peak_gib"] == {"load": 3.0, "train": 4.0, "overall": 4.0} and r0["gpu_peak_allocated_gib"] == 4.0
    r1 = {"gpu_peak_gib": {"load": 5.0, "train": 2.0, "eval": 1.0, "overall": 5.0}, "gpu_peak_allocated_gib": 5.0,
          "gpu_peak_reserved_gib": 6.0}
    s = metrics.gpu_summary([{**r0, "rank": 0}, {**r1, "rank": 1}])
    assert s == {"gpu_peak_allocated_gib": 5.0, "gpu_peak_reserved_gib": 6.0, "gpu_load_peak_gib": 5.0,
                 "gpu_train_peak_gib": 4.0, "gpu_eval_peak_gib": 1.0}
    assert metrics.gpu_summary([{"rank": 0}])["gpu_train_peak_gib"] is None  # CPU: no figures


def test_seq2seq_memory_report_keeps_train_eval_and_load_apart(monkeypatch):
    """D5 and D8 on the seq2seq loop's own code (MemoryTrace, rank_report), with the stand-in
    counter as the process's GPU: the evaluation nested in the training reset the counter, so
    the "train" figure was the evaluation's (5 GiB of training reported as 4.5); and the
    load + DeepSpeed initialisation peak (6 GiB here) was not in metrics.json at all."""
    from hpctune.train import seq2seq
    G = metrics.GIB
    gpu = FakeCuda()
    monkeypatch.setattr(memory, "_GPU", memory.PhasePeaks(gpu))
    gpu.alloc(4 * G)            # the model
    gpu.alloc(2 * G)            # DeepSpeed's initialisation, freed before training
    gpu.free(2 * G)
    with seq2seq.MemoryTrace("train") as train:
        gpu.alloc(G)            # activations
        gpu.free(G)
        with seq2seq.MemoryTrace("eval") as ev:
            gpu.alloc(G // 2)   # generation
            gpu.free(G // 2)
    assert train.report["gpu"] == {"before": 4096, "consumed": 1024, "peak": 5120}
    assert ev.report["gpu"] == {"before": 4096, "consumed": 512, "peak": 4608}
    rank = seq2seq.rank_report(train.report, ev.report)
    assert rank["gpu_peak_gib"] == {"load": 6.0, "train": 5.0, "eval": 4.5, "overall": 6.0}
    assert rank["memory_mb"] == {"train": train.report, "eval": ev.report}
    top = metrics.gpu_summary([rank])
    assert (top["gpu_load_peak_gib"], top["gpu_train_peak_gib"], top["gpu_eval_peak_gib"]) == (6.0, 5.0, 4.5)
    monkeypatch.setattr(memory, "_GPU", None)
    monkeypatch.setattr(memory, "gpu_phases", lambda: None)  # no GPU: the CPU report only
    assert "gpu_peak_gib" not in seq2seq.rank_report(None, None)


def test_login_side_imports_no_torch():
    """policy is read by the rule book on login nodes."""
    import subprocess
    import sys
    code = ("import sys, hpctune.policy, hpctune.train.memory; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ta.REPO, env=ta.env())
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_the_planners_shapes_know_learned_position_tables():
    """What the login side's max-seq-len-positions rule reads (D16)."""
    from hpctune.plan.shapes import get_shape
    assert get_shape("facebook/bart-large").learned_positions == 1024
    assert get_shape("facebook/opt-1.3b").learned_positions == 2048
    assert get_shape("openai-community/gpt2").learned_positions == 1024
    assert get_shape("meta-llama/Llama-2-70b-hf").learned_positions == 0  # rotary: no table
