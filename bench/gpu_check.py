#!/usr/bin/env python3
"""GPU check: hpctune's training module on its CUDA paths, one GPU, under 10 minutes.

    python bench/gpu_check.py [--out DIR] [--only NAME,...] [--budget-s 540] [--list] [--dry-run]

Random-initialised models of real shapes, cut to a few layers so that they fit one GPU
(Llama-2-70B-shaped: hidden 8192, 64/8 heads, MLP 28672, vocab 32000; Falcon-180B-shaped:
hidden 14848, 232/8 heads, tied vocab 65024; bart-large whole), each with a tokenizer that
lacks the chat tokens (so the embeddings are resized and the added rows train). The four
reference configurations scaled to one GPU, plus the variants of the GPU-path review
(docs/training-on-gpus.md): D1 a QLoRA storage dtype other than DeepSpeed's precision must
be refused; D2 QLoRA + fp16 without DeepSpeed must train; D17 full fine-tuning + fp16
without DeepSpeed must train fp32 master weights; D12 flash_attention_2 must run or be
refused by the preflight; D20 a non-ZeRO-3 GPU run must not build the model in CPU RAM;
D3 (two GPUs or more) DDP + the W2 recipe's reentrant checkpointing must train.

Every case is rendered by `hpctune render` from a shipped recipe (a one-node profile of
this machine's GPUs) and run by its own launch.sh, as a job would. Recorded per case: the
outcome against the expectation, GPU peaks per phase from metrics.json (load = model load
+ engine initialisation, train, eval), seconds per optimizer step, tokens/s, the CPU peak.
DIR/gpu-check.json and DIR/gpu-check.md (the table for the README) are written after each
case, so a run cut short still reports what finished; cases that no longer fit the budget
are reported as skipped.

Without a GPU, ``--list`` prints the cases and ``--dry-run`` renders every case's bundle
(tests/test_bench_gpu_check.py runs both, plus the report, on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --- models: real widths, few layers ------------------------------------------------------------

MODELS = {
    # Llama-2-70B's layer and vocabulary, 2 of its 80 layers: 2.2 B parameters
    "llama": {"model_type": "llama", "hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
              "intermediate_size": 28672, "num_hidden_layers": 2, "vocab_size": 32000,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    # a 7B-wide Llama for full fine-tuning in fp32 master weights + Adam on one GPU: 0.5 B
    "llama-small": {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
                    "intermediate_size": 11008, "num_hidden_layers": 2, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    # Falcon-180B's layer and tied vocabulary, 1 of its 80 layers: 3.2 B parameters
    "falcon": {"model_type": "falcon", "hidden_size": 14848, "num_attention_heads": 232, "num_kv_heads": 8,
               "num_hidden_layers": 1, "vocab_size": 65024, "new_decoder_architecture": True, "parallel_attn": True,
               "bias": False, "tie_word_embeddings": True, "max_position_embeddings": 2048},
    # bart-large, whole: 406 M parameters, learned positions (1024)
    "bart": {"model_type": "bart", "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
             "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
             "decoder_ffn_dim": 4096, "vocab_size": 50265, "max_position_embeddings": 1024, "pad_token_id": 1,
             "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2, "forced_eos_token_id": 2},
}


@dataclass
class Case:
    name: str
    why: str                  # the workload or defect it checks
    recipe: str               # a shipped recipe
    model: str                # a key of MODELS
    sets: tuple[str, ...] = ()
    expect: str = "completed"  # or "refused:<field>"
    gpus: int = 1
    flash: bool = False       # uses flash_attention_2 (when flash-attn imports here)
    checks: tuple[str, ...] = ()  # extra assertions on metrics.json (see CHECKS)


SHORT = ("training.max_steps=5", "training.logging_steps=1", "training.save_strategy=no",
         "training.eval_strategy=steps", "training.eval_steps=5", "training.per_device_eval_batch_size=2",
         "training.ddp_timeout=1800")
SFT_DATA = ("data.dataset_name=hpctune:tiny-chat", "data.max_seq_len=2048")


def cases(n_gpus: int, have_flash: bool) -> list[Case]:
    """The check's cases for a machine with ``n_gpus`` GPUs, in the order they run."""
    attn = "model.attn_implementation=" + ("flash_attention_2" if have_flash else "sdpa")
    one = ("layout.nodes=1", "layout.gpus_per_node=1")
    w2 = ("llama2-70b-qlora-zero3", "llama")
    out = [
        Case("d1-qlora-storage-vs-fp16", "D1: a 4-bit storage dtype other than DeepSpeed's precision is refused",
             *w2, (*one, *SFT_DATA, *SHORT, attn, "precision=fp16"), expect="refused:method.bnb_4bit_quant_storage_dtype"),
        Case("w1-llama-lora-zero3", "W1 scaled: LoRA, ZeRO-3, bf16, packing (bfd_split with FA2), chat tokens added",
             "llama2-70b-lora-zero3", "llama", (*one, *SFT_DATA, *SHORT, attn, "training.per_device_train_batch_size=2",
                                                "training.gradient_accumulation_steps=1"),
             flash=have_flash, checks=("phases", "tokens_added")),
        Case("w2-llama-qlora-zero3", "W2 scaled: QLoRA nf4 + double quant, storage bf16, ZeRO-3; load peak reported (D8)",
             *w2, (*one, *SFT_DATA, *SHORT, attn), flash=have_flash, checks=("phases", "load_peak")),
        Case("d2-qlora-fp16-no-deepspeed", "D2: QLoRA + fp16 without DeepSpeed trains (fp32 adapters under the scaler)",
             *w2, (*one, *SFT_DATA, *SHORT, "model.attn_implementation=sdpa", "precision=fp16", "deepspeed.zero_stage=0",
                   "method.bnb_4bit_compute_dtype=float16", "method.bnb_4bit_quant_storage_dtype=float16"),
             checks=("phases",)),
        Case("w4-falcon-lora-zero3", "W4 scaled: Falcon shape, tied embeddings, LoRA, ZeRO-3, bf16, packing",
             "falcon-180b-lora-zero3", "falcon", (*one, *SFT_DATA, *SHORT, attn, "training.per_device_train_batch_size=1",
                                                  "training.gradient_accumulation_steps=1"),
             flash=have_flash, checks=("phases",)),
        Case("d17-full-fp16-no-deepspeed", "D17: full fine-tuning + fp16 without DeepSpeed: fp32 master weights",
             "tiny-sft", "llama-small", (*one, *SFT_DATA, *SHORT, "method.type=full", "precision=fp16",
                                         "training.learning_rate=1e-5", "training.per_device_train_batch_size=1",
                                         "data.max_seq_len=512"),
             checks=("fp32_weights",)),
        Case("d20-lora-no-zero3-loads-on-gpu", "D20: without ZeRO-3 the weights load straight onto the GPU",
             "llama2-70b-lora-zero3", "llama", (*one, *SFT_DATA, *SHORT, "model.attn_implementation=sdpa",
                                                "deepspeed.zero_stage=0", "training.per_device_train_batch_size=1",
                                                "training.gradient_accumulation_steps=1", "data.max_seq_len=1024"),
             checks=("cpu_below_model",)),
        Case("w3-bart-zero3-offload", "W3 whole: bart-large seq2seq, ZeRO-3 + CPU offload; train/eval peaks apart (D5)",
             "bart-large-lora-zero3-offload", "bart", (*one, "data.dataset_name=hpctune:tiny-complaints",
                                                       "training.max_steps=6", "training.logging_steps=1",
                                                       "training.save_strategy=no"),
             checks=("seq2seq_phases", "phases", "load_peak")),
        Case("d12-flash-attention-preflight", "D12: flash_attention_2 runs here, or the preflight refuses it first",
             "tiny-sft", "llama-small", (*one, *SFT_DATA, *SHORT, "model.attn_implementation=flash_attention_2",
                                         "precision=bf16", "data.max_seq_len=512", "training.per_device_train_batch_size=1"),
             expect="completed" if have_flash else "refused:model.attn_implementation"),
    ]
    if n_gpus >= 2:
        out.insert(4, Case("d3-qlora-ddp-reentrant", "D3: DDP on 2 GPUs with the W2 recipe's use_reentrant true trains",
                           *w2, ("layout.nodes=1", "layout.gpus_per_node=2", *SFT_DATA, *SHORT, attn, "deepspeed.zero_stage=0"),
                           gpus=2, flash=have_flash, checks=("reentrant_false",)))
    return out


