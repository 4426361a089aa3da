"""Run the grid on one GPU and record the three figures (needs torch, transformers, peft,
bitsandbytes, deepspeed and a CUDA GPU; each point runs in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

STEPS = 3


def _nvidia_smi_used_gib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return float(out.strip().splitlines()[0]) / 1024
    except Exception:
        return None


def run_point(row: dict) -> dict:
    """One point, in this process: build, train STEPS steps, measure peaks (GiB)."""
    import threading

    import torch
    from hpctune.plan import get_shape
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = get_shape(row["model"])
    mt = {"llama": "llama", "mistral": "mistral"}[shape.arch]
    cfg = AutoConfig.for_model(mt, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                               num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                               num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                               tie_word_embeddings=shape.tied_embeddings,
                               head_dim=shape.head_dim or shape.hidden // shape.heads)
    cfg._attn_implementation = "sdpa"
    peak_smi = [0.0]
    stop = threading.Event()

    def poll():  # nvidia-smi's figure is sampled while the steps run
        while not stop.is_set():
            used = _nvidia_smi_used_gib()
            if used:
                peak_smi[0] = max(peak_smi[0], used)
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as tmp:
        if row["method"] == "qlora":  # random weights through the real 4-bit loading path
            AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp)
            from transformers import BitsAndBytesConfig
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True,
                                   bnb_4bit_quant_storage=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, dtype=torch.bfloat16,
                                                         device_map={"": 0})
        else:
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if row["method"] != "full":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        if row["method"] == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    if row["zero_stage"] == 3:
        import deepspeed
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29577")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        ds = {"train_micro_batch_size_per_gpu": row["micro_batch"], "gradient_accumulation_steps": 1,
              "bf16": {"enabled": True}, "zero_optimization": {"stage": 3},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}
        model, opt, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds)
    else:
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    ids = torch.randint(0, shape.vocab, (row["micro_batch"], row["seq_len"]), device="cuda")
    t0 = time.perf_counter()
    for _ in range(STEPS):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        if row["zero_stage"] == 3:
            model.backward(loss)
            model.step()
        else:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / STEPS
    stop.set()
    poller.join()
    return {**row, "allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "device_gib": peak_smi[0] or None, "step_seconds": step_s,
            "gpu_model": torch.cuda.get_device_name(0)}


def measure(rows: list[dict], out_path: str, timeout_s: int = 600) -> None:
    """Each point in a fresh Python process (a clean allocator and CUDA context); an OOM or a
    failure is recorded, not fatal."""
    for row in rows:
        proc = subprocess.run([sys.executable, "-m", "bench.gpu_calibrate", "_one", json.dumps(row)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        try:
            result = json.loads(last)
        except ValueError:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            result = {**row, "error": "out of memory" if "out of memory" in proc.stderr else tail[:300]}
        with open(out_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)
