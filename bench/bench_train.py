#!/usr/bin/env python3
"""Overhead of `hpctune train`: wall time on recipes/tiny-sft.yaml vs an equivalent plain TRL script.

    python bench/bench_train.py [--runs 5]

Both run the same training in a fresh process each time (imports included): the built-in
tiny Llama and chat set, LoRA r=8 on all linear layers, 30 steps of batch 4, sequence
length 64, a checkpoint every 10 steps, one evaluation and the final save. hpctune adds
its preflight checks (model config, LoRA targets on a meta-device copy, dataset), resume
lookup, checkpoint markers, the adapter check and metrics.json. The runs alternate, so
background load hits both alike; prints the medians, the minimums and the ratios of wall
time, and of CPU time (less sensitive to other work on the machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN = r'''
import sys
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data_dir, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model_dir, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>")
ds = load_dataset("json", data_files={"train": f"{data_dir}/train.jsonl", "test": f"{data_dir}/test.jsonl"})
args = SFTConfig(output_dir=out, seed=100, max_steps=30, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                 learning_rate=0.01, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                 logging_steps=5, eval_strategy="epoch", save_strategy="steps", save_steps=10, save_total_limit=2,
                 bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, report_to=[],
                 max_length=64, dataset_text_field="content", disable_tqdm=True, log_level="warning")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds["train"].select_columns(["content"]),
                     eval_dataset=ds["test"].select_columns(["content"]), processing_class=tok, peft_config=peft_config)
trainer.train()
trainer.evaluate()
trainer.save_model()
'''


CPU: dict[str, list[float]] = {"hpctune": [], "plain": []}


def timed(cmd: list[str], env: dict, kind: str) -> float:
    """Wall seconds; the CPU seconds (user + system) go to CPU[kind]."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[kind].append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    n = ap.parse_args().runs

    sys.path.insert(0, str(REPO))
    from hpctune.train import tiny
    model_dir, data_dir = tiny.resolve(tiny.TINY_MODEL), tiny.resolve(tiny.TINY_DATASET)

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    plain = work / "plain_trl_sft.py"
    plain.write_text(PLAIN)
    recipe = work / "recipe.yaml"
    shutil.copy(REPO / "recipes" / "tiny-sft.yaml", recipe)

    def run_hpctune() -> float:
        shutil.rmtree(work / "output", ignore_errors=True)
        return timed([sys.executable, "-m", "hpctune", "train", str(recipe)], env, "hpctune")

    def run_plain() -> float:
        shutil.rmtree(work / "plain-out", ignore_errors=True)
        return timed([sys.executable, str(plain), model_dir, data_dir, str(work / "plain-out")], env, "plain")

    run_hpctune(), run_plain()  # warm-up: datasets cache, page cache
    CPU["hpctune"].clear(), CPU["plain"].clear()
    h, p = [], []
    for _ in range(n):
        h.append(run_hpctune())
        p.append(run_plain())
    mh, mp = statistics.median(h), statistics.median(p)
    print(f"hpctune train recipes/tiny-sft.yaml : median {mh:6.2f} s  min {min(h):6.2f} s  ({n} runs)")
    print(f"plain TRL script (same training)    : median {mp:6.2f} s  min {min(p):6.2f} s  ({n} runs)")
    print(f"ratio hpctune / plain               : median {mh / mp:6.3f}    min {min(h) / min(p):6.3f}")
    ch, cp = statistics.median(CPU["hpctune"]), statistics.median(CPU["plain"])
    print(f"CPU seconds (user+sys), median      : hpctune {ch:6.2f} s  plain {cp:6.2f} s  ratio {ch / cp:6.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
