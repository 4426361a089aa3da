"""What the engines do to the model, on CPU: dtypes, embedding rows, who picks the checkpoint.

Proves (GPU-path review numbers): D1 every QLoRA combination the node accepts keeps its packed
4-bit weights through ``deepspeed.initialize`` (ZeRO-2 and ZeRO-3), and the ones that would
not are refused first; D2 the fp32 upcast of adapters after TRL cast them to bf16; D17 full
fine-tuning without DeepSpeed trains fp32 master weights under autocast; D9 added rows are
the exact mean of the old ones; D19 two ranks with different views of the output folder
resume from the checkpoint rank 0 chose; D14 ``zero3_init_flag: false`` does not stop the
sharded build on either training path (the premise of the rule that refuses it).
"""

from __future__ import annotations

import json
import subprocess

from tests import tiny_assets as ta

QLORA = {"method.type": "qlora", "method.use_nested_quant": True, "precision": "bf16", "deepspeed.zero_stage": 3}


def test_qlora_weights_survive_deepspeed_wherever_the_node_lets_them_run(tmp_path):
    """D1. fp16 cannot run on DeepSpeed's CPU accelerator: bf16 precision stands for both."""
    from hpctune import recipe as recipe_mod
    from hpctune.errors import ConfigError
    from hpctune.train import preflight
    recipe = ta.write_recipe(tmp_path, QLORA)
    cases = ["bfloat16:3", "float16:3", "float32:3", "bfloat16:2", "float16:2"]
    proc = ta.run([ta.PYTHON, str(ta.REPO / "tests" / "probes" / "qlora_cast.py"), str(recipe), *cases],
                  timeout=600, MASTER_PORT=str(ta.free_port()))
    assert proc.returncode == 0, ta.tail(proc)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), proc.stdout
    for res in results:
        r = recipe_mod.load(recipe, (f"method.bnb_4bit_quant_storage_dtype={res['storage']}",
                                     f"deepspeed.zero_stage={res['stage']}"))
        try:
            preflight.check_recipe(r)  # the rule book's recipe rules: what the node and `hpctune check` run
            accepted = True
        except ConfigError as e:
            accepted = False
            assert e.rule == "qlora-storage-precision" and e.field == "method.bnb_4bit_quant_storage_dtype", str(e)
        assert accepted == res["survived"], res  # accepted <=> the 4-bit weights are intact
        if not res["survived"] and res["max_abs_diff"] is not None:
            assert res["max_abs_diff"] > res["max_abs_weight"] / 4  # garbage, not rounding
    assert [r["survived"] for r in results] == [True, False, False, True, False]


def test_qlora_adapters_upcast_after_trl_casts_them(tmp_path):
    """D2: TRL casts a quantized model's trainable parameters to bf16, which CUDA's fp16 grad
    scaler cannot unscale. The T4/V100 recipe (fp16, compute and storage float16, no DeepSpeed)
    gets fp32 adapters from ``trainer.build`` (the optimizer does not exist yet); bf16 has no
    scaler and keeps TRL's cast. Only the dtypes are checked: fp16 cannot train on CPU."""
    import datasets
    import torch

    from hpctune import policy, recipe as recipe_mod
    from hpctune.train import model as model_mod
    from hpctune.train import preflight, trainer as trainer_mod
    engine = policy.Engine(deepspeed=False, zero_stage=0, world_size=1, cuda=False)
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 8})
    t4 = {"precision": "fp16", "method.bnb_4bit_compute_dtype": "float16", "method.bnb_4bit_quant_storage_dtype": "float16"}
    for name, extra, want in (("bf16", {}, torch.bfloat16), ("t4-fp16", t4, torch.float32)):
        recipe = recipe_mod.load(ta.write_recipe(tmp_path / name, {**QLORA, "deepspeed.zero_stage": 0,
                                                                   "training.eval_strategy": "no", **extra}))
        assert policy.upcast_adapters(recipe, deepspeed=False) == (want == torch.float32)
        path = preflight.resolve_model(recipe)
        tok = model_mod.load_tokenizer(recipe, path)
        args = trainer_mod.make_args(recipe, tmp_path / name / "out", cuda=False, has_eval=False, engine=engine)
        model = model_mod.load(recipe, path, tok, engine=engine, local_rank=0)
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # PEFT's adapters
        trainer = trainer_mod.build(args, model, tok, ds, None, [], recipe=recipe, engine=engine)
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        assert trainable and {p.dtype for p in trainable} == {want}, name


