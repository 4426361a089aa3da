"""Checks that stop a run before training starts, each with a ConfigError (exit code 2).

First the rule book's recipe rules (hpctune/rules/recipe.py), the very functions the login
node ran on the same recipe.yaml, so the node never refuses what `hpctune check` accepted.
Then only what a node alone can know (the ``node`` rules declared in hpctune/rules/node.py):
package versions, settings this machine cannot run, a launch that disagrees with the recipe,
then the model (its folder or hub name, its config, the LoRA
target modules on a shape-only copy built on the meta device), then the dataset (splits,
the text column, enough rows for one optimizer step). The expensive model load happens
only after all of them passed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

from hpctune import rules
from hpctune.errors import ConfigError
from hpctune.train import dist, tiny

# QLoRA + ZeRO-3 (PEFT's DeepSpeed guide): bnb_4bit_quant_storage and sharded 4-bit weights.
QLORA_ZERO3_GATES = (
    ("bitsandbytes", ">=", "0.43.0"),
    ("accelerate", ">=", "0.28.0"),
    ("transformers", ">", "4.38.2"),
    ("trl", ">", "0.7.11"),
    ("peft", ">", "0.9.0"),
)
# What this package's own calls need (SFTConfig.max_length, autocast_adapter_dtype, dtype=...).
# The one list of floors: setup.cfg's [train] extra says the same (tests/test_packaging.py),
# so `pip install 'hpctune[train]'` never installs what this check then refuses.
BASE_GATES = (
    ("torch", ">=", "2.1"),
    ("transformers", ">=", "4.56"),
    ("peft", ">=", "0.13"),
    ("trl", ">=", "0.20"),
    ("accelerate", ">=", "0.34"),
    ("datasets", ">=", "2.20"),
)
QLORA_GATES = (("bitsandbytes", ">=", "0.43.0"),)
DEEPSPEED_GATES = (("deepspeed", ">=", "0.15"),)


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ok(have: str, op: str, want: str) -> bool:
    from packaging.version import Version
    h, w = Version(have), Version(want)
    # compare releases, so that 2.13.0+cpu satisfies >=2.1 and 0.44.0.dev0 counts as 0.44.0
    h = Version(".".join(str(p) for p in h.release))
    return {">=": h >= w, ">": h > w}[op]


def check_versions(recipe, deepspeed_launch: bool) -> None:
    gates = list(BASE_GATES)
    why = {}
    if recipe.method.type == "qlora":
        gates += QLORA_GATES
        if deepspeed_launch and recipe.deepspeed.zero_stage == 3:
            gates += QLORA_ZERO3_GATES
            why = {g[0]: "QLoRA + ZeRO-3 needs it (bnb_4bit_quant_storage, sharded 4-bit weights)" for g in QLORA_ZERO3_GATES}
    if deepspeed_launch:
        gates += DEEPSPEED_GATES
    problems = []
    for pkg, op, want in gates:
        have = _version(pkg)
        if have is None:
            problems.append(f"{pkg} is not installed (need {pkg}{op}{want})")
        elif not _ok(have, op, want):
            reason = f": {why[pkg]}" if pkg in why else ""
            problems.append(f"{pkg} {have} is too old, need {pkg}{op}{want}{reason}")
    if problems:
        raise ConfigError(recipe.source, "method.type" if why else "", "; ".join(dict.fromkeys(problems))
                          + f". Install newer packages on the nodes (python: {sys.executable})", rule="version-gates")


def check_recipe(recipe) -> None:
    """The rule book's recipe rules (errors stop the run; the login node showed the warnings)."""
    rules.raise_errors(rules.run(recipe=recipe))


# --- the launch and this machine ---------------------------------------------------------------

def launch_env() -> dict:
    """What ``accelerate launch`` told this process (empty values when run directly)."""
    env = os.environ
    ds = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    return {
        "deepspeed": ds,
        "zero_stage": int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"]) if ds and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") else None,
        "mixed_precision": env.get("ACCELERATE_MIXED_PRECISION"),
        "grad_acc": env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
        "clipping": env.get("ACCELERATE_GRADIENT_CLIPPING"),
        "world_size": int(env.get("WORLD_SIZE", "1") or 1),
    }