# --- checks on metrics.json ----------------------------------------------------------------------

def _check(name: str, m: dict, model_gib: float) -> str | None:
    """None when metrics.json shows what the case is for, else what is wrong."""
    ranks = m.get("ranks") or [{}]
    if name == "phases":
        got = ranks[0].get("gpu_peak_gib") or {}
        return None if {"load", "train"} <= set(got) else f"GPU peaks per phase missing: {got}"
    if name == "load_peak":
        return None if (m.get("gpu_load_peak_gib") or 0) > 0 else "no load peak"
    if name == "seq2seq_phases":
        mem = m.get("memory_mb") or {}
        tr, ev = (mem.get("train") or {}).get("gpu"), (mem.get("eval") or {}).get("gpu")
        if not (tr and ev):
            return f"train/eval GPU reports missing: {mem}"
        # D5: the evaluation's reset made the training's peak the last evaluation's, to the MB
        return None if tr["peak"] != ev["peak"] else f"train GPU peak = eval GPU peak ({tr['peak']} MB): D5"
    if name == "tokens_added":
        t = (m.get("model") or {}).get("added_tokens") or {}
        return None if t.get("added") and t.get("input_rows_trained") else f"added tokens: {t}"
    if name == "fp32_weights":
        return None if set((m.get("model") or {}).get("dtypes", {})) == {"float32"} else f"dtypes {m['model']['dtypes']}"
    if name == "cpu_below_model":
        cpu = m.get("cpu_rss_peak_gib") or 0
        return None if cpu < model_gib else f"CPU peak {cpu} GiB >= the model's {model_gib:.1f} GiB: built in CPU RAM"
    if name == "reentrant_false":
        gc = (m.get("engine") or {}).get("gradient_checkpointing")
        return None if gc == {"use_reentrant": False} else f"gradient checkpointing {gc}"
    return f"unknown check {name}"


