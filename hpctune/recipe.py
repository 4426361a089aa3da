"""Recipes: one YAML file per experiment (model, data, method, DeepSpeed, training, layout).

Field names follow the flags of PEFT's ``examples/sft/train.py`` (``lora_r``,
``use_nested_quant``, ``bnb_4bit_quant_storage_dtype``, ``max_seq_len``, ...) so that its
users recognise them. Each value lives here once; the renderer writes it into every file
that needs it (e.g. ``training.gradient_accumulation_steps`` goes into both the accelerate
config and the training arguments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpctune import schema, yamlfile
from hpctune.errors import ConfigError
from hpctune.policy import HALF_DTYPE
from hpctune.profile import SLURM_NAME, SLURM_NAME_DOC
from hpctune.schema import doc

DType = Literal["bfloat16", "float16", "float32"]
Offload = Literal["none", "cpu", "nvme"]

# Keys people paste from blog posts that must never live in a recipe file.
_SECRET_KEYS = {"hf_token", "hub_token", "token", "use_auth_token", "huggingface_token", "hugging_face_hub_token",
                "wandb_api_key", "api_key", "password", "secret"}
# A run id is NAME-YYYYmmdd-HHMMSS-xxxx: a folder name well under the 255-byte limit.
NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,63}"
NAME_DOC = "letters, digits and _ . + - only, not starting with '-', at most 64"


@dataclass(kw_only=True)
class ModelSection:
    model_name_or_path: str = field(metadata=doc("hub name or local folder of the base model", path=True))
    trust_remote_code: bool = field(default=False, metadata=doc("allow the model's own code from the hub"))
    attn_implementation: Literal["flash_attention_2", "sdpa", "eager"] = field(default="sdpa", metadata=doc("attention kernel (flash_attention_2 needs Ampere or newer)"))
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata=doc("dtype the base model is loaded in; auto: from precision (QLoRA: the quant storage dtype)"))
    revision: str | None = field(default=None, metadata=doc("hub revision (branch, tag or commit)", max_len=256))


@dataclass(kw_only=True)
class DataSection:
    dataset_name: str = field(metadata=doc("hub dataset or local path (jsonl, json, parquet, csv, or a save_to_disk folder)", path=True))
    dataset_config: str | None = field(default=None, metadata=doc("hub dataset configuration (subset), e.g. twitter_complaints of ought/raft; a local folder: its subfolder of that name", pattern=r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", pattern_doc="letters, digits and _ . - only, not starting with . or -"))
    dataset_revision: str | None = field(default=None, metadata=doc("hub dataset revision (branch, tag or commit)", pattern=r"[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,255}", pattern_doc="letters, digits and _ . - / only, not starting with . - or /"))
    dataset_text_field: str = field(default="content", metadata=doc("column holding the text (or the input text for seq2seq)"))
    dataset_messages_field: str = field(default="messages", metadata=doc("column of chat messages, rendered with the chat template when present"))
    dataset_label_field: str = field(default="label", metadata=doc("seq2seq only: column holding the target text"))
    chat_template_format: Literal["chatml", "zephyr", "none"] = field(default="none", metadata=doc("chat template to apply (its special tokens are added)"))
    splits: str = field(default="train,test", metadata=doc("comma-separated: train split, then eval split (optional)"))
    packing: bool = field(default=False, metadata=doc("pack several samples into one sequence"))
    max_seq_len: int = field(default=2048, metadata=doc("maximum sequence length in tokens (seq2seq: of the source text)", min=8, max=1 << 20))
    max_target_len: int | None = field(default=None, metadata=doc("seq2seq only: target (label) length in tokens, longer labels are cut; unset: the longest label of the train split", min=1))
    train_samples: int | None = field(default=None, metadata=doc("planner hint: rows of the train split, for time per epoch; unset: counted for a local .jsonl, else unknown", min=1))
    mean_sample_tokens: int | None = field(default=None, metadata=doc("planner hint: mean tokens of one sample (packing: sequences per epoch; padding: tokens per batch)", min=1))
    append_concat_token: bool = field(default=False, metadata=doc("append EOS between packed samples"))
    add_special_tokens: bool = field(default=False, metadata=doc("let the tokenizer add BOS/EOS to each sample"))


@dataclass(kw_only=True)
class MethodSection:
    type: Literal["lora", "qlora", "full"] = field(default="lora", metadata=doc("lora, qlora (LoRA on a 4/8-bit base) or full fine-tuning"))
    lora_r: int = field(default=8, metadata=doc("LoRA rank", min=1, max=4096))
    lora_alpha: int = field(default=16, metadata=doc("LoRA scaling alpha", min=1, max=1 << 20))
    lora_dropout: float = field(default=0.1, metadata=doc("LoRA dropout", min=0.0, max=1.0))
    lora_target_modules: str | list[str] = field(default="all-linear", metadata=doc("'all-linear' or module names (Falcon: query_key_value, dense, ...)"))
    quant_bits: Literal[4, 8] = field(default=4, metadata=doc("qlora only: 4-bit (bitsandbytes nf4/fp4) or 8-bit base"))
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata=doc("qlora 4-bit quantisation type"))
    use_nested_quant: bool = field(default=False, metadata=doc("qlora double quantisation of the constants"))
    bnb_4bit_compute_dtype: DType = field(default="bfloat16", metadata=doc("qlora compute dtype"))
    bnb_4bit_quant_storage_dtype: DType = field(default="bfloat16", metadata=doc("qlora storage dtype: must equal the model dtype under ZeRO-3"))


@dataclass(kw_only=True)
class DeepSpeedSection:
    zero_stage: int = field(default=3, metadata=doc("ZeRO stage: 0 (plain data parallel), 1, 2 or 3", min=0, max=3))
    offload_optimizer_device: Offload = field(default="none", metadata=doc("optimizer states to cpu/nvme (stage >= 2)"))
    offload_param_device: Offload = field(default="none", metadata=doc("parameters to cpu/nvme (stage 3 only)"))
    nvme_path: str | None = field(default=None, metadata=doc("NVMe offload folder; unset: the profile's node.local_scratch", path=True))
    zero3_init_flag: bool = field(default=True, metadata=doc("build the model sharded (deepspeed.zero.Init); needed for QLoRA + ZeRO-3"))
    zero3_save_16bit_model: bool = field(default=True, metadata=doc("gather 16-bit weights when saving (else adapters save empty)"))


@dataclass(kw_only=True)
class TrainingSection:
    seed: int = field(default=100, metadata=doc("random seed", min=0, max=2**32 - 1))
    num_train_epochs: float = field(default=1.0, metadata=doc("epochs", min=0, max=1e6))
    max_steps: int = field(default=-1, metadata=doc("stop after this many optimizer steps (-1: epochs decide)", min=-1, max=10**9))
    per_device_train_batch_size: int = field(default=8, metadata=doc("micro batch per GPU", min=1, max=1 << 20))
    per_device_eval_batch_size: int = field(default=8, metadata=doc("eval micro batch per GPU", min=1, max=1 << 20))
    gradient_accumulation_steps: int = field(default=1, metadata=doc("micro batches per optimizer step (rendered into the accelerate config too)", min=1, max=1 << 20))
    gradient_checkpointing: bool = field(default=True, metadata=doc("recompute activations in backward"))
    use_reentrant: bool = field(default=False, metadata=doc("gradient checkpointing's use_reentrant"))
    learning_rate: float = field(default=1e-4, metadata=doc("peak learning rate", min=0, max=1e3))
    lr_scheduler_type: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"] = field(default="cosine", metadata=doc("learning-rate schedule"))
    weight_decay: float = field(default=1e-4, metadata=doc("AdamW weight decay", min=0, max=1e3))
    warmup_ratio: float = field(default=0.0, metadata=doc("fraction of steps for warm-up", min=0, max=1))
    max_grad_norm: float = field(default=1.0, metadata=doc("gradient clipping (rendered as DeepSpeed gradient_clipping too)", min=0, max=1e9))
    logging_steps: int = field(default=5, metadata=doc("log every N steps", min=1, max=10**9))
    log_level: Literal["debug", "info", "warning", "error", "critical", "passive"] = field(default="info", metadata=doc("log level on the main process"))
    logging_strategy: Literal["steps", "epoch", "no"] = field(default="steps", metadata=doc("when to log"))
    eval_strategy: Literal["no", "steps", "epoch"] = field(default="epoch", metadata=doc("when to evaluate (PEFT's evaluation_strategy)"))
    eval_steps: int | None = field(default=None, metadata=doc("evaluate every N steps with eval_strategy steps", min=1, max=10**9))
    save_strategy: Literal["no", "steps", "epoch"] = field(default="epoch", metadata=doc("when to checkpoint"))
    save_steps: int = field(default=500, metadata=doc("checkpoint every N steps with save_strategy steps", min=1, max=10**9))
    save_total_limit: int | None = field(default=2, metadata=doc("keep at most N checkpoints", min=1, max=10**6))
    ddp_timeout: int = field(default=1800, metadata=doc("process-group timeout, s; raise it for huge ZeRO-3 saves", min=60, max=7 * 86400))
    push_to_hub: bool = field(default=False, metadata=doc("push the adapter to the hub (token from $HF_TOKEN at run time)"))
    hub_model_id: str | None = field(default=None, metadata=doc("hub repository for push_to_hub", max_len=256))
    hub_private_repo: bool = field(default=True, metadata=doc("create the hub repository private"))
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] = field(default="every_save", metadata=doc("what to push and when"))
    report_to: Literal["none", "tensorboard", "wandb"] = field(default="none", metadata=doc("experiment tracker"))
    output_dir: str = field(default="output", metadata=doc("checkpoints, adapter and metrics.json; relative paths are inside the run bundle", path=True))


@dataclass(kw_only=True)
class LayoutSection:
    nodes: int | Literal["auto"] = field(default=1, metadata=doc("nodes (auto: the planner chooses)", min=1, max=4096))
    gpus_per_node: int | Literal["all"] = field(default="all", metadata=doc("processes per node, one per GPU ('all': every GPU; on a CPU-only profile, CPU processes)", min=1, max=64))
    time: str | int = field(default="04:00:00", metadata=doc("time limit, Slurm format (D-HH:MM:SS, HH:MM:SS) or minutes"))
    partition: str | None = field(default=None, metadata=doc("partition; unset: the profile's default", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    cpus_per_task: int | None = field(default=None, metadata=doc("CPUs for the one task per node; unset: the node's share", min=1, max=1 << 20))
    mem_gib: int | None = field(default=None, metadata=doc("CPU memory per node, GiB; unset: the node's share", min=1, max=1 << 24))


@dataclass(kw_only=True)
class Recipe:
    name: str = field(metadata=doc("short name, used for the job name and run ids", pattern=NAME, pattern_doc=NAME_DOC))
    description: str = field(default="", metadata=doc("one line"))
    task: Literal["causal_lm", "seq2seq"] = field(default="causal_lm", metadata=doc("causal_lm (TRL SFTTrainer) or seq2seq (custom Accelerate loop)"))
    precision: Literal["bf16", "fp16", "no"] = field(default="bf16", metadata=doc("mixed precision: bf16, fp16 or no (fp32)"))
    model: ModelSection = field(metadata=doc("base model"))
    data: DataSection = field(metadata=doc("dataset and tokenisation"))
    method: MethodSection = field(default_factory=MethodSection, metadata=doc("LoRA / QLoRA / full"))
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection, metadata=doc("ZeRO settings"))
    training: TrainingSection = field(default_factory=TrainingSection, metadata=doc("training arguments"))
    layout: LayoutSection = field(default_factory=LayoutSection, metadata=doc("nodes, GPUs and time"))

    source: str = field(default="", metadata=doc("file this recipe was loaded from (set by the loader)"))

    @property
    def model_dtype(self) -> str:
        """The dtype the base model is loaded in (QLoRA: the 4-bit storage dtype)."""
        if self.model.torch_dtype != "auto":
            return self.model.torch_dtype
        if self.method.type == "qlora" and self.method.quant_bits == 4:
            return self.method.bnb_4bit_quant_storage_dtype
        return HALF_DTYPE.get(self.precision, "float32")


def parse(data: dict, source: str) -> Recipe:
    """Validate parsed recipe data (e.g. a bundle's recipe.yaml) into a Recipe."""
    data = dict(data)
    data.pop("source", None)
    stack = [(data, "")]
    while stack:  # every key at every level (the tree is at most yamlfile.MAX_DEPTH deep)
        node, prefix = stack.pop()
        for key, value in node.items():
            where = f"{prefix}{key}"
            if str(key).lower() in _SECRET_KEYS:
                raise ConfigError(source, where, "secrets do not belong in recipe files: export HF_TOKEN in the environment instead (it is read at run time and never written)")
            if isinstance(value, dict):
                stack.append((value, f"{where}."))
    recipe = schema.load(Recipe, data, source)
    recipe.source = source
    return recipe


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Load a recipe file by path (or a shipped recipe by name), applying ``--set`` overrides."""
    path = find(str(path))
    data = yamlfile.apply_overrides(yamlfile.read(path), tuple(overrides))
    return parse(data, str(path))


def find(name_or_path: str) -> Path:
    """A recipe path, or the name of a shipped recipe (``tiny-sft``)."""
    from hpctune.profile import is_file
    p = Path(name_or_path)
    if is_file(p) or p.suffix in (".yaml", ".yml") or "/" in name_or_path or not re.fullmatch(NAME, name_or_path):
        return p  # yamlfile.read names what is wrong with it
    from hpctune import resources
    shipped = resources.recipes_dir() / f"{name_or_path}.yaml"
    return shipped if shipped.is_file() else p


def to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, in field order (what a run bundle's recipe.yaml holds)."""
    data = schema.to_dict(recipe)
    data.pop("source")
    # Reads back to exactly these values, here and with YAML 1.1 readers (yamlfile.dumps).
    return yamlfile.dumps(data)
