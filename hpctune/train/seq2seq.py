"""The seq2seq task (reference workload 3): LoRA on an encoder-decoder model, custom Accelerate loop.

Follows PEFT's DeepSpeed example (bart-large on twitter_complaints, ZeRO-3 + CPU offload of
parameters and optimizer on one GPU): ``Accelerator`` (gradient accumulation from the
recipe; DeepSpeed settings from the accelerate config that ``hpctune render`` wrote),
``main_process_first`` around the data, ``prepare(model, dataloaders, optimizer,
lr_scheduler)``, ``accelerator.backward``, clipping, optimizer and scheduler steps;
evaluation by ``generate`` (``synced_gpus`` when ZeRO-3 shards the parameters: every rank
must take part in each forward) and accuracy of the generated text against the labels;
the memory report of the reference (GPU and CPU, before / consumed / peak, MB, for train
and for eval) into metrics.json, and with a GPU the peaks per phase (load, train, eval) as
the SFT path reports them.

Shared with the SFT path: preflight checks, checkpoint completeness and the
``.hpctune-complete`` marker (``resume``), the interruption protocol (``signals``: a flag,
every rank stops at the same optimizer step, checkpoint, ``.hpctune-interrupted``, exit 0;
``HPCTUNE_STOP_AFTER_STEPS``), the adapter check and metrics.json writing.

Checkpoints (``checkpoint-N``) hold ``accelerator.save_state`` (DeepSpeed's shards under
ZeRO), the adapter, and ``trainer_state.json`` (step, epoch, loss history); a resumed run
reloads the newest complete one, replays the data order of its epoch (seeded sampler) and
skips the batches already trained, so it continues the uninterrupted run step for step.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

from hpctune import policy
from hpctune.errors import ConfigError
from hpctune.run.folder import Output
from hpctune.train import dist, preflight

MB = 1024 ** 2
STATE = "trainer_state.json"


def say(msg: str) -> None:
    if dist.is_main():
        import sys
        print(f"hpctune train: {msg}", file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------------

def _label_texts(ds, column: str) -> list[str]:
    """The label column as text (a ClassLabel's ints become its names, ``_`` -> space)."""
    feat = ds.features.get(column)
    names = getattr(feat, "names", None)
    values = ds[column]
    if names:
        return [names[v].replace("_", " ") if isinstance(v, int) and 0 <= v < len(names) else str(v) for v in values]
    return ["" if v is None else str(v) for v in values]


def check_columns(recipe, ds, split: str) -> None:
    d = recipe.data
    cols = ds.column_names
    for field, col in (("data.dataset_text_field", d.dataset_text_field), ("data.dataset_label_field", d.dataset_label_field)):
        if col not in cols:
            what = "input text" if field.endswith("text_field") else "target label"
            raise ConfigError(recipe.source, field,
                              f"column {col!r} not in the {split} split of {d.dataset_name} (columns: {', '.join(cols)}); "
                              f"set {field} to the column holding the {what}")


def load_data(recipe):
    """(train, eval or None) raw datasets, checked: both columns present, at least two label classes."""
    from hpctune.train import data
    train_split, eval_split = data.split_names(recipe)
    train, evald = data.load(recipe)
    check_columns(recipe, train, train_split)
    if evald is not None:
        check_columns(recipe, evald, eval_split)
    classes = sorted(set(t.strip() for t in _label_texts(train, recipe.data.dataset_label_field)) - {""})
    if len(classes) < 2:
        raise ConfigError(recipe.source, "data.dataset_label_field",
                          f"the train split of {recipe.data.dataset_name} has "
                          f"{'only one label class (' + repr(classes[0]) + ')' if classes else 'no label'} in column "
                          f"{recipe.data.dataset_label_field!r}: "
                          "a classifier needs at least two; check the dataset or the label column")
    return train, evald


def tokenize(recipe, ds, tokenizer, target_len: int):
    d = recipe.data
    labels_text = _label_texts(ds, d.dataset_label_field)
    ds = ds.add_column("_hpctune_label", labels_text) if "_hpctune_label" not in ds.column_names else ds

    def fn(batch):
        texts = [t if isinstance(t, str) else "" for t in batch[d.dataset_text_field]]
        enc = tokenizer(texts, max_length=d.max_seq_len, padding="max_length", truncation=True)
        lab = tokenizer(batch["_hpctune_label"], max_length=target_len, padding="max_length", truncation=True)["input_ids"]
        enc["labels"] = [[t if t != tokenizer.pad_token_id else -100 for t in row] for row in lab]
        return enc

    return ds.map(fn, batched=True, remove_columns=[c for c in ds.column_names if c != "_hpctune_label"],
                  desc="hpctune: tokenizing")


def target_length(recipe, ds, tokenizer) -> int:
    classes = sorted(set(_label_texts(ds, recipe.data.dataset_label_field)))
    return max(len(tokenizer(c)["input_ids"]) for c in classes)


# --- memory (the reference's TorchTracemalloc) --------------------------------------------------

def _rss() -> int:
    from hpctune.train import metrics
    return metrics._rss_bytes()


class MemoryTrace:
    """GPU (allocated) and CPU (RSS, sampled by a thread) before / consumed / peak, in MB, of one phase.

    Nest-safe: the evaluation runs inside the training loop, and its trace must neither erase
    the training's GPU peak (one CUDA peak counter per device; ``memory.PhasePeaks`` folds it
    before any reset) nor count in it: the GPU peak of a phase and the CPU samples of a trace
    cover only the time it is the innermost open trace.
    """

    _open: list["MemoryTrace"] = []

    def __init__(self, phase: str):
        self.phase = phase

    def __enter__(self):
        from hpctune.train import memory
        self.phases = memory.gpu_phases()
        if self.phases:
            self.phases.enter(self.phase)
            self.gpu_begin = self.phases.counter.current()
        self.cpu_begin = self.cpu_peak = _rss()
        MemoryTrace._open.append(self)
        self._run = True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while self._run:
            if MemoryTrace._open and MemoryTrace._open[-1] is self:
                self.cpu_peak = max(self.cpu_peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._run = False
        self._thread.join()
        self.cpu_peak = max(self.cpu_peak, _rss())
        MemoryTrace._open.remove(self)
        report = {"cpu": {"before": round(self.cpu_begin / MB), "consumed": round((self.cpu_peak - self.cpu_begin) / MB),
                          "peak": round(self.cpu_peak / MB)}, "gpu": None}
        if self.phases:
            self.phases.exit(self.phase)
            peak = self.phases.peaks.get(self.phase, 0)
            report["gpu"] = {"before": round(self.gpu_begin / MB), "consumed": round(max(0, peak - self.gpu_begin) / MB),
                             "peak": round(peak / MB)}
        self.report = report
        return False


def _print_memory(phase: str, rep: dict) -> None:
    lines = []
    for dev, name in (("gpu", "GPU"), ("cpu", "CPU")):
        r = rep.get(dev)
        if r is None:
            lines.append(f"{name} memory during the {phase}: no GPU")
            continue
        lines += [f"{name} Memory before entering the {phase} : {r['before']}",
                  f"{name} Peak Memory consumed during the {phase} (max-begin): {r['consumed']}",
                  f"{name} Total Peak Memory consumed during the {phase} (max): {r['peak']}"]
    say("\n".join(lines))


# --- checkpoints ----------------------------------------------------------------------------------

def _save_adapter(accelerator, model, folder: Path) -> None:
    """The LoRA adapter, gathered from the ZeRO-3 shards (a collective: every rank calls it)."""
    state_dict = accelerator.get_state_dict(model)
    accelerator.unwrap_model(model).save_pretrained(
        str(folder), is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict)


def _save_checkpoint(accelerator, model, out: Path, step: int, state: dict, limit: int | None) -> Path:
    from hpctune.train import resume
    ckpt = out / f"checkpoint-{step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(ckpt))
    import torch
    # this rank's torch RNG (LoRA dropout) after the step: restored after the resumed run has
    # started its dataloader iterator (starting one draws from the RNG; the uninterrupted run did not)
    torch.save(torch.get_rng_state(), ckpt / f"hpctune_rng_{accelerator.process_index}.pt")
    _save_adapter(accelerator, model, ckpt)
    if accelerator.is_main_process:
        (ckpt / STATE).write_text(json.dumps(state, indent=1) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (ckpt / resume.MARKER).write_text(json.dumps({"global_step": step, "time": time.time()}) + "\n")
        if limit:
            import shutil
            done = [c for c in resume.checkpoints(out) if (c / resume.MARKER).is_file()]
            for old in done[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return ckpt


# --- the run ----------------------------------------------------------------------------------------

def _lora_config(recipe):
    from peft import LoraConfig, TaskType
    m = recipe.method
    return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, inference_mode=False, r=m.lora_r, lora_alpha=m.lora_alpha,
                      lora_dropout=m.lora_dropout, target_modules=preflight.target_list(recipe))


def _batches(loader):
    """Per-process batch count of a prepared dataloader."""
    return len(loader)


def train(recipe, out: Path, model_path: str, launch: dict, cuda: bool, wall_start: float) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSeq2SeqLM, default_data_collator, get_scheduler

    from hpctune.train import adapter_check, memory, metrics, model as model_mod, resume, signals

    memory.gpu_phases()  # the load phase (model load, DeepSpeed's initialisation) starts here
    t = recipe.training
    if not cuda:
        # Without a GPU: the process group first, on gloo (as TrainingArguments(use_cpu=True)
        # does for SFT); the Accelerator then reuses it and still takes DeepSpeed from the
        # launch. Accelerator(cpu=True) would drop DeepSpeed; neither would see world size 2.
        from accelerate import PartialState
        PartialState(cpu=True)
    accelerator = Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    world = accelerator.num_processes
    ds_plugin = accelerator.state.deepspeed_plugin
    zero_stage = ds_plugin.zero_stage if ds_plugin is not None else 0
    is_zero3 = zero_stage == 3
    set_seed(t.seed)

    tokenizer = model_mod.load_tokenizer(recipe, model_path)
    with accelerator.main_process_first():
        train_raw, eval_raw = load_data(recipe)
        preflight.check_rows(recipe, len(train_raw), world, f"the train split of {recipe.data.dataset_name}")
        target_len = recipe.data.max_target_len or target_length(recipe, train_raw, tokenizer)
        train_ds = tokenize(recipe, train_raw, tokenizer, target_len)
        eval_ds = tokenize(recipe, eval_raw if eval_raw is not None else train_raw, tokenizer, target_len)
    accelerator.wait_for_everyone()

    # Built after the Accelerator: under ZeRO-3 it is created sharded (deepspeed.zero.Init).
    # Elsewhere on a GPU it loads straight onto this rank's device, not into CPU RAM first (D20).
    engine = policy.Engine(deepspeed=ds_plugin is not None, zero_stage=zero_stage, world_size=world, cuda=cuda)
    device_map = policy.device_map(engine, dist.local_rank())
    set_seed(t.seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path, dtype=model_mod.torch_dtype(recipe.model_dtype),
                                                  trust_remote_code=recipe.model.trust_remote_code,
                                                  revision=recipe.model.revision,
                                                  **({"device_map": device_map} if device_map else {}))
    from peft import get_peft_model
    set_seed(t.seed)
    model = get_peft_model(model, _lora_config(recipe), **({"autocast_adapter_dtype": False} if is_zero3 else {}))
    checkpointing = _enable_checkpointing(model, recipe, engine) if t.gradient_checkpointing else None
    model_info = model_mod.summary(model)
    expected = adapter_check.expected_keys(model)

    eval_labels = list(eval_ds["_hpctune_label"])
    train_ds = train_ds.remove_columns("_hpctune_label")
    eval_ds = eval_ds.remove_columns("_hpctune_label")
    g = torch.Generator()
    g.manual_seed(t.seed)
    train_dl = DataLoader(train_ds, shuffle=True, collate_fn=default_data_collator,
                          batch_size=t.per_device_train_batch_size, pin_memory=cuda, generator=g)
    eval_dl = DataLoader(eval_ds, collate_fn=default_data_collator, batch_size=t.per_device_eval_batch_size,
                         pin_memory=cuda)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                                  weight_decay=t.weight_decay)
    per_epoch = math.ceil(math.ceil(len(train_ds) / (t.per_device_train_batch_size * world)) / t.gradient_accumulation_steps)
    total = t.max_steps if t.max_steps > 0 else max(1, math.ceil(per_epoch * t.num_train_epochs))
    epochs = math.ceil(total / per_epoch)
    # accelerate's AcceleratedScheduler steps the schedule once per process at every optimizer
    # step (it assumes the batch size grew by the number of processes, scheduler.py): so the
    # schedule counts world x the optimizer steps, or it reaches its end world times too early.
    lr_scheduler = get_scheduler(t.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=int(t.warmup_ratio * total) * world, num_training_steps=total * world)
    model, train_dl, eval_dl, optimizer, lr_scheduler = accelerator.prepare(model, train_dl, eval_dl, optimizer, lr_scheduler)
    batches = _batches(train_dl)

    state = {"global_step": 0, "epoch": 0, "log_history": [], "epoch_loss_sum": 0.0, "epoch_batches": 0,
             "train_epoch_loss": None, "train_ppl": None, "accuracy": None}
    ckpt = resume.resume_point(out)  # rank 0 decides for all
    pending_rng = None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE).read_text())
        rng_file = ckpt / f"hpctune_rng_{accelerator.process_index}.pt"
        pending_rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
    say(f"{'resuming from ' + ckpt.name if ckpt else 'starting'}: seq2seq, world size {world}, "
        f"{'DeepSpeed ZeRO-' + str(zero_stage) if ds_plugin else ('DDP' if world > 1 else 'one process')}"
        f"{' + CPU offload' if ds_plugin and recipe.deepspeed.offload_param_device == 'cpu' else ''}, "
        f"{'GPU' if cuda else 'CPU'}, {total} steps, output {out}")

    stop_at = _stop_at()
    step0 = state["global_step"]
    stopped_reason = None
    save_steps = t.save_steps if t.save_strategy == "steps" else None
    eval_every = t.eval_steps if t.eval_strategy == "steps" and t.eval_steps else None
    train_mem = eval_mem = None
    t0 = time.perf_counter()
    from hpctune.train import attempt, heartbeat  # heartbeats + hang watchdog (#14)
    beats = heartbeat.loop_heartbeat(attempt.current(), state["global_step"], total)

    def evaluate():
        nonlocal eval_mem
        model.eval()
        preds = []
        with MemoryTrace("eval") as tr:
            for batch in eval_dl:
                with torch.no_grad():
                    gen = accelerator.unwrap_model(model).generate(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        max_new_tokens=target_len + 1, synced_gpus=is_zero3, num_beams=1, do_sample=False)
                gen = accelerator.pad_across_processes(gen, dim=1, pad_index=tokenizer.pad_token_id)
                preds += tokenizer.batch_decode(accelerator.gather_for_metrics(gen).cpu().numpy(), skip_special_tokens=True)
        eval_mem = tr.report
        model.train()
        correct = sum(p.strip() == l.strip() for p, l in zip(preds, eval_labels))
        return 100.0 * correct / max(1, len(eval_labels)), preds[:4]

    signals.check_startup("DeepSpeed and optimizer set-up")
    model.train()
    with MemoryTrace("train") as trace:
        epoch = state["epoch"]
        while state["global_step"] < total and stopped_reason is None:
            train_dl.set_epoch(epoch)
            done_in_epoch = (state["global_step"] - epoch * per_epoch) * t.gradient_accumulation_steps
            loader = accelerator.skip_first_batches(train_dl, done_in_epoch) if done_in_epoch > 0 else train_dl
            if done_in_epoch == 0:
                state["epoch_loss_sum"], state["epoch_batches"] = 0.0, 0
            step_loss, micro = 0.0, 0
            it = iter(loader)
            first = next(it, None)  # the iterator's set-up (and its RNG draw) happens here
            if pending_rng is not None:
                torch.set_rng_state(pending_rng)
                pending_rng = None
            import itertools
            for batch in itertools.chain([first] if first is not None else [], it):
                with accelerator.accumulate(model):
                    outputs = model(**batch, use_cache=False)
                    loss = outputs.loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm > 0 and ds_plugin is None:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # DeepSpeed clips itself
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                step_loss += float(accelerator.reduce(loss.detach(), reduction="mean"))
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                beats.beat(step, "step")
                mean = step_loss / micro
                state["epoch_loss_sum"] += step_loss
                state["epoch_batches"] += micro
                step_loss, micro = 0.0, 0
                if step % t.logging_steps == 0 or step == total:
                    state["log_history"].append({"step": step, "epoch": epoch, "loss": mean,
                                                 "learning_rate": lr_scheduler.get_last_lr()[0]})
                    say(f"step {step}/{total}: loss {mean:.4f}")
                    if dist.is_main():  # what `hpctune status` shows (hpctune.run.folder)
                        Output(out).write_progress(step, total, mean, epoch=epoch)
                if eval_every and step % eval_every == 0:
                    acc, _ = evaluate()
                    state["accuracy"] = acc
                    state["log_history"].append({"step": step, "accuracy": acc})
                signals.mark_stepped()
                local = signals.received() is not None or step == stop_at
                if dist.max_int(int(local)):
                    stopped_reason = signals.received() or (f"{signals.STOP_ENV}={stop_at}" if local else "another rank was signalled")
                    break
                if save_steps and step % save_steps == 0 and step < total:
                    _save_checkpoint(accelerator, model, out, step, state, t.save_total_limit)
                if step >= total:
                    break
            if stopped_reason is not None:
                break
            if state["global_step"] - epoch * per_epoch >= per_epoch or state["global_step"] >= total:
                n = max(1, state["epoch_batches"])
                state["train_epoch_loss"] = state["epoch_loss_sum"] / n
                state["train_ppl"] = math.exp(min(50.0, state["train_epoch_loss"]))
                say(f"epoch={epoch}: train_ppl={state['train_ppl']:.4f} train_epoch_loss={state['train_epoch_loss']:.4f}")
                epoch += 1
                state["epoch"] = epoch
                state["epoch_loss_sum"], state["epoch_batches"] = 0.0, 0
                if t.eval_strategy == "epoch" or (state["global_step"] >= total and t.eval_strategy != "no"):
                    acc, sample = evaluate()
                    state["accuracy"] = acc
                    state["log_history"].append({"step": state["global_step"], "epoch": epoch - 1, "accuracy": acc})
                    say(f"accuracy={acc:.1f} (first predictions: {sample})")
                if t.save_strategy == "epoch" and state["global_step"] < total:
                    _save_checkpoint(accelerator, model, out, state["global_step"], state, t.save_total_limit)
    train_mem = trace.report
    seconds = time.perf_counter() - t0
    beats.disarm()

    def build(status: str, extra: dict) -> dict:
        ranks = dist.gather_objects(rank_report(train_mem, eval_mem))
        steps = state["global_step"] - step0
        curve = [[e["step"], e["loss"]] for e in state["log_history"] if "loss" in e]
        return {
            "status": status, "recipe": recipe.name, "task": "seq2seq", "world_size": world,
            "optimizer_steps": state["global_step"], "steps_this_run": steps, "epochs": state["epoch"],
            "train_seconds": round(seconds, 3), "wall_seconds": round(time.time() - wall_start, 3),
            "samples_per_second": round(steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * world / seconds, 3) if seconds > 0 else None,
            "train_loss": curve[-1][1] if curve else None, "train_epoch_loss": state["train_epoch_loss"],
            "train_ppl": state["train_ppl"], "accuracy": state["accuracy"], "eval_rows": len(eval_labels),
            "memory_mb": {"train": train_mem, "eval": eval_mem},
            "cpu_rss_peak_gib": max(r["cpu_rss_peak_gib"] for r in ranks),
            **metrics.gpu_summary(ranks),
            "loss_curve": curve,
            "lr_curve": [[e["step"], e["learning_rate"]] for e in state["log_history"] if "learning_rate" in e],
            "accuracy_curve": [[e["step"], e["accuracy"]] for e in state["log_history"] if "accuracy" in e],
            "ranks": ranks,
            "engine": {"wrapper": type(model).__name__, "optimizer": type(optimizer.optimizer).__name__ if hasattr(optimizer, "optimizer") else type(optimizer).__name__,
                       "inner_optimizer": _inner_optimizer(model), "zero_stage": zero_stage,
                       "zero3_partitioned": any(hasattr(p, "ds_id") for p in model.parameters()),
                       "offload_param": recipe.deepspeed.offload_param_device if ds_plugin else None,
                       "offload_optimizer": recipe.deepspeed.offload_optimizer_device if ds_plugin else None,
                       "synced_gpus": is_zero3, "gradient_checkpointing": checkpointing},
            "model": model_info, **extra,
        }

    if stopped_reason is not None:
        saved = _save_checkpoint(accelerator, model, out, state["global_step"], state, t.save_total_limit)
        if accelerator.is_main_process:
            resume.write_interrupted(out, state["global_step"], stopped_reason, saved)
        data_ = build("interrupted", {"checkpoint": str(saved)})
        if accelerator.is_main_process:
            metrics.write(out, data_)
        say(f"stopped at step {state['global_step']} ({stopped_reason}); checkpoint {saved.name}; start the job again to continue")
        return 0

    _print_memory("train", train_mem)
    if eval_mem is not None:
        _print_memory("eval", eval_mem)
    accelerator.wait_for_everyone()
    _save_adapter(accelerator, model, out)
    accelerator.wait_for_everyone()
    status, error, extra = "completed", None, {}
    if accelerator.is_main_process:
        try:
            extra["adapter"] = adapter_check.verify(out, expected, trained=state["global_step"] > 0 and t.learning_rate > 0)
        except adapter_check.AdapterCheckError as e:
            status, error = "failed", e
            extra["error"] = str(e)
    data_ = build(status, extra)
    if accelerator.is_main_process:
        metrics.write(out, data_)
    if error is not None:
        raise error
    say(f"completed {state['global_step']} steps: train loss {data_['train_loss']}, accuracy {state['accuracy']}; "
        f"adapter and metrics.json in {out}")
    return 0


