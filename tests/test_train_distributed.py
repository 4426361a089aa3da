"""Real multi-process training on CPU, started by the launch.sh that `hpctune render` wrote.

Every bundle here is rendered by the lead's command line from the shipped tiny-sft recipe
(`hpctune render -c local tiny-sft --set layout.gpus_per_node=2 --set deepspeed.zero_stage=3`)
and run with `bash BUNDLE/launch.sh`: accelerate launch -> 2 gloo ranks -> hpctune.train.

Proves: plain DDP, ZeRO-2 and ZeRO-3 (DeepSpeed's CPU accelerator) train the same model:
same losses, adapters equal within 5e-4; the ZeRO-3 run is also stopped (the preemption
hook) and resumed from its ZeRO-3 checkpoint on the way; QLoRA trains (and merges) on one
process and trains on two under ZeRO-3 (4-bit layers, one dtype, built sharded); two "machines" on this host
(machine ranks 0 and 1, static rendezvous on 127.0.0.1) make ONE training of world size 2.
"""

from __future__ import annotations

import subprocess

import pytest

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
    bundle = _two_procs(tmp_path_factory, "ddp", "deepspeed.zero_stage=0")
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
    curve = [loss for _, loss in m["loss_curve"]]
    assert curve[-1] < curve[0] - 1.0


def test_zero3_two_processes_interrupted_resumed_matches_ddp(ddp, tmp_path_factory):
    bundle = _two_procs(tmp_path_factory, "z3", "deepspeed.zero_stage=3")
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


def _assert_qlora(m):
    assert m["status"] == "completed"
    assert m["model"]["quantized_linear_layers"] == 14  # 2 layers x 7 projections, 4-bit
    assert m["adapter"]["tensors"] == 28
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
    # merged into the unquantized base, in the compute dtype
    from hpctune.train import merge
    info = merge.merge(tmp_path, tmp_path / "merged")
    assert info["dtype"] == "bfloat16" and (tmp_path / "merged" / "model.safetensors").is_file()


def test_qlora_zero3_two_processes(tmp_path_factory):
    bundle = _two_procs(tmp_path_factory, "qz3", "deepspeed.zero_stage=3", *QLORA, "training.max_steps=6",
                        "training.save_strategy=no")
    cfg = (bundle / "accelerate_config.yaml").read_text()
    assert "zero3_init_flag: true" in cfg and '"bf16"' in cfg
    proc = ta.launch(bundle)
    assert proc.returncode == 0, ta.tail(proc)
    m = ta.metrics(bundle / "output")
    _assert_qlora(m)
    assert m["world_size"] == 2
    assert m["model"]["dtypes"].keys() == {"bfloat16"}  # storage dtype == model dtype: one dtype for ZeRO-3
    # 4-bit models are loaded whole on every rank (peft#1844), then ZeRO-3 shards them
    assert m["engine"]["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and m["engine"]["zero3_partitioned"]


def test_two_machines_on_this_host_make_one_training(ddp, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("2m") / "b"
    ta.render(bundle, "layout.nodes=2", "layout.gpus_per_node=1", "deepspeed.zero_stage=0", *COMMON,
              cluster="testcluster")
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
