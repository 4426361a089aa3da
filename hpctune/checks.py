"""Named preflight rules: what goes wrong on real clusters, caught before submission.

Each rule has an id, a one-line summary and a function from a resolved Job to findings.
A finding names the file and field at fault and says how to fix it. ``error`` findings stop
``render`` and ``submit`` (exit 2); ``warning`` findings are printed. The ids map to the
numbered failures in docs/user-pains (see ``hpctune check --list``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

from hpctune.errors import ConfigError, ConfigErrors

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    source: str
    field: str
    message: str
    fix: str = ""

    def as_error(self) -> ConfigError:
        text = self.message + (f"; fix: {self.fix}" if self.fix else "")
        return ConfigError(self.source, self.field, text, rule=self.rule)


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str
    pains: tuple[int, ...]
    fn: Callable
    only_if_clean: bool = False  # run only when no other rule found an error


RULES: list[Rule] = []


def rule(rule_id: str, summary: str, pains: tuple[int, ...] = (), only_if_clean: bool = False):
    """Register a rule function ``fn(job) -> Iterable[Finding]``."""
    def register(fn):
        RULES.append(Rule(rule_id, summary, pains, fn, only_if_clean))
        return fn
    return register


def run(job) -> list[Finding]:
    """Every finding of every rule, errors first."""
    out: list[Finding] = []
    for r in RULES:
        if not r.only_if_clean:
            out.extend(r.fn(job) or ())
    if not any(f.severity == "error" for f in out):
        for r in RULES:
            if r.only_if_clean:
                out.extend(r.fn(job) or ())
    return sorted(out, key=lambda f: f.severity != "error")


def raise_errors(job) -> list[Finding]:
    """Raise ConfigErrors for error findings; return the warnings."""
    findings = run(job)
    errors = [f.as_error() for f in findings if f.severity == "error"]
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return findings


def _r(job) -> str:
    return job.recipe.source


def _p(job) -> str:
    return job.profile.source


# --- DeepSpeed ---------------------------------------------------------------------

@rule("offload-stage", "optimizer offload needs ZeRO >= 2, parameter offload needs ZeRO-3")
def _offload_stage(job) -> Iterable[Finding]:
    ds = job.recipe.deepspeed
    if ds.offload_param_device != "none" and ds.zero_stage != 3:
        yield Finding("offload-stage", "error", _r(job), "deepspeed.offload_param_device",
                      f"parameter offload to {ds.offload_param_device!r} works only with zero_stage 3 (got {ds.zero_stage})",
                      "set deepspeed.zero_stage=3 or deepspeed.offload_param_device=none")
    if ds.offload_optimizer_device != "none" and ds.zero_stage < 2:
        yield Finding("offload-stage", "error", _r(job), "deepspeed.offload_optimizer_device",
                      f"optimizer offload to {ds.offload_optimizer_device!r} needs zero_stage 2 or 3 (got {ds.zero_stage})",
                      "set deepspeed.zero_stage=2 or 3, or offload_optimizer_device=none")


@rule("nvme-path", "NVMe offload needs a folder on a node-local disk")
def _nvme_path(job) -> Iterable[Finding]:
    ds = job.recipe.deepspeed
    if "nvme" in (ds.offload_param_device, ds.offload_optimizer_device) and not job.nvme_path:
        yield Finding("nvme-path", "error", _r(job), "deepspeed.nvme_path",
                      "NVMe offload is on but no folder is known",
                      "set deepspeed.nvme_path, or node.local_scratch in the cluster profile")


@rule("save-16bit", "ZeRO-3 without zero3_save_16bit_model saves empty adapters", pains=(14,))
def _save_16bit(job) -> Iterable[Finding]:
    ds = job.recipe.deepspeed
    if ds.zero_stage == 3 and not ds.zero3_save_16bit_model:
        yield Finding("save-16bit", "error", _r(job), "deepspeed.zero3_save_16bit_model",
                      "ZeRO-3 without gathering 16-bit weights at save writes an empty adapter",
                      "set deepspeed.zero3_save_16bit_model=true")


# --- QLoRA ---------------------------------------------------------------------------

@rule("qlora-storage-dtype", "QLoRA + ZeRO-3: 4-bit storage dtype must equal the model dtype", pains=(10,))
def _qlora_dtype(job) -> Iterable[Finding]:
    rec = job.recipe
    if rec.method.type == "qlora" and rec.method.quant_bits == 4 and rec.deepspeed.zero_stage == 3:
        storage = rec.method.bnb_4bit_quant_storage_dtype
        if rec.model_dtype != storage:
            yield Finding("qlora-storage-dtype", "error", _r(job), "method.bnb_4bit_quant_storage_dtype",
                          f"is {storage!r} but the model is loaded as {rec.model_dtype!r}: ZeRO-3 cannot shard mixed dtypes",
                          f"set model.torch_dtype={storage} (or auto), or bnb_4bit_quant_storage_dtype={rec.model_dtype}")


@rule("qlora-zero3-init", "QLoRA + ZeRO-3 needs zero3_init_flag", pains=(10, 11))
def _qlora_init(job) -> Iterable[Finding]:
    rec = job.recipe
    if rec.method.type == "qlora" and rec.deepspeed.zero_stage == 3 and not rec.deepspeed.zero3_init_flag:
        yield Finding("qlora-zero3-init", "error", _r(job), "deepspeed.zero3_init_flag",
                      "QLoRA under ZeRO-3 needs zero3_init_flag: true", "set deepspeed.zero3_init_flag=true")


@rule("qlora-offload", "CPU offload with QLoRA raises GPU memory", pains=(16,))
def _qlora_offload(job) -> Iterable[Finding]:
    rec = job.recipe
    if rec.method.type == "qlora" and rec.deepspeed.offload_param_device != "none" and rec.deepspeed.zero_stage == 3:
        yield Finding("qlora-offload", "warning", _r(job), "deepspeed.offload_param_device",
                      "ZeRO-3 + QLoRA with parameter offload uses MORE GPU memory than without",
                      "set deepspeed.offload_param_device=none")


# --- hardware ------------------------------------------------------------------------

@rule("gpu-bf16", "T4 and V100 have no bf16", pains=(23,))
def _bf16(job) -> Iterable[Finding]:
    prof, rec = job.profile, job.recipe
    if prof.bf16:
        return
    model = prof.node.gpu_model
    if rec.precision == "bf16":
        yield Finding("gpu-bf16", "error", _r(job), "precision",
                      f"bf16 is not supported by {model} GPUs (cluster {prof.name!r})", "set precision=fp16")
    if rec.method.type == "qlora":
        for fld in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage_dtype"):
            if getattr(rec.method, fld) == "bfloat16":
                yield Finding("gpu-bf16", "error", _r(job), f"method.{fld}",
                              f"bfloat16 is not supported by {model} GPUs", f"set method.{fld}=float16")
    if rec.model.torch_dtype == "bfloat16":
        yield Finding("gpu-bf16", "error", _r(job), "model.torch_dtype",
                      f"bfloat16 is not supported by {model} GPUs", "set model.torch_dtype=float16 or auto")


@rule("gpu-flash-attn", "FlashAttention-2 needs Ampere or newer", pains=(23,))
def _flash(job) -> Iterable[Finding]:
    prof, rec = job.profile, job.recipe
    if rec.model.attn_implementation == "flash_attention_2" and not prof.flash_attention_2:
        what = f"{prof.node.gpu_model} GPUs" if prof.node.gpus_per_node else "CPU-only nodes"
        yield Finding("gpu-flash-attn", "error", _r(job), "model.attn_implementation",
                      f"flash_attention_2 is not available on {what} (cluster {prof.name!r})",
                      "set model.attn_implementation=sdpa")


# --- models --------------------------------------------------------------------------

_LLAMA_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
_FALCON_NAMES = {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}


@rule("lora-targets", "LoRA target modules must exist in the model (Falcon names differ from Llama's)", pains=(20,))
def _targets(job) -> Iterable[Finding]:
    rec = job.recipe
    targets = rec.method.lora_target_modules
    if rec.method.type == "full" or isinstance(targets, str):
        return
    name = rec.model.model_name_or_path.lower()
    if "falcon" in name and set(targets) & _LLAMA_NAMES:
        yield Finding("lora-targets", "error", _r(job), "method.lora_target_modules",
                      f"{sorted(set(targets) & _LLAMA_NAMES)} do not exist in Falcon models",
                      "use all-linear or Falcon's names: query_key_value, dense, dense_h_to_4h, dense_4h_to_h")
    if any(k in name for k in ("llama", "mistral", "qwen")) and set(targets) & _FALCON_NAMES:
        yield Finding("lora-targets", "error", _r(job), "method.lora_target_modules",
                      f"{sorted(set(targets) & _FALCON_NAMES)} are Falcon module names, not in {rec.model.model_name_or_path}",
                      "use all-linear or q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or bool(re.search(r"\.(jsonl?|parquet|csv|arrow)$", value))


@rule("local-paths", "a local model or dataset path must exist")
def _paths(job) -> Iterable[Finding]:
    rec = job.recipe
    for fld, value in (("model.model_name_or_path", rec.model.model_name_or_path),
                       ("data.dataset_name", rec.data.dataset_name)):
        if _looks_local(value) and not Path(value).expanduser().exists():
            yield Finding("local-paths", "error", _r(job), fld, f"{value!r} does not exist",
                          "give an existing path (relative paths are relative to the recipe file) or a hub name")


@rule("precision-dtype", "fp32 training with a half-precision model, or fp16 with a bf16 model")
def _precision_dtype(job) -> Iterable[Finding]:
    rec = job.recipe
    if rec.method.type != "qlora" and rec.model.torch_dtype != "auto":
        expected = {"bf16": "bfloat16", "fp16": "float16", "no": None}[rec.precision]
        if expected and rec.model.torch_dtype not in (expected, "float32"):
            yield Finding("precision-dtype", "error", _r(job), "model.torch_dtype",
                          f"{rec.model.torch_dtype} weights with precision {rec.precision}: DeepSpeed refuses mixed half types",
                          f"set model.torch_dtype={expected} or auto")


@rule("eval-split", "evaluation needs an eval split")
def _eval_steps(job) -> Iterable[Finding]:
    tr = job.recipe.training
    split = [s for s in job.recipe.data.splits.split(",") if s.strip()]
    if tr.eval_strategy != "no" and len(split) < 2:
        yield Finding("eval-split", "error", _r(job), "training.eval_strategy",
                      f"evaluation is on ({tr.eval_strategy!r}) but data.splits names no eval split",
                      "add an eval split (data.splits=train,test) or set training.eval_strategy=no")


@rule("ddp-timeout", "huge ZeRO-3 saves outlast the default 30 min process-group timeout", pains=(8,))
def _timeout(job) -> Iterable[Finding]:
    rec = job.recipe
    name = rec.model.model_name_or_path.lower()
    big = re.search(r"(\d+)b", name)
    if rec.deepspeed.zero_stage == 3 and big and int(big.group(1)) >= 65 and rec.training.ddp_timeout < 3600:
        yield Finding("ddp-timeout", "warning", _r(job), "training.ddp_timeout",
                      f"{rec.training.ddp_timeout} s may be too short to gather a {big.group(1)}B model's weights at save",
                      "set training.ddp_timeout=7200")


@rule("push-to-hub", "push_to_hub needs hub_model_id")
def _push(job) -> Iterable[Finding]:
    tr = job.recipe.training
    if tr.push_to_hub and not tr.hub_model_id:
        yield Finding("push-to-hub", "error", _r(job), "training.hub_model_id",
                      "push_to_hub is on but no hub_model_id is set", "set training.hub_model_id=ORG/NAME")


# --- multi-node and preemption ------------------------------------------------------

@rule("multinode-network", "multi-node GPU jobs need the NCCL interface named", pains=(3, 7))
def _network(job) -> Iterable[Finding]:
    prof = job.profile
    if job.nodes > 1 and prof.node.gpus_per_node and not prof.network.socket_ifname:
        yield Finding("multinode-network", "warning", _p(job), "network.socket_ifname",
                      "not set: NCCL may pick a wrong interface and hang at the first collective",
                      "set network.socket_ifname (e.g. ib0) in the cluster profile")


@rule("c10d-timeout", "c10d rendezvous joins time out on slow starts", pains=(4,))
def _c10d(job) -> Iterable[Finding]:
    if job.nodes > 1 and job.profile.rendezvous == "c10d":
        yield Finding("c10d-timeout", "warning", _p(job), "rendezvous",
                      "c10d joins can time out when nodes start minutes apart; static rendezvous does not",
                      "use rendezvous: static unless the site needs c10d")


@rule("resume-checkpoints", "a requeued job can only resume from checkpoints it saved", pains=(18,))
def _resume(job) -> Iterable[Finding]:
    tr = job.recipe.training
    mode = job.profile.preemption.mode
    if mode == "none" or job.profile.preemption.max_attempts < 2:
        return
    if tr.save_strategy == "no":
        yield Finding("resume-checkpoints", "warning", _r(job), "training.save_strategy",
                      f"no checkpoints: after a time limit or preemption ({mode}) the job restarts from step 0",
                      "set training.save_strategy=steps with training.save_steps")
    elif tr.save_strategy == "epoch" and tr.num_train_epochs <= 1 and tr.max_steps < 0:
        yield Finding("resume-checkpoints", "warning", _r(job), "training.save_strategy",
                      "checkpoints only at the end of the single epoch: a job stopped before it restarts from step 0",
                      "set training.save_strategy=steps with training.save_steps")


# --- memory ----------------------------------------------------------------------------

@rule("memory-fits", "the memory plan fits the profile's GPUs and CPU RAM (hpctune plan)", pains=(13, 16),
      only_if_clean=True)
def _memory(job) -> Iterable[Finding]:
    from hpctune.plan.job_plan import findings  # pure Python; imported only when checking
    return findings(job)