def rank_report(train_mem: dict | None, eval_mem: dict | None) -> dict:
    """This rank's memory for metrics.json: the reference's MB report of the training and the
    evaluation, and, with a GPU, the peaks per phase in GiB as the SFT path reports them
    (``gpu_peak_gib``: load = model load + DeepSpeed's initialisation, train, eval, overall)."""
    from hpctune.train import memory, metrics
    out = {"rank": dist.rank(), "memory_mb": {"train": train_mem, "eval": eval_mem},
           "cpu_rss_peak_gib": round(metrics._peak_rss_bytes() / metrics.GIB, 4)}
    phases = memory.gpu_phases()
    if phases is not None:
        out.update(metrics.gpu_report(phases))
    return out


def _enable_checkpointing(model, recipe, engine) -> dict:
    """Gradient checkpointing as the SFT trainer does it: on the base model, with the
    engine's use_reentrant (policy), and input gradients on, without which a reentrant
    checkpoint of frozen layers passes no gradient to the LoRA weights inside it."""
    use_reentrant = policy.use_reentrant(recipe, engine)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.enable_input_require_grads()
    base = model.get_base_model()
    active = getattr(base, "is_activation_checkpointing", None)
    if active is None:
        active = base.is_gradient_checkpointing
    if not active:
        raise RuntimeError(f"{type(base).__name__}: gradient checkpointing did not switch on")
    return {"use_reentrant": use_reentrant}


def _inner_optimizer(model):
    opt = getattr(model, "optimizer", None)  # the DeepSpeedEngine's ZeRO optimizer
    if opt is None:
        return None
    inner = getattr(opt, "optimizer", None)
    return f"{type(opt).__name__}/{type(inner).__name__}" if inner is not None else type(opt).__name__


def _stop_at():
    import os
    from hpctune.train import signals
    raw = os.environ.get(signals.STOP_ENV, "").strip()
    return int(raw) if raw else None
