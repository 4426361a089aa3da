"""Rules on a recipe alone: pure Python, no profile, no files, no clock.

The login node runs them on the resolved recipe (``hpctune check/render/submit/plan/sweep``
through ``hpctune.prepare``) and the compute node's preflight runs the very same functions
on the bundle's recipe.yaml before anything heavy is imported. A condition therefore lives
here once; a rule that needs the cluster, the filesystem or installed packages is not a
recipe rule (see cluster.py and train/preflight.py).
"""

from __future__ import annotations

import re
from typing import Iterable

from hpctune import policy
from hpctune.rules.book import Finding, rule

# Module names by family, for the name-based LoRA target check (the node also checks the
# real module tree on a meta-device copy of the model).
LLAMA_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
FALCON_NAMES = {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}


def _error(rule_id: str, rec, field: str, message: str, fix: str) -> Finding:
    return Finding(rule_id, "error", rec.source, field, message, fix)


# --- DeepSpeed ---------------------------------------------------------------------

@rule("offload-stage", "optimizer offload needs ZeRO >= 2, parameter offload needs ZeRO-3", scope="recipe")
def offload_stage(rec) -> Iterable[Finding]:
    ds = rec.deepspeed
    if ds.offload_param_device != "none" and ds.zero_stage != 3:
        yield _error("offload-stage", rec, "deepspeed.offload_param_device",
                     f"parameter offload to {ds.offload_param_device!r} works only with zero_stage 3 (got {ds.zero_stage})",
                     "set deepspeed.zero_stage=3 or deepspeed.offload_param_device=none")
    if ds.offload_optimizer_device != "none" and ds.zero_stage < 2:
        yield _error("offload-stage", rec, "deepspeed.offload_optimizer_device",
                     f"optimizer offload to {ds.offload_optimizer_device!r} needs zero_stage 2 or 3 (got {ds.zero_stage})",
                     "set deepspeed.zero_stage=2 or 3, or offload_optimizer_device=none")


@rule("save-16bit", "ZeRO-3 without zero3_save_16bit_model saves empty adapters", scope="recipe", pains=(14,))
def save_16bit(rec) -> Iterable[Finding]:
    ds = rec.deepspeed
    if ds.zero_stage == 3 and not ds.zero3_save_16bit_model:
        yield _error("save-16bit", rec, "deepspeed.zero3_save_16bit_model",
                     "ZeRO-3 without gathering 16-bit weights at save writes an empty adapter",
                     "set deepspeed.zero3_save_16bit_model=true")


# --- QLoRA ---------------------------------------------------------------------------

@rule("qlora-storage-dtype", "4-bit QLoRA: the quant storage dtype must equal the model dtype", scope="recipe", pains=(10,))
def qlora_storage_dtype(rec) -> Iterable[Finding]:
    # Strictly only ZeRO-3 needs one dtype (it flattens every parameter together), but the
    # rule holds at every stage: `layout.nodes: auto` or a re-render may move the same
    # recipe to ZeRO-3, and mixed dtypes with 4-bit weights were never verified elsewhere.
    m, dtype = rec.method, rec.model.torch_dtype
    if m.type == "qlora" and m.quant_bits == 4 and dtype not in ("auto", m.bnb_4bit_quant_storage_dtype):
        yield _error("qlora-storage-dtype", rec, "method.bnb_4bit_quant_storage_dtype",
                     f"is {m.bnb_4bit_quant_storage_dtype!r} but the model is loaded as {dtype!r}: "
                     "the packed 4-bit weights and the rest of the model must share one dtype (ZeRO-3 cannot shard mixed dtypes)",
                     f"set model.torch_dtype=auto (it then follows the storage dtype), or bnb_4bit_quant_storage_dtype={dtype}")


@rule("qlora-storage-precision", "QLoRA under DeepSpeed: the 4-bit storage dtype must be the precision's dtype "
      "(DeepSpeed casts the packed weights at every ZeRO stage)", scope="recipe", pains=(10,))
def qlora_storage_precision(rec) -> Iterable[Finding]:
    problem = policy.storage_dtype_problem(rec, deepspeed=rec.deepspeed.zero_stage > 0)
    if problem:
        want = policy.HALF_DTYPE[rec.precision]
        yield _error("qlora-storage-precision", rec, "method.bnb_4bit_quant_storage_dtype", problem,
                     f"set method.bnb_4bit_quant_storage_dtype={want} (model.torch_dtype auto follows it)")


@rule("zero3-init-flag", "zero3_init_flag false has no effect with transformers 5 (SFT and seq2seq: "
      "every ZeRO-3 model is built sharded; 4-bit models never are)", scope="recipe", pains=(10, 11))
def zero3_init_flag(rec) -> Iterable[Finding]:
    problem = policy.zero3_init_flag_problem(rec)
    if problem:
        yield _error("zero3-init-flag", rec, "deepspeed.zero3_init_flag", problem, "set deepspeed.zero3_init_flag=true")


