"""Real multi-process training on CPU, started by the launch.sh that `hpctune render` wrote.

Every bundle here is rendered by the lead's command line from the shipped tiny-sft recipe
(`hpctune render -c local tiny-sft --set layout.gpus_per_node=2 --set deepspeed.zero_stage=3`)
and run with `bash BUNDLE/launch.sh`: accelerate launch -> 2 gloo ranks -> hpctune.train.

Proves: plain DDP, ZeRO-2 and ZeRO-3 (DeepSpeed's CPU accelerator) train the same model:
same losses, adapters equal within 5e-4; the ZeRO-3 run is also stopped (the preemption
hook) and resumed from its ZeRO-3 checkpoint on the way; QLoRA trains (and merges, into the
original or the dequantized 4-bit weights) on one process and trains on two under ZeRO-3
(4-bit layers, one dtype, built sharded), with a tokenizer that lacks the chat tokens, whose
added rows train and are saved; two "machines" on this host (machine ranks 0 and 1, static
rendezvous on 127.0.0.1) make ONE training of world size 2.

Gradient checkpointing runs with the use_reentrant that works on each engine (GPU-path review
D3, D11): DDP runs the W2 recipe's ``use_reentrant: true`` as false (reentrant crashes DDP's
reducer at the first backward), ZeRO-3 + LoRA runs ``false`` as true (TRL forces it), and
metrics.json reports what ran.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests import tiny_assets as ta

STEPS = 12
COMMON = (f"training.max_steps={STEPS}", "training.logging_steps=1", "training.save_steps=4",
          "training.eval_strategy=no")
TOL = 5e-4  # fp32 on CPU: ZeRO's partitioned reductions differ from DDP's only in summation order


def _two_procs(tmp_path_factory, name, *sets, cluster="local"):
    bundle = tmp_path_factory.mktemp(name)
    return ta.render(bundle / "b", "layout.gpus_per_node=2", *COMMON, *sets, cluster=cluster)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    bundle = _two_procs(tmp_path_factory, "ddp", "deepspeed.zero_stage=0", "training.gradient_checkpointing=true",
                        "training.use_reentrant=true")
    assert "MULTI_GPU" in (bundle / "accelerate_config.yaml").read_text()
    proc = ta.launch(bundle)
    assert proc.returncode == 0, ta.tail(proc)
    return bundle / "output"


def _assert_two_ranks(m):
    assert m["status"] == "completed" and m["world_size"] == 2 and m["optimizer_steps"] == STEPS
    assert [r["rank"] for r in m["ranks"]] == [0, 1] and m["ranks"][0]["pid"] != m["ranks"][1]["pid"]


def _assert_same_training(out, ref):
    a, b = ta.metrics(ref), ta.metrics(out)
    la, lb = dict(map(tuple, a["loss_curve"])), dict(map(tuple, b["loss_curve"]))
    assert la.keys() == lb.keys() == set(range(1, STEPS + 1))
    worst = max(abs(la[s] - lb[s]) for s in la)
    assert worst <= TOL, f"losses differ by {worst}: {la} vs {lb}"
    diff = ta.max_abs_diff(ta.adapter(ref), ta.adapter(out))
    assert diff <= TOL, f"adapters differ by {diff}"


def test_ddp_two_processes(ddp):
    m = ta.metrics(ddp)
    _assert_two_ranks(m)
    assert m["engine"]["wrapper"] == "DistributedDataParallel"
    assert m["engine"]["gradient_checkpointing"] == {"use_reentrant": False}  # D3: what DDP can run
    curve = [loss for _, loss in m["loss_curve"]]
    assert curve[-1] < curve[0] - 1.0


def test_zero3_two_processes_interrupted_resumed_matches_ddp(ddp, tmp_path_factory):
    bundle = _two_procs(tmp_path_factory, "z3", "deepspeed.zero_stage=3", "training.gradient_checkpointing=true",
                        "training.use_reentrant=false")
    cfg = (bundle / "accelerate_config.yaml").read_text()
    assert "DEEPSPEED" in cfg and "zero_stage: 3" in cfg
    out = bundle / "output"

    proc = ta.launch(bundle, HPCTUNE_STOP_AFTER_STEPS="6")  # as if preempted at step 6
    assert proc.returncode == 0, ta.tail(proc)
    assert (out / ".hpctune-interrupted").is_file()
    ck = out / "checkpoint-6"
    assert (ck / "latest").is_file() and len(list(ck.glob("global_step6/*optim_states.pt"))) == 2  # one shard per rank

    proc = ta.launch(bundle)  # the requeued job
    assert proc.returncode == 0, ta.tail(proc)
    assert "resuming from checkpoint-6" in proc.stderr + proc.stdout
    m = ta.metrics(out)
    _assert_two_ranks(m)
    assert m["model"]["zero3_init"] is True  # built sharded by zero.Init
    assert m["engine"]["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and m["engine"]["zero3_partitioned"]
    assert m["adapter"]["tensors"] == m["adapter"]["expected"] == 28
    assert m["engine"]["gradient_checkpointing"] == {"use_reentrant": True}  # D11: TRL forces it under PEFT + ZeRO-3
    _assert_same_training(out, ddp)


def test_zero2_two_processes_matches_ddp(ddp, tmp_path_factory):
    bundle = _two_procs(tmp_path_factory, "z2", "deepspeed.zero_stage=2")
    assert "zero_stage: 2" in (bundle / "accelerate_config.yaml").read_text()
    proc = ta.launch(bundle)
    assert proc.returncode == 0, ta.tail(proc)
    m = ta.metrics(bundle / "output")
    _assert_two_ranks(m)
    assert m["engine"]["optimizer"] == "DeepSpeedZeroOptimizer"
    _assert_same_training(bundle / "output", ddp)


QLORA = ("method.type=qlora", "method.use_nested_quant=true", "precision=bf16",
         "training.gradient_checkpointing=true", "training.use_reentrant=true")


def _assert_qlora(m, tensors=28):
    assert m["status"] == "completed"
    assert m["model"]["quantized_linear_layers"] == 14  # 2 layers x 7 projections, 4-bit
    assert m["adapter"]["tensors"] == m["adapter"]["expected"] == tensors
    curve = [loss for _, loss in m["loss_curve"]]
    assert curve[-1] < curve[0]


def test_qlora_one_process(tmp_path):
    recipe = ta.write_recipe(tmp_path, {"method.type": "qlora", "method.use_nested_quant": True, "precision": "bf16",
                                        "training.max_steps": 8, "training.logging_steps": 1,
                                        "training.eval_strategy": "no", "training.save_strategy": "no",
                                        "training.gradient_checkpointing": True, "training.use_reentrant": True})
    proc = ta.hpctune("train", str(recipe))
    assert proc.returncode == 0, ta.tail(proc)
    _assert_qlora(ta.metrics(tmp_path / "output"))
    # merged into the unquantized base, in the compute dtype, saying so (D18)
    from hpctune.errors import ConfigError
    from hpctune.train import merge
    info = merge.merge(tmp_path, tmp_path / "merged")
    assert info["dtype"] == "bfloat16" and (tmp_path / "merged" / "model.safetensors").is_file()
    assert info["base_weights"].startswith("original weights") and "nf4 4-bit quantization" in info["base_weights"]
    # ... or into the dequantized 4-bit weights the adapter was trained against
    deq = merge.merge(tmp_path, tmp_path / "merged-deq", into="dequantized")
    assert deq["base_weights"].startswith("dequantized nf4 4-bit weights")
    _assert_merged_into(tmp_path, info, deq)
    # a host without the memory for the base model is refused before anything is loaded or written
    with pytest.raises(ConfigError, match=r"needs about .* GiB of CPU memory"):
        merge.merge(tmp_path, tmp_path / "merged-small", available_bytes=info["ram_needed_gib"] * 2 ** 30 // 2)
    assert not (tmp_path / "merged-small").exists()


def _assert_merged_into(run_dir, original, dequantized):
    """merged = base + scale * B @ A, with base the original or the dequantized 4-bit weight."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hpctune import recipe as recipe_mod
    from hpctune.train import model as model_mod, preflight
    name = "model.layers.0.self_attn.q_proj.weight"
    recipe = recipe_mod.load(run_dir / "recipe.yaml")
    base = preflight.resolve_model(recipe)
    orig = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).state_dict()[name].float()
    q = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, device_map={"": "cpu"},
                                             quantization_config=model_mod.quantization_config(recipe))
    deq = q.dequantize(dtype=torch.bfloat16).state_dict()[name].float()
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                     str(run_dir / "output")).base_model.model.model.layers[0].self_attn.q_proj
    delta = (lora.lora_B["default"].weight @ lora.lora_A["default"].weight * lora.scaling["default"]).float()
    m_orig = load_file(str(run_dir / "merged" / "model.safetensors"))[name].float()
    m_deq = load_file(str(run_dir / "merged-deq" / "model.safetensors"))[name].float()
    assert float((orig - deq).abs().max()) > 1e-2  # the two bases differ: 4-bit rounding
    assert torch.allclose(m_orig, orig + delta, atol=2e-2) and torch.allclose(m_deq, deq + delta, atol=2e-2)
    assert not torch.allclose(m_orig, m_deq, atol=1e-3)