def test_full_fine_tuning_without_deepspeed_keeps_fp32_master_weights(tmp_path):
    """D17: bf16 autocast over fp32 weights (before: the weights themselves were bf16); pure bf16
    (what the planner charges 8 bytes/parameter for) only when model.torch_dtype asks for it."""
    from hpctune.train import run
    full = {"method.type": "full", "precision": "bf16", "training.max_steps": 2, "training.eval_strategy": "no",
            "training.save_strategy": "no", "training.learning_rate": 0.001}
    for sub, extra, dtype in (("auto", {}, "float32"), ("pure", {"model.torch_dtype": "bfloat16"}, "bfloat16")):
        assert run.main(ta.write_recipe(tmp_path / sub, {**full, **extra})) == 0
        m = ta.metrics(tmp_path / sub / "output")
        assert m["status"] == "completed" and set(m["model"]["dtypes"]) == {dtype}, (sub, m["model"]["dtypes"])
        assert m["model"]["trainable"] == m["model"]["parameters"]


def test_zero3_init_flag_false_does_not_stop_the_sharded_build(tmp_path):
    """D14: with the environment accelerate launch sets for zero3_init_flag false, transformers
    still builds the model under deepspeed.zero.Init, on the SFT path and in the seq2seq loop.
    The rule zero3-init-flag refuses the flag for both; should a library start honouring it,
    this fails and the rule must be narrowed (policy.zero3_init_flag_problem)."""
    from hpctune import policy, recipe as recipe_mod
    seen = {}
    for path in ("sft", "seq2seq"):
        proc = ta.run([ta.PYTHON, str(ta.REPO / "tests" / "probes" / "zero3_init_flag.py"), path, str(tmp_path / path)],
                      timeout=300, MASTER_PORT=str(ta.free_port()))
        assert proc.returncode == 0, ta.tail(proc)
        seen[path] = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("{")))
    assert seen == {"sft": {"path": "sft", "flag": False, "zero3_init": True},
                    "seq2seq": {"path": "seq2seq", "flag": False, "zero3_init": True}}
    for task in ("causal_lm", "seq2seq"):
        r = recipe_mod.load(ta.write_recipe(tmp_path / task, {"task": task, "deepspeed.zero_stage": 3,
                                                                "deepspeed.zero3_init_flag": False}))
        assert policy.zero3_init_flag_problem(r), task


def test_added_rows_are_the_mean_of_the_old_rows(tmp_path):
    """D9: no covariance, no Cholesky: a chunked mean, the same every time (merge re-creates it)."""
    import torch
    from transformers import AutoModelForCausalLM

    from hpctune.train import model as model_mod, tiny
    model = AutoModelForCausalLM.from_pretrained(tiny.resolve(tiny.TINY_MODEL), dtype=torch.float32)
    old = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    model_mod.resize_embeddings(model, old.shape[0] + 3, chunk_rows=100)  # 4 chunks, the last one short
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == out.shape[0] == 392  # 387 rounded up to a multiple of 8
    assert torch.equal(emb[:384], old) and torch.equal(out[:384], old_out)
    assert torch.allclose(emb[384:], old.mean(0).expand(8, -1), atol=1e-6)
    assert torch.allclose(out[384:], old_out.mean(0).expand(8, -1), atol=1e-6)
    assert model.config.vocab_size == 392


def _fake_checkpoint(out, step, marker=True):
    ck = out / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ck / "adapter_model.safetensors").write_bytes(b"x" * 16)
    (ck / "optimizer.pt").write_bytes(b"x" * 16)
    if marker:
        (ck / ".hpctune-complete").write_text("{}")


def test_rank_0_chooses_the_checkpoint_for_every_rank(tmp_path):
    """D19: rank 1 sees the shared folder through a stale attribute cache (no marker on 20 yet)."""
    view0, view1 = tmp_path / "rank0-view", tmp_path / "rank1-view"
    for view, marked in ((view0, True), (view1, False)):
        _fake_checkpoint(view, 10)
        _fake_checkpoint(view, 20, marker=marked)
    proc = subprocess.run([ta.PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(ta.free_port()), str(ta.REPO / "tests" / "probes" / "resume_point.py"),
                           str(view0), str(view1)], capture_output=True, text=True, timeout=120, cwd=ta.REPO,
                          env=ta.env())
    assert proc.returncode == 0, ta.tail(proc)
    chosen = {r["rank"]: r["chosen"] for r in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}
    assert chosen == {0: "checkpoint-20", 1: "checkpoint-20"}
