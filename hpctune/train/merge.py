"""Merge a LoRA adapter into its base model, on CPU, outside DeepSpeed (PEFT: merging under
DeepSpeed is not supported). Writes safetensors weights and the tokenizer.

The input is an adapter folder (adapter_config.json) or a run folder (a bundle with
recipe.yaml whose output folder holds the final adapter). The base model comes from the
run's recipe when there is one, else from the adapter's ``base_model_name_or_path``.

Which base weights (D18): a QLoRA adapter was trained against the 4-bit quantization of the
base, not its original weights. ``into="original"`` (the default, what PEFT's guides do)
merges into the original weights loaded unquantized in the compute dtype; ``into=
"dequantized"`` quantizes the base as the recipe did and merges into the dequantized 4-bit
weights, i.e. the model the adapter was trained with. The result says which it was.

Memory: the whole base model sits in CPU RAM in the merge dtype (Llama-2-70B in bf16: 138
GB; Falcon-180B: 357 GB). The size is computed from the config on the meta device before
anything is loaded, and a host with less available memory is refused (exit 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpctune.errors import ConfigError

def refuse_distributed(environ=os.environ) -> None:
    why = []
    ws = environ.get("WORLD_SIZE")
    if ws and ws.strip() not in ("", "1"):
        why.append(f"WORLD_SIZE={ws}")
    if environ.get("LOCAL_RANK") not in (None, ""):
        why.append(f"LOCAL_RANK={environ['LOCAL_RANK']}")
    why += [k for k, v in environ.items() if k.startswith("ACCELERATE_") and "DEEPSPEED" in k and v.lower() not in ("", "false", "0")]
    if why:
        raise ConfigError("environment", why[0].split("=")[0],
                          f"hpctune merge must run alone on CPU, outside DeepSpeed and distributed launches "
                          f"(merging under DeepSpeed is unsupported); found {', '.join(why[:3])}. Run it directly: "
                          "`hpctune merge RUN -o DIR` (not under accelerate launch, torchrun or srun with several tasks)")


def locate(path: str | Path) -> tuple[Path, object | None]:
    """(adapter folder, the run's Recipe or None)."""
    from hpctune.train import preflight, resume
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(p), "", "no such adapter or run folder")
    if (p / "adapter_config.json").is_file():
        recipe = None
        for cand in (p.parent / "recipe.yaml", p.parent.parent / "recipe.yaml"):
            if cand.is_file():
                recipe = _load_recipe(cand)
                break
        return p, recipe
    if (p / "recipe.yaml").is_file():
        recipe = _load_recipe(p / "recipe.yaml")
        out = preflight.output_dir(recipe)
        if (out / "adapter_config.json").is_file():
            return out, recipe
        ckpt = resume.latest_complete(out) if out.is_dir() else None
        hint = f"; its newest checkpoint is {ckpt} (pass that folder to merge it)" if ckpt else ""
        raise ConfigError(str(p), "training.output_dir", f"no final adapter in {out}: the run has not completed{hint}")
    raise ConfigError(str(p), "", "neither an adapter folder (adapter_config.json) nor a run folder (recipe.yaml)")


def _load_recipe(path: Path):
    from hpctune import recipe as recipe_mod
    return recipe_mod.load(path)


INTO = ("original", "dequantized")
# from_pretrained + merge + save hold about one copy of the weights; leave room for the rest
RAM_MARGIN = 1.10


def available_ram_bytes() -> int:
    """MemAvailable of this host (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def model_bytes(base: str, dtype: str, *, trust: bool, revision) -> int:
    """Bytes of the base model's weights in ``dtype``, from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(base, trust_remote_code=trust, revision=revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    model.tie_weights()  # tied embeddings count once
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return n * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def check_ram(source: str, base: str, dtype: str, needed: int, available: int) -> None:
    gib = 1024 ** 3
    if needed * RAM_MARGIN > available:
        raise ConfigError(source, "", f"merging needs about {needed * RAM_MARGIN / gib:.1f} GiB of CPU memory for {base} in "
                                      f"{dtype} and this host has {available / gib:.1f} GiB available: run hpctune merge on a "
                                      "machine with more memory (a GPU node's RAM, or a large-memory node)")


def merge(path: str | Path, out: str | Path, dtype: str = "auto", into: str = "original",
          available_bytes: int | None = None) -> dict:
    """Merge; returns what was merged into what (``base_weights`` says which weights)."""
    refuse_distributed()
    if into not in INTO:
        raise ConfigError(str(path), "--into", f"{into!r}: use original or dequantized")
    adapter_dir, recipe = locate(path)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if recipe is not None:
        from hpctune.train import preflight
        base = preflight.resolve_model(recipe)
        trust = recipe.model.trust_remote_code
        revision = recipe.model.revision
        auto_dtype = recipe.method.bnb_4bit_compute_dtype if recipe.method.type == "qlora" else recipe.model_dtype
    else:
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise ConfigError(str(adapter_dir / "adapter_config.json"), "base_model_name_or_path", "is empty: merge the run folder instead")
        from hpctune.train import tiny
        base = tiny.resolve(base)
        trust, revision, auto_dtype = False, cfg.get("revision"), "float32"
    dtype = auto_dtype if dtype == "auto" else dtype
    qlora = recipe is not None and recipe.method.type == "qlora"
    if into == "dequantized" and not (qlora and recipe.method.quant_bits == 4):
        raise ConfigError(str(path), "--into", "dequantized applies to 4-bit QLoRA runs only (a run folder whose recipe has "
                                               "method.type qlora, quant_bits 4): merge into the original weights")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        needed = model_bytes(base, dtype, trust=trust, revision=revision)
    except OSError as e:
        raise ConfigError(str(path), "model.model_name_or_path", f"cannot load the base model {base}: {str(e).splitlines()[0]}") from None
    check_ram(str(path), base, dtype, needed, available_ram_bytes() if available_bytes is None else available_bytes)

    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=trust)
    kw = {}
    if into == "dequantized":
        from hpctune.train import model as model_mod
        kw["quantization_config"] = model_mod.quantization_config(recipe)  # as the run quantized it
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), trust_remote_code=trust,
                                                     revision=revision, device_map={"": "cpu"}, **kw)
    except OSError as e:
        raise ConfigError(str(path), "model.model_name_or_path", f"cannot load the base model {base}: {str(e).splitlines()[0]}") from None
    if into == "dequantized":
        model = model.dequantize(dtype=getattr(torch, dtype))
    from hpctune.train import model as model_mod
    if len(tokenizer) > model_mod.vocab_rows(model):
        model_mod.resize_embeddings(model, len(tokenizer))  # the rows the training started from
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if into == "dequantized":
        m = recipe.method
        weights = (f"dequantized {m.bnb_4bit_quant_type} 4-bit weights of {base} (quantized as the run did: the weights "
                   "the adapter was trained against)")
    elif qlora:
        weights = (f"original weights of {base}, unquantized; the adapter was trained against their "
                   f"{'8-bit' if recipe.method.quant_bits == 8 else recipe.method.bnb_4bit_quant_type + ' 4-bit'} quantization"
                   + (" (--into dequantized merges into those)" if recipe.method.quant_bits == 4 else ""))
    else:
        weights = f"original weights of {base}"
    return {"adapter": str(adapter_dir), "base": base, "dtype": dtype, "output": str(out), "into": into,
            "base_weights": weights, "ram_needed_gib": round(needed / 1024 ** 3, 3)}