@rule("quant8-zero3", "8-bit QLoRA weights cannot be sharded by ZeRO-3", scope="recipe", pains=(10,))
def quant8_zero3(rec) -> Iterable[Finding]:
    if rec.method.type == "qlora" and rec.method.quant_bits == 8 and rec.deepspeed.zero_stage == 3:
        yield _error("quant8-zero3", rec, "method.quant_bits",
                     "8-bit weights cannot be sharded by ZeRO-3",
                     "use quant_bits 4 (with bnb_4bit_quant_storage_dtype equal to the model dtype) or zero_stage 2")


@rule("qlora-offload", "CPU offload with QLoRA raises GPU memory", scope="recipe", pains=(16,))
def qlora_offload(rec) -> Iterable[Finding]:
    ds = rec.deepspeed
    if rec.method.type == "qlora" and ds.offload_param_device != "none" and ds.zero_stage == 3:
        yield Finding("qlora-offload", "warning", rec.source, "deepspeed.offload_param_device",
                      "ZeRO-3 + QLoRA with parameter offload uses MORE GPU memory than without",
                      "set deepspeed.offload_param_device=none")


@rule("seq2seq-lora-only", "task seq2seq trains LoRA only (no QLoRA, no full fine-tuning yet)", scope="recipe")
def seq2seq_lora_only(rec) -> Iterable[Finding]:
    if rec.task == "seq2seq" and rec.method.type != "lora":
        yield _error("seq2seq-lora-only", rec, "method.type",
                     f"{rec.method.type} is not supported with task seq2seq yet (lora only)",
                     "set method.type=lora, or task causal_lm")


# --- model and precision ---------------------------------------------------------------

@rule("lora-targets", "LoRA target modules must exist in the model (Falcon names differ from Llama's)",
      scope="recipe", pains=(20,))
def lora_targets(rec) -> Iterable[Finding]:
    targets = rec.method.lora_target_modules
    if rec.method.type == "full" or isinstance(targets, str):
        return
    name = rec.model.model_name_or_path.lower()
    if "falcon" in name and set(targets) & LLAMA_NAMES:
        yield _error("lora-targets", rec, "method.lora_target_modules",
                     f"{sorted(set(targets) & LLAMA_NAMES)} do not exist in Falcon models",
                     "use all-linear or Falcon's names: query_key_value, dense, dense_h_to_4h, dense_4h_to_h")
    if any(k in name for k in ("llama", "mistral", "qwen")) and set(targets) & FALCON_NAMES:
        yield _error("lora-targets", rec, "method.lora_target_modules",
                     f"{sorted(set(targets) & FALCON_NAMES)} are Falcon module names, not in {rec.model.model_name_or_path}",
                     "use all-linear or q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")


@rule("precision-dtype", "fp32 training with a half-precision model, or fp16 with a bf16 model", scope="recipe")
def precision_dtype(rec) -> Iterable[Finding]:
    if rec.method.type != "qlora" and rec.model.torch_dtype != "auto":
        expected = policy.HALF_DTYPE.get(rec.precision)
        if expected and rec.model.torch_dtype not in (expected, "float32"):
            yield _error("precision-dtype", rec, "model.torch_dtype",
                         f"{rec.model.torch_dtype} weights with precision {rec.precision}: DeepSpeed refuses mixed half types",
                         f"set model.torch_dtype={expected} or auto")


@rule("full-fp16-weights", "full fine-tuning with fp16 and no DeepSpeed needs fp32 master weights", scope="recipe")
def full_fp16_weights(rec) -> Iterable[Finding]:
    problem = policy.full_fp16_problem(rec, deepspeed=rec.deepspeed.zero_stage > 0)
    if problem:
        yield _error("full-fp16-weights", rec, "model.torch_dtype", problem,
                     "set model.torch_dtype=auto (float32 weights, fp16 autocast), or deepspeed.zero_stage 1-3")


# --- training ----------------------------------------------------------------------------

@rule("eval-split", "evaluation needs an eval split", scope="recipe")
def eval_split(rec) -> Iterable[Finding]:
    tr = rec.training
    split = [s for s in rec.data.splits.split(",") if s.strip()]
    if tr.eval_strategy != "no" and len(split) < 2:
        yield _error("eval-split", rec, "training.eval_strategy",
                     f"evaluation is on ({tr.eval_strategy!r}) but data.splits names no eval split",
                     "add an eval split (data.splits=train,test) or set training.eval_strategy=no")


@rule("ddp-timeout", "huge ZeRO-3 saves outlast the default 30 min process-group timeout", scope="recipe", pains=(8,))
def ddp_timeout(rec) -> Iterable[Finding]:
    big = re.search(r"(\d+)b", rec.model.model_name_or_path.lower())
    if rec.deepspeed.zero_stage == 3 and big and int(big.group(1)) >= 65 and rec.training.ddp_timeout < 3600:
        yield Finding("ddp-timeout", "warning", rec.source, "training.ddp_timeout",
                      f"{rec.training.ddp_timeout} s may be too short to gather a {big.group(1)}B model's weights at save",
                      "set training.ddp_timeout=7200")


@rule("push-to-hub", "push_to_hub needs hub_model_id", scope="recipe")
def push_to_hub(rec) -> Iterable[Finding]:
    tr = rec.training
    if tr.push_to_hub and not tr.hub_model_id:
        yield _error("push-to-hub", rec, "training.hub_model_id",
                     "push_to_hub is on but no hub_model_id is set", "set training.hub_model_id=ORG/NAME")