def check_launch(recipe, launch: dict) -> None:
    """The accelerate config must say what the recipe says (rendered from it; hand-made ones may not)."""
    src = recipe.source
    if launch["deepspeed"]:
        if recipe.deepspeed.zero_stage == 0:
            raise ConfigError(src, "deepspeed.zero_stage", "is 0 but this process was started with DeepSpeed: render the bundle again (`hpctune render`) so the accelerate config matches the recipe", rule="node-launch")
        if launch["zero_stage"] is not None and launch["zero_stage"] != recipe.deepspeed.zero_stage:
            raise ConfigError(src, "deepspeed.zero_stage", f"is {recipe.deepspeed.zero_stage} but the accelerate config says zero_stage {launch['zero_stage']}: render the bundle again so both come from the recipe", rule="node-launch")
        if launch["grad_acc"] not in (None, "", "auto") and int(launch["grad_acc"]) != recipe.training.gradient_accumulation_steps:
            raise ConfigError(src, "training.gradient_accumulation_steps", f"is {recipe.training.gradient_accumulation_steps} but the accelerate config says {launch['grad_acc']}: DeepSpeed would stop with a mismatch; render the bundle again", rule="node-launch")
    mp = launch["mixed_precision"]
    if launch["deepspeed"] and mp and mp != recipe.precision:
        raise ConfigError(src, "precision", f"is {recipe.precision!r} but the accelerate config says mixed_precision {mp!r}: render the bundle again so both come from the recipe", rule="node-launch")


def check_machine(recipe, cuda: bool) -> None:
    from hpctune import policy
    src = recipe.source
    if recipe.precision == "fp16" and not cuda:
        raise ConfigError(src, "precision", "fp16 needs a GPU and none is visible here: use precision bf16 or 'no' on CPU",
                          rule="node-devices")
    if recipe.model.attn_implementation == "flash_attention_2":
        problem = policy.flash_attention_problem(cuda, *(flash_attention_facts(cuda) if cuda else (None, None)))
        if problem:
            raise ConfigError(src, "model.attn_implementation", problem, rule="node-devices")
    if recipe.training.report_to != "none" and importlib.util.find_spec(recipe.training.report_to) is None:
        raise ConfigError(src, "training.report_to", f"{recipe.training.report_to} is not installed on this node: install it or use none",
                          rule="node-env")
    if recipe.training.push_to_hub and not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise ConfigError(src, "training.push_to_hub", "is true but HF_TOKEN is not set in the environment of the job",
                          rule="node-env")


def flash_attention_facts(cuda: bool) -> tuple[tuple[int, int] | None, str | None]:
    """(the lowest compute capability of the visible GPUs, why flash_attn does not import or None).

    Importing the package loads its CUDA extension: a wheel built for another torch or CUDA
    installs fine and fails here, instead of at model load after the data preparation.
    """
    capability = None
    if cuda:
        import torch
        capability = min(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_func  # noqa: F401  (the compiled extension)
        error = None
    except Exception as e:  # ImportError, OSError (undefined symbol), RuntimeError ...
        error = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
    return capability, error


# --- paths -------------------------------------------------------------------------------------

def recipe_dir(recipe) -> Path:
    return Path(recipe.source).resolve().parent if recipe.source else Path.cwd()


def output_dir(recipe) -> Path:
    """training.output_dir; a relative one is inside the recipe's folder (the run bundle)."""
    out = Path(os.path.expanduser(recipe.training.output_dir))
    return out if out.is_absolute() else recipe_dir(recipe) / out


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def local_path(recipe, name: str) -> Path | None:
    """An existing local file/folder for ``name`` (as given, else inside the recipe's folder)."""
    p = Path(os.path.expanduser(name))
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, recipe_dir(recipe) / p]):
        if cand.exists():
            return cand.resolve()
    return None


def resolve_model(recipe) -> str:
    """A local model folder or a hub name; ConfigError if it can be neither."""
    name = recipe.model.model_name_or_path
    field = "model.model_name_or_path"
    if tiny.is_builtin(name):
        try:
            return tiny.resolve(name)
        except ConfigError as e:
            raise ConfigError(recipe.source, field, e.message, rule="node-model") from None
    found = local_path(recipe, name)
    if found is not None:
        if not found.is_dir():
            raise ConfigError(recipe.source, field, f"{found} is a file: give the model's folder (with config.json)", rule="node-model")
        if not (found / "config.json").is_file():
            raise ConfigError(recipe.source, field, f"{found} has no config.json: not a Hugging Face model folder", rule="node-model")
        return str(found)
    if _looks_like_path(name):
        raise ConfigError(recipe.source, field, f"{name}: no such folder on {os.uname().nodename}", rule="node-model")
    return name


def load_config(recipe, model_path: str):
    from transformers import AutoConfig
    field = "model.model_name_or_path"
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=recipe.model.trust_remote_code,
                                          revision=recipe.model.revision)
    except Exception as e:  # hub unreachable, unknown repo, gated model, bad config.json ...
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        where = "a local folder" if os.path.isdir(model_path) else "not a local folder, and the hub lookup failed"
        raise ConfigError(recipe.source, field, f"{model_path}: {where}: {first}", rule="node-model") from None


# --- LoRA target modules -------------------------------------------------------------------------

def target_list(recipe) -> str | list[str]:
    t = recipe.method.lora_target_modules
    if isinstance(t, str):
        return "all-linear" if t.strip() == "all-linear" else [s.strip() for s in t.split(",") if s.strip()]
    return list(t)


