#!/usr/bin/env python3
"""Start-up time: to the first optimizer step, and hpctune's share of it (issue #11 item 10).

    python bench/bench_startup.py [--runs 5] [--slurm]

1. hpctune vs plain TRL, one process on this machine, warm caches (tokenized data, page
   cache): seconds from each process's start (the kernel's start time, so Python's own
   start-up and every import count) to the end of its first optimizer step, for
   `hpctune train` on recipes/tiny-sft.yaml and for the same training written as a plain TRL
   script, alternating. The difference is hpctune's own start-up work (its preflight: the
   rule book on the recipe, versions, model config, LoRA targets on a meta-device copy, the
   dataset check, the resume lookup); the target is at most 0.5 s. hpctune's phases are
   printed too (metrics.json ``startup``).
2. ``--slurm``: time to the first optimizer step of the 2-node ZeRO-3 run on the test Slurm
   (bin/testcluster, started; warm caches: pre-built DeepSpeed op, tokenized data), from the
   job's start (sacct) and from the training process's start, with hpctune's phases.
   Needs the test cluster, so run it under the heavy lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN = r'''
import os, sys, time

def _started():
    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as fh:
        boot = next(int(l.split()[1]) for l in fh if l.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")

START = _started()
def mark(name):
    print(f"MARK {name}={time.time() - START:.3f}", flush=True)

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
mark("imports")

class First(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        mark("trainer set-up")
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            mark("first optimizer step")
            print(f"FIRST_STEP {time.time() - START:.3f}", flush=True)

model_dir, data_dir, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model_dir, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>")
ds = load_dataset("json", data_files={"train": f"{data_dir}/train.jsonl", "test": f"{data_dir}/test.jsonl"})
mark("tokenizer and data")
args = SFTConfig(output_dir=out, seed=100, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                 learning_rate=0.01, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                 logging_steps=5, eval_strategy="no", save_strategy="no",
                 bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, report_to=[],
                 max_length=64, dataset_text_field="content", disable_tqdm=True, log_level="warning")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
mark("model load")
peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds["train"].select_columns(["content"]),
                     processing_class=tok, peft_config=peft_config, callbacks=[First()])
trainer.train()
'''


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    return env


def local(runs: int) -> None:
    sys.path.insert(0, str(REPO))
    from hpctune.train import tiny
    model_dir, data_dir = tiny.resolve(tiny.TINY_MODEL), tiny.resolve(tiny.TINY_DATASET)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    (work / "plain.py").write_text(PLAIN)
    import yaml
    rec = yaml.safe_load((REPO / "recipes" / "tiny-sft.yaml").read_text())
    rec["training"].update(max_steps=2, eval_strategy="no", save_strategy="no")
    (work / "recipe.yaml").write_text(yaml.safe_dump(rec))
    env = _env()

    def hpctune_run() -> tuple[float, dict]:
        shutil.rmtree(work / "output", ignore_errors=True)
        p = subprocess.run([sys.executable, "-m", "hpctune", "train", str(work / "recipe.yaml")], env=env,
                           capture_output=True, text=True, cwd=REPO)
        if p.returncode != 0:
            sys.exit(p.stderr[-3000:])
        st = json.loads((work / "output" / "metrics.json").read_text())["startup"]
        return st["first optimizer step"], st

    plain_marks: list[dict] = []

    def plain_run() -> float:
        shutil.rmtree(work / "plain-out", ignore_errors=True)
        p = subprocess.run([sys.executable, str(work / "plain.py"), model_dir, data_dir, str(work / "plain-out")],
                           env=env, capture_output=True, text=True, cwd=REPO)
        if p.returncode != 0:
            sys.exit(p.stderr[-3000:])
        plain_marks.append(dict((ln[5:].split("=")[0], float(ln.split("=")[1])) for ln in p.stdout.splitlines()
                                if ln.startswith("MARK ")))
        return float(next(ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("FIRST_STEP")))

    hpctune_run(), plain_run()  # warm-up: tokenized data, datasets cache, page cache
    plain_marks.clear()
    h, p, phases = [], [], []
    for _ in range(runs):
        t, st = hpctune_run()
        h.append(t)
        phases.append(st)
        p.append(plain_run())
    mh, mp = statistics.median(h), statistics.median(p)
    print(f"to the first optimizer step, from the process's start, 1 process, warm caches ({runs} alternating runs):")
    print(f"  hpctune train tiny-sft : median {mh:6.2f} s  min {min(h):6.2f} s")
    print(f"  plain TRL script       : median {mp:6.2f} s  min {min(p):6.2f} s")
    print(f"  difference             : median {mh - mp:+6.2f} s  (min vs min {min(h) - min(p):+6.2f} s)")
    # hpctune's preflight = its imports + checks, against the plain script's imports alone
    # (both import torch, transformers, datasets, peft, trl; the plain script checks nothing)
    pre_h = statistics.median(ph["imports and preflight"] for ph in phases)
    pre_p = statistics.median(m["imports"] for m in plain_marks)
    print(f"  preflight: hpctune's imports + checks {pre_h:5.2f} s vs the plain script's imports {pre_p:5.2f} s: "
          f"{pre_h - pre_p:+5.2f} s (target <= 0.5 s)")
    keys = [k for k in phases[0] if k != "process_started"]
    prev = {k: statistics.median(ph[k] for ph in phases) for k in keys}
    last = 0.0
    print("  hpctune's phases (median, seconds in the phase):")
    for k in keys:
        print(f"    {k:32s} {prev[k] - last:6.2f} s")
        last = prev[k]
    print("  the plain script's phases (median):")
    last = 0.0
    for k in plain_marks[0]:
        v = statistics.median(m[k] for m in plain_marks)
        print(f"    {k:32s} {v - last:6.2f} s")
        last = v
    shutil.rmtree(work, ignore_errors=True)


def slurm(runs: int) -> None:
    env = _env()
    env["HPCTUNE_HOME"] = tempfile.mkdtemp(prefix="bench-startup-home-")
    shape = ["--set", "layout.nodes=2", "--set", "layout.gpus_per_node=1", "--set", "deepspeed.zero_stage=3",
             "--set", "training.max_steps=3", "--set", "training.save_strategy=no", "--set", "training.eval_strategy=no",
             "--set", 'layout.time="10"']
    from_job, from_proc, phases = [], [], []
    for i in range(runs + 1):  # the first run warms the caches (op build, tokenized data)
        bundle = Path(tempfile.mkdtemp(prefix="bench-startup-run-")) / "b"
        p = subprocess.run([sys.executable, "-m", "hpctune", "render", "-c", "testcluster", "tiny-sft", *shape, "-o",
                            str(bundle)], env=env, capture_output=True, text=True, cwd=REPO)
        if p.returncode != 0:
            sys.exit(p.stderr)
        jid = subprocess.run(["sbatch", "--parsable", str(bundle / "job.sbatch")], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        deadline = time.monotonic() + 600
        while not (bundle / "output" / "metrics.json").exists():
            if time.monotonic() > deadline:
                subprocess.run(["scancel", jid])
                sys.exit(f"job {jid} did not finish in 600 s")
            time.sleep(1)
        st = json.loads((bundle / "output" / "metrics.json").read_text())["startup"]
        start = subprocess.run(["sacct", "-n", "-X", "-P", "-j", jid, "-o", "Start"], capture_output=True,
                               text=True).stdout.strip()
        job_start = datetime.fromisoformat(start).timestamp() if start and start != "Unknown" else None
        first = st["process_started"] + st["first optimizer step"]
        if i:
            from_proc.append(st["first optimizer step"])
            phases.append(st)
            if job_start:
                from_job.append(first - job_start)
        shutil.rmtree(bundle.parent, ignore_errors=True)
    print(f"2-node ZeRO-3 (tiny-sft, test Slurm, warm caches), {runs} runs, to the first optimizer step:")
    if from_job:
        print(f"  from the job's start (sacct, 1 s resolution) : median {statistics.median(from_job):6.2f} s")
    print(f"  from the training process's start (rank 0)   : median {statistics.median(from_proc):6.2f} s")
    keys = [k for k in phases[0] if k != "process_started"]
    last = 0.0
    for k in keys:
        v = statistics.median(ph[k] for ph in phases)
        print(f"    {k:32s} {v - last:6.2f} s")
        last = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slurm", action="store_true", help="also the 2-node ZeRO-3 run on the test Slurm")
    a = ap.parse_args()
    local(a.runs)
    if a.slurm:
        slurm(max(1, a.runs // 2))


if __name__ == "__main__":
    main()
