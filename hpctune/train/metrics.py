"""metrics.json: memory per rank, throughput, losses, wall time (written by rank 0).

Memory follows the reference workload's report (PEFT's DeepSpeed guide, in MB): "before"
the training loop, "consumed" (peak minus before) and "peak", for GPU (allocated) and CPU
(resident set). Where CUDA exists, each rank also reports its GPU peak per phase in GiB
(``gpu_peak_gib``: ``load`` = model load + engine initialisation, the real peak of QLoRA;
``train``; ``eval``; ``overall``), measured by ``memory.PhasePeaks`` so that one phase's reset
never hides another's; the top level holds the maximum over ranks of each. The CPU peak is
the process's lifetime peak RSS (getrusage), which covers model loading too.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

from hpctune.run.folder import Output
from hpctune.train import dist, memory

MB = 1024 ** 2
GIB = 1024 ** 3


def _rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:  # psutil missing: current RSS from /proc
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _cuda():
    import torch
    return torch.cuda if torch.cuda.is_available() else None


def make_callback():
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Memory and throughput of this process over the training loop."""

        def __init__(self):
            self.t0 = self.t1 = None
            self.step0 = self.step1 = 0
            self.tokens0 = self.tokens1 = 0
            self.gpu_before = 0
            self.cpu_before = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # after deepspeed.initialize: what came before is the load phase
            phases = memory.gpu_phases()
            if phases:
                phases.enter("train")
                self.gpu_before = phases.before["train"]
            self.cpu_before = _rss_bytes()
            self.t0 = time.perf_counter()
            self.step0 = state.global_step
            self.tokens0 = state.num_input_tokens_seen or 0

        def on_train_end(self, args, state, control, **kwargs):
            phases = memory.gpu_phases()
            if phases:
                phases.exit("train")
            self.t1 = time.perf_counter()
            self.step1 = state.global_step
            self.tokens1 = state.num_input_tokens_seen or 0

        def rank_report(self) -> dict:
            cuda = _cuda()
            peak_rss = _peak_rss_bytes()
            out = {
                "rank": dist.rank(), "host": socket.gethostname(), "pid": os.getpid(),
                "cpu_rss_peak_gib": round(peak_rss / GIB, 4),
                "memory_mb": {"cpu": {"before": round(self.cpu_before / MB), "consumed": round(max(0, peak_rss - self.cpu_before) / MB),
                                      "peak": round(peak_rss / MB)}},
            }
            phases = memory.gpu_phases() if cuda else None
            if phases:
                out.update(gpu_report(phases))
                train = phases.peaks.get("train", 0)
                out["memory_mb"]["gpu"] = {"before": round(self.gpu_before / MB),
                                           "consumed": round(max(0, train - self.gpu_before) / MB), "peak": round(train / MB)}
            return out

    return MetricsCallback()


def gpu_report(phases) -> dict:
    """This rank's GPU peaks in GiB: per phase, the overall peak allocated and reserved."""
    rep = phases.report()
    return {"gpu_peak_gib": {k: round(v / GIB, 4) for k, v in rep.items()},
            "gpu_peak_allocated_gib": round(rep["overall"] / GIB, 4),
            "gpu_peak_reserved_gib": round(max(phases.reserved.values(), default=0) / GIB, 4)}


def gpu_summary(ranks: list[dict]) -> dict:
    """The maximum over ranks of each GPU figure (None without CUDA)."""
    def worst(get):
        vals = [get(r) for r in ranks if r.get("gpu_peak_gib") is not None]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None
    out = {"gpu_peak_allocated_gib": worst(lambda r: r.get("gpu_peak_allocated_gib")),
           "gpu_peak_reserved_gib": worst(lambda r: r.get("gpu_peak_reserved_gib"))}
    for phase in ("load", "train", "eval"):
        out[f"gpu_{phase}_peak_gib"] = worst(lambda r, p=phase: r["gpu_peak_gib"].get(p))
    return out


def engine(trainer) -> dict:
    """What actually trained: the wrapper, the optimizer, whether parameters are ZeRO-3 shards."""
    wrapped = trainer.model_wrapped
    opt = getattr(wrapped, "optimizer", None) if type(wrapped).__name__ == "DeepSpeedEngine" else trainer.optimizer
    inner = getattr(opt, "optimizer", None)
    return {"wrapper": type(wrapped).__name__, "optimizer": type(opt).__name__ if opt is not None else None,
            "inner_optimizer": type(inner).__name__ if inner is not None else None,
            "zero3_partitioned": any(hasattr(p, "ds_id") for p in trainer.model.parameters())}


def last_logged(log_history: list[dict], key: str):
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None


def build(recipe, trainer, cb, *, status: str, wall_start: float, world_size: int, eval_loss, extra: dict) -> dict:
    """Gather every rank's figures (a collective: call on all ranks); the dict on every rank."""
    ranks = dist.gather_objects(cb.rank_report())
    t = recipe.training
    seconds = (cb.t1 or time.perf_counter()) - (cb.t0 or time.perf_counter())
    steps = cb.step1 - cb.step0
    samples = steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size
    tokens = cb.tokens1 - cb.tokens0
    state = trainer.state
    return {
        "status": status,
        "recipe": recipe.name,
        "world_size": world_size,
        "optimizer_steps": state.global_step,
        "steps_this_run": steps,
        "train_seconds": round(seconds, 3),
        "wall_seconds": round(time.time() - wall_start, 3),
        "samples_per_second": round(samples / seconds, 3) if seconds > 0 else None,
        "tokens_per_second": round(tokens / seconds, 3) if seconds > 0 and tokens else None,
        "tokens_seen": state.num_input_tokens_seen,
        "train_loss": last_logged(state.log_history, "loss") if last_logged(state.log_history, "loss") is not None
        else last_logged(state.log_history, "train_loss"),
        "train_loss_mean": last_logged(state.log_history, "train_loss"),
        "eval_loss": eval_loss,
        "cpu_rss_peak_gib": max(r["cpu_rss_peak_gib"] for r in ranks),
        **gpu_summary(ranks),
        "loss_curve": [[e["step"], e["loss"]] for e in state.log_history if "loss" in e],
        "ranks": ranks,
        **extra,
    }


def write(output_dir: Path, data: dict) -> Path:
    return Output(output_dir).write_metrics(data)


def read(output_dir: Path) -> dict | None:
    return Output(output_dir).metrics()


def make_progress_callback():
    """Rank 0 rewrites OUTPUT/progress.json at every logging step (step, max steps, loss):
    what `hpctune status` and `submit --wait` show, without reading any log."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.loss = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return control
            logs = logs or {}
            if "loss" in logs:
                self.loss = logs["loss"]
            extra = {k: logs[k] for k in ("eval_loss", "learning_rate") if k in logs}
            Output(args.output_dir).write_progress(state.global_step, state.max_steps, self.loss,
                                                   epoch=state.epoch, **extra)
            return control

    return ProgressCallback()
