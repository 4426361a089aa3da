"""Inputs shared by several test files: one breaking input per rule of the rule book."""

from __future__ import annotations


def _ifname_off(p):
    p["network"]["socket_ifname"] = None


def _c10d(p):
    p["rendezvous"] = "c10d"


def _short_warning(p):
    p["preemption"]["signal_seconds"] = 120  # the old example: less than one Falcon step


def _runs_in_tmp(p):
    p["runs_dir"] = "/tmp/hpctune-runs"


def _offline_empty_cache(p):
    p["cache"] = {"hf_home": "/nonexistent/hpctune-test/hf"}
    p["network"]["offline"] = True


def _pyxis_without_the_venv(p):
    p["software"]["container"] = {"image": "docker://nvcr.io#nvidia/pytorch:24.12-py3", "runtime": "pyxis",
                                  "mounts": ["/fsx:/fsx"]}  # the venv in $HOME is not mounted


def _pyxis_with_modules(p):
    p["software"] = {"modules": ["CUDA/12.4"], "setup": [],
                     "container": {"image": "docker://nvcr.io#nvidia/pytorch:24.12-py3", "runtime": "pyxis"}}


def _renamed(p):
    p["name"] = "another-name"


def _own_copy(p):
    """A user's copy of a shipped example (written to a file of its own): never verified."""


# A T4 layout that passes every rule; the T4 triggers add one breaking override to it.
T4_BASE = ["layout.gpus_per_node=4", "layout.time=1:00:00", "precision=fp16", "model.attn_implementation=sdpa"]
BASE = {"example-t4": T4_BASE}

# rule id -> (cluster, recipe, overrides, profile edit, field named in the finding)
TRIGGERS = {
    "offload-stage": ("example-h100", "llama2-70b-lora-zero3", ["deepspeed.zero_stage=2", "deepspeed.offload_param_device=cpu"], None, "deepspeed.offload_param_device"),
    "nvme-path": ("example-a100-40g", "llama2-70b-qlora-zero3", ["deepspeed.offload_optimizer_device=nvme"], None, "deepspeed.nvme_path"),
    "save-16bit": ("example-h100", "llama2-70b-lora-zero3", ["deepspeed.zero3_save_16bit_model=false"], None, "deepspeed.zero3_save_16bit_model"),
    "qlora-storage-dtype": ("example-a100-40g", "llama2-70b-qlora-zero3", ["model.torch_dtype=float16"], None, "method.bnb_4bit_quant_storage_dtype"),
    "quant8-zero3": ("example-a100-40g", "llama2-70b-qlora-zero3", ["method.quant_bits=8"], None, "method.quant_bits"),
    "seq2seq-lora-only": ("example-a100-40g", "bart-large-lora-zero3-offload", ["method.type=full"], None, "method.type"),
    "qlora-storage-precision": ("example-a100-40g", "llama2-70b-qlora-zero3", ["precision=fp16"], None, "method.bnb_4bit_quant_storage_dtype"),
    "zero3-init-flag": ("example-h100", "llama2-70b-lora-zero3", ["deepspeed.zero3_init_flag=false"], None, "deepspeed.zero3_init_flag"),
    "full-fp16-weights": ("example-h100", "llama2-70b-lora-zero3", ["method.type=full", "precision=fp16", "deepspeed.zero_stage=0", "model.torch_dtype=float16"], None, "model.torch_dtype"),
    "use-reentrant": ("example-h100", "llama2-70b-lora-zero3", ["training.use_reentrant=false"], None, "training.use_reentrant"),
    "max-seq-len-positions": ("example-a100-40g", "bart-large-lora-zero3-offload", ["data.max_seq_len=2048"], None, "data.max_seq_len"),
    "qlora-offload": ("example-a100-40g", "llama2-70b-qlora-zero3", ["deepspeed.offload_param_device=cpu", "deepspeed.offload_optimizer_device=cpu"], None, "deepspeed.offload_param_device"),
    "gpu-bf16": ("example-t4", "llama2-70b-lora-zero3", T4_BASE + ["precision=bf16"], None, "precision"),
    "gpu-flash-attn": ("example-t4", "llama2-70b-lora-zero3", T4_BASE + ["model.attn_implementation=flash_attention_2"], None, "model.attn_implementation"),
    "lora-targets": ("example-a100-80g", "falcon-180b-lora-zero3", ["method.lora_target_modules=[q_proj, k_proj]"], None, "method.lora_target_modules"),
    "local-paths": ("example-h100", "llama2-70b-lora-zero3", ["model.model_name_or_path=/no/such/model"], None, "model.model_name_or_path"),
    "precision-dtype": ("example-h100", "llama2-70b-lora-zero3", ["model.torch_dtype=float16"], None, "model.torch_dtype"),
    "eval-split": ("example-h100", "llama2-70b-lora-zero3", ["data.splits=train"], None, "training.eval_strategy"),
    "ddp-timeout": ("example-h100", "llama2-70b-lora-zero3", ["training.ddp_timeout=1800"], None, "training.ddp_timeout"),
    "push-to-hub": ("example-h100", "llama2-70b-lora-zero3", ["training.push_to_hub=true"], None, "training.hub_model_id"),
    "multinode-network": ("example-a100-80g", "falcon-180b-lora-zero3", [], _ifname_off, "network.socket_ifname"),
    "c10d-timeout": ("example-a100-80g", "falcon-180b-lora-zero3", [], _c10d, "rendezvous"),
    "memory-fits": ("example-h100", "llama2-70b-lora-zero3", ["layout.gpus_per_node=2", "deepspeed.zero_stage=2"], None, "layout"),
    "profile-name": ("example-h100", "llama2-70b-lora-zero3", [], _renamed, "name"),
    "profile-verified": ("example-h100", "llama2-70b-lora-zero3", [], _own_copy, "verified"),
    "signal-lead": ("example-a100-80g", "falcon-180b-lora-zero3", [], _short_warning, "preemption.signal_seconds"),
    "save-cadence": ("example-h100", "llama2-70b-lora-zero3", ["training.save_steps=100"], None, "training.save_steps"),
    "run-folder-shared": ("example-h100", "llama2-70b-lora-zero3", [], _runs_in_tmp, "runs_dir"),
    "container-mounts": ("example-h100", "llama2-70b-lora-zero3", [], _pyxis_without_the_venv, "software.setup"),
    "container-modules": ("example-h100", "llama2-70b-lora-zero3", [], _pyxis_with_modules, "software.modules"),
    "offline-cache": ("example-h100", "llama2-70b-lora-zero3", [], _offline_empty_cache, "model.model_name_or_path"),
    "resume-checkpoints": ("example-h100", "llama2-70b-lora-zero3", ["training.save_strategy=no"], None, "training.save_strategy"),
}