def judge(case: Case, rc: int, stderr: str, metrics: dict | None, model_gib: float) -> tuple[str, str]:
    """(outcome, note): outcome is ok / FAILED; the note says what happened."""
    if case.expect.startswith("refused:"):
        field_ = case.expect.split(":", 1)[1]
        # exit 2 from render or the node's preflight (accelerate launch may report it as 1)
        line = next((x for x in stderr.splitlines() if "error:" in x and field_ in x), "")
        refused = rc in (1, 2) and bool(line)
        return ("ok" if refused else "FAILED"), (f"refused: {line.strip()[:160]}" if refused else f"exit {rc}, expected a refusal of {field_}")
    if rc != 0 or not metrics or metrics.get("status") != "completed":
        tail = (stderr.strip().splitlines() or [""])[-1][:200]
        return "FAILED", f"exit {rc}: {tail}"
    problems = [p for p in (_check(c, metrics, model_gib) for c in case.checks) if p]
    return ("FAILED", "; ".join(problems)) if problems else ("ok", "completed")


@dataclass
class Result:
    name: str
    why: str
    outcome: str
    note: str
    seconds: float = 0.0
    gpu_gib: dict = field(default_factory=dict)  # load / train / eval / overall, max over ranks
    step_s: float | None = None
    tokens_per_s: float | None = None
    cpu_peak_gib: float | None = None


def result_from(case: Case, outcome: str, note: str, seconds: float, m: dict | None) -> Result:
    r = Result(case.name, case.why, outcome, note, round(seconds, 1))
    if m:
        for phase in ("load", "train", "eval"):
            if m.get(f"gpu_{phase}_peak_gib") is not None:
                r.gpu_gib[phase] = m[f"gpu_{phase}_peak_gib"]
        mem = m.get("memory_mb") or {}  # seq2seq: the reference's MB report
        for phase in ("train", "eval"):
            gpu = (mem.get(phase) or {}).get("gpu") if isinstance(mem.get(phase), dict) else None
            if gpu and phase not in r.gpu_gib:
                r.gpu_gib[phase] = round(gpu["peak"] / 1024, 3)
        steps = m.get("steps_this_run") or 0
        r.step_s = round(m["train_seconds"] / steps, 3) if steps and m.get("train_seconds") else None
        r.tokens_per_s = m.get("tokens_per_second")
        r.cpu_peak_gib = m.get("cpu_rss_peak_gib")
    return r