def test_qlora_zero3_two_processes_with_added_chat_tokens(tmp_path_factory):
    """Also D7 under ZeRO-3: a tokenizer without the chatml tokens (like Llama-2's), so the
    embeddings are resized; the added tokens' input rows train and are in the saved adapter."""
    from hpctune.train import tiny
    base = tmp_path_factory.mktemp("base-no-chat-tokens")
    tiny.build_model(base, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    bundle = _two_procs(tmp_path_factory, "qz3", "deepspeed.zero_stage=3", *QLORA, "training.max_steps=6",
                        "training.save_strategy=no", f"model.model_name_or_path={base}")
    cfg = (bundle / "accelerate_config.yaml").read_text()
    assert "zero3_init_flag: true" in cfg and '"bf16"' in cfg
    proc = ta.launch(bundle)
    assert proc.returncode == 0, ta.tail(proc)
    m = ta.metrics(bundle / "output")
    _assert_qlora(m, tensors=29)  # 28 LoRA tensors + the added tokens' rows
    assert m["world_size"] == 2
    # chatml adds <|im_start|>user/assistant/system and <|im_end|>; under ZeRO-3 the output
    # layer's rows cannot train with TRL's fused LM head (policy.trainable_token_rows)
    assert m["model"]["added_tokens"] == {"added": 4, "input_rows_trained": True, "output_rows_trained": False}
    rows = ta.adapter(bundle / "output")["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert rows.shape == (4, 64)
    assert float(rows.float().std(0).max()) > 1e-3  # they started equal (the mean row) and learned apart
    assert m["model"]["dtypes"].keys() == {"bfloat16"}  # storage dtype == model dtype: one dtype for ZeRO-3
    # 4-bit models are loaded whole on every rank (peft#1844), then ZeRO-3 shards them
    assert m["engine"]["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and m["engine"]["zero3_partitioned"]


def test_two_machines_on_this_host_make_one_training(ddp, tmp_path_factory):
    d = tmp_path_factory.mktemp("2m")
    # Both "machines" are this host and the head is 127.0.0.1: a profile whose nodes talk over
    # the loopback says so (network.socket_ifname: lo); without it launch.sh refuses a head that
    # resolves to a loopback address on another node (the /etc/hosts mistake, issue #11 item 9).
    profile = yaml.safe_load((ta.REPO / "clusters" / "testcluster.yaml").read_text())
    profile.setdefault("network", {})["socket_ifname"] = "lo"
    (d / "onehost.yaml").write_text(yaml.safe_dump(profile))
    bundle = d / "b"
    ta.render(bundle, "layout.nodes=2", "layout.gpus_per_node=1", "deepspeed.zero_stage=0", *COMMON,
              cluster=str(d / "onehost.yaml"))
    script = (bundle / "launch.sh").read_text()
    assert "--rdzv_backend static" in script and "--same_network" in script
    port = str(ta.free_port())
    procs = [subprocess.Popen(["bash", str(bundle / "launch.sh")], cwd=ta.REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=ta.env(HPCTUNE_NODE_RANK=str(rank), HPCTUNE_HEAD_ADDR="127.0.0.1",
                                         HPCTUNE_MAIN_PORT=port))
             for rank in (0, 1)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "node rank 0 of 2" in logs[0] and "node rank 1 of 2" in logs[1]
    m = ta.metrics(bundle / "output")
    _assert_two_ranks(m)  # one metrics.json with both ranks: one training, not two
    # and it is the same training as 2 processes on one machine (same world size, same data split)
    _assert_same_training(bundle / "output", ddp)