def meta_model(recipe, config):
    """A shape-only copy of the model (no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    seq2seq = recipe.task == "seq2seq"
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    except ValueError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        what = "an encoder-decoder (seq2seq) model" if seq2seq else "a causal language model"
        raise ConfigError(recipe.source, "model.model_name_or_path", f"model type {getattr(config, 'model_type', '?')!r} is not {what} (task {recipe.task}): {first}", rule="node-model") from None


def known_task(recipe, config) -> bool:
    """The model type is one transformers builds for this task (causal LM / seq2seq), known
    from the config alone: then no shape-only copy of the model is needed to say so."""
    from transformers.models.auto import modeling_auto as ma
    names = ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES if recipe.task == "seq2seq" else ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return getattr(config, "model_type", None) in names


def needs_meta_model(recipe, config) -> bool:
    """Named LoRA targets are checked on a shape-only copy (~0.5 s for a 70B model per rank);
    all-linear (every causal or seq2seq LM has linear layers) and full fine-tuning only need
    the model type, which the config says."""
    if recipe.method.type != "full" and target_list(recipe) != "all-linear":
        return True
    return not known_task(recipe, config)


def linear_leaf_names(model) -> list[str]:
    import torch
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or module.__class__.__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_targets(recipe, model) -> None:
    if recipe.method.type == "full":
        return
    targets = target_list(recipe)
    field = "method.lora_target_modules"
    linear = linear_leaf_names(model)
    if targets == "all-linear":
        if not [n for n in linear if n != "lm_head"]:
            raise ConfigError(recipe.source, field, "all-linear found no linear layer in this model", rule="node-model")
        return
    if not targets:
        raise ConfigError(recipe.source, field, "is empty: give module names or all-linear", rule="node-model")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        mtype = getattr(model.config, "model_type", "this model")
        hint = ""
        if set(missing) & {"query_key_value", "dense_h_to_4h", "dense_4h_to_h"}:
            hint = " (those are Falcon's names)"
        elif set(missing) & {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}:
            hint = " (those are Llama-style names)"
        raise ConfigError(recipe.source, field,
                          f"{', '.join(missing)} not found in the base model ({mtype}){hint}; its linear layers are: "
                          f"{', '.join(n for n in linear if n != 'lm_head')}. Use those names or all-linear", rule="node-model")


# --- sequence length ------------------------------------------------------------------------

def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def learned_positions(model, limit: int | None) -> bool:
    """Whether the (meta) model looks positions up in a learned table of about ``limit`` rows
    (BART keeps 2 extra rows); rotary and relative-bias models have no such table."""
    import torch
    if not limit:
        return False
    token_tables = {id(model.get_input_embeddings())}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module) not in token_tables \
                and limit <= module.num_embeddings <= limit + 2:
            return True
    return False


def check_positions(recipe, config, model) -> None:
    """Sequence lengths against the model's positions (D16): an error for learned positions.

    The seq2seq decoder's labels (data.max_target_len) go through the same kind of table.
    ``model``: the shape-only copy, or None when none was built; one is built only when a
    length is past the config's positions (whether they are learned decides the severity)."""
    from hpctune import policy
    limit = max_positions(config)
    lengths = [("data.max_seq_len", recipe.data.max_seq_len)]
    if recipe.task == "seq2seq" and recipe.data.max_target_len:
        lengths.append(("data.max_target_len", recipe.data.max_target_len))
    if not limit or all(length <= limit for _, length in lengths):
        return
    learned = learned_positions(model if model is not None else meta_model(recipe, config), limit)
    for field, length in lengths:
        found = policy.positions_problem(length, limit, learned)
        if found is None:
            continue
        severity, message = found
        if severity == "error":
            raise ConfigError(recipe.source, field, message, rule="max-seq-len-positions")
        if dist.is_main():
            print(f"hpctune train: warning: {recipe.source}: {field}: {message}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------------------------

def global_batch(recipe, world_size: int) -> int:
    return recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps * world_size


def check_rows(recipe, rows: int, world_size: int, what: str) -> None:
    need = global_batch(recipe, world_size)
    if rows < need:
        t = recipe.training
        raise ConfigError(recipe.source, "data.dataset_name",
                          f"{what} has {rows} row(s), fewer than one optimizer step needs: {need} = "
                          f"per_device_train_batch_size {t.per_device_train_batch_size} x gradient_accumulation_steps "
                          f"{t.gradient_accumulation_steps} x {world_size} process(es). Use more data or a smaller batch", rule="node-data")


def check_output_dir(recipe, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hpctune-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(recipe.source, "training.output_dir", f"{out}: cannot write there ({e.strerror or e})",
                          rule="node-data") from None