def report_md(results: list[Result], header: dict) -> str:
    lines = [f"GPU check {header.get('date', '')}: {header.get('gpu', '?')} x{header.get('gpus', '?')}, "
             f"torch {header.get('torch', '?')}, flash-attn {header.get('flash_attn') or 'not importable'}, "
             f"{sum(r.outcome == 'ok' for r in results)}/{len(results)} ok, {header.get('seconds', 0):.0f} s", "",
             "| case | checks | outcome | GPU GiB load / train / eval | s/step | tokens/s | CPU GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        g = " / ".join(f"{r.gpu_gib[p]:.1f}" if p in r.gpu_gib else "-" for p in ("load", "train", "eval"))
        note = r.note if r.outcome != "ok" or r.note != "completed" else ""
        lines.append(f"| {r.name} | {r.why} | {r.outcome}{': ' + note if note else ''} | {g} | "
                     f"{r.step_s if r.step_s is not None else '-'} | {r.tokens_per_s or '-'} | "
                     f"{r.cpu_peak_gib if r.cpu_peak_gib is not None else '-'} |")
    return "\n".join(lines) + "\n"


# --- running -------------------------------------------------------------------------------------------

def _tokenizer(folder: Path, vocab: int) -> None:
    """The tiny BPE tokenizer (no hub) grown to ``vocab`` ids with unused entries, so that the
    chat tokens land past the model's rows, as on Llama-2 or Falcon."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from hpctune.train import tiny
    tiny.build_tokenizer(folder, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    data = json.loads((folder / "tokenizer.json").read_text())
    model_vocab = data["model"]["vocab"]
    for i in range(len(model_vocab), vocab):
        model_vocab[f"<unused{i}>"] = i
    (folder / "tokenizer.json").write_text(json.dumps(data))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(folder / "tokenizer.json")),
                                  bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                  model_max_length=4096)
    tok.chat_template = tiny.CHATML_TEMPLATE
    tok.save_pretrained(str(folder))


def build_model(name: str, folder: Path, weights: bool = True) -> float:
    """config.json + tokenizer (+ random weights, made on the GPU); returns the bf16 size in GiB."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from hpctune.train import tiny

    spec = dict(MODELS[name])
    folder.mkdir(parents=True, exist_ok=True)
    if name == "bart":  # the tiny BART's tokenizer: byte-level BPE with BART's special ids
        for f in Path(tiny.resolve(tiny.TINY_BART)).glob("*token*"):
            shutil.copy(f, folder / f.name)
    else:
        _tokenizer(folder, spec["vocab_size"])
    auto = AutoModelForSeq2SeqLM if name == "bart" else AutoModelForCausalLM
    config = AutoConfig.for_model(**spec)
    with torch.device("meta"):
        meta = auto.from_config(config)
    gib = sum(p.numel() for p in {id(p): p for p in meta.parameters()}.values()) * 2 / 1024 ** 3
    if not weights:
        config.save_pretrained(str(folder))
        return gib
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = auto.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    torch.cuda.empty_cache()
    return gib


def write_profile(folder: Path, n_gpus: int, gpu_model: str, gpu_mem_gib: float, cpus: int, ram_gib: float) -> Path:
    import yaml
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpucheck.yaml").write_text(yaml.safe_dump({
        "name": "gpucheck", "description": "this machine (bench/gpu_check.py)", "scheduler": "local",
        "node": {"gpus_per_node": n_gpus, "gpu_model": gpu_model, "gpu_mem_gib": gpu_mem_gib, "cpus_per_node": cpus,
                 "ram_gib": ram_gib},
        "preemption": {"mode": "none", "max_attempts": 1}, "rendezvous": "static", "exclusive": False}, sort_keys=False))
    return folder


def _env(clusters: Path) -> dict:
    env = dict(os.environ)
    env["HPCTUNE_CLUSTERS"] = str(clusters)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hpctune" / "torch_extensions"))
    env["HF_HUB_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1"
    return env


def render(case: Case, model_dir: Path, bundle: Path, env: dict) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "hpctune", "render", "-c", "gpucheck", case.recipe, "-o", str(bundle),
            "--set", f"model.model_name_or_path={model_dir}"]
    for s in case.sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def machine() -> dict:
    import torch
    info = {"torch": torch.__version__, "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "date": time.strftime("%Y-%m-%d")}
    if info["gpus"]:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 1024 ** 3, 1), capability=f"{p.major}.{p.minor}")
    try:
        import flash_attn
        from flash_attn import flash_attn_func  # noqa: F401
        info["flash_attn"] = flash_attn.__version__
    except Exception:  # noqa: BLE001 - missing or not importable: the FA2 cases use sdpa
        info["flash_attn"] = None
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-check", help="folder for the report and the run bundles")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting cases after this many seconds")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--dry-run", action="store_true", help="render every case's bundle without a GPU, run nothing")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    info = machine() if not (args.list or args.dry_run) else {"gpus": 1, "flash_attn": None}
    todo = cases(max(1, info["gpus"]), bool(info.get("flash_attn")))
    if args.only:
        names = set(args.only.split(","))
        todo = [c for c in todo if c.name in names]
    if args.list:
        for c in todo:
            print(f"{c.name:32s} {c.recipe:30s} {c.model:12s} expect {c.expect:45s} {c.why}")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_gpus = max(1, info["gpus"])
    clusters = write_profile(out / "clusters", n_gpus, "h200" if "H200" in info.get("gpu", "") else "h100",
                             info.get("gpu_mem_gib", 80.0), os.cpu_count() or 8, 128.0)
    env = _env(clusters)
    if args.dry_run:
        bad = 0
        for c in todo:
            size = build_model(c.model, out / "models" / c.model, weights=False)
            proc = render(c, out / "models" / c.model, out / "bundles" / c.name, env)
            refused = c.expect.startswith("refused:") and proc.returncode == 2
            ok = proc.returncode == 0 or refused
            bad += not ok
            print(f"{c.name:32s} {size:5.1f} GiB  render {'ok' if proc.returncode == 0 else 'exit %d' % proc.returncode}"
                  f"{'' if ok else ': ' + proc.stderr.strip()[-300:]}")
        return 1 if bad else 0

    sizes: dict[str, float] = {}
    results: list[Result] = []
    for c in todo:
        if c.gpus > n_gpus:
            continue
        if time.monotonic() - t0 > args.budget_s:
            results.append(Result(c.name, c.why, "skipped", f"over the {args.budget_s:.0f} s budget"))
            continue
        start = time.monotonic()
        if c.model not in sizes:
            sizes[c.model] = build_model(c.model, out / "models" / c.model)
        bundle = out / "bundles" / c.name
        shutil.rmtree(bundle, ignore_errors=True)
        proc = render(c, out / "models" / c.model, bundle, env)
        metrics = None
        if proc.returncode == 0:
            left = max(60.0, args.budget_s + 60 - (time.monotonic() - t0))
            try:
                proc = subprocess.run(["bash", str(bundle / "launch.sh")], capture_output=True, text=True, env=env,
                                      cwd=REPO, timeout=left)
            except subprocess.TimeoutExpired as e:
                proc = subprocess.CompletedProcess(e.cmd, 124, "", f"timed out after {left:.0f} s")
            (bundle / "run.log").write_text(proc.stdout + proc.stderr)
            try:
                metrics = json.loads((bundle / "output" / "metrics.json").read_text())
            except (OSError, ValueError):
                metrics = None
        outcome, note = judge(c, proc.returncode, proc.stderr, metrics, sizes[c.model])
        results.append(result_from(c, outcome, note, time.monotonic() - start, metrics))
        print(f"{c.name:32s} {outcome:7s} {time.monotonic() - start:6.1f} s  {note}", flush=True)
        info["seconds"] = time.monotonic() - t0
        (out / "gpu-check.json").write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=1))
        (out / "gpu-check.md").write_text(report_md(results, info))
    print(report_md(results, info))
    return 0 if all(r.outcome in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
