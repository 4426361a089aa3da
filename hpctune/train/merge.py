"""Merge a LoRA adapter into its base model, on CPU, outside DeepSpeed (PEFT: merging under
DeepSpeed is not supported). Writes safetensors weights and the tokenizer.

The input is an adapter folder (adapter_config.json) or a run folder (a bundle with
recipe.yaml whose output folder holds the final adapter). The base model comes from the
run's recipe when there is one, else from the adapter's ``base_model_name_or_path``.
QLoRA adapters are merged into the base loaded unquantized (in the compute dtype).
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


def merge(path: str | Path, out: str | Path, dtype: str = "auto") -> dict:
    refuse_distributed()
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

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=trust)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), trust_remote_code=trust,
                                                     revision=revision, device_map={"": "cpu"})
    except OSError as e:
        raise ConfigError(str(path), "model.model_name_or_path", f"cannot load the base model {base}: {str(e).splitlines()[0]}") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return {"adapter": str(adapter_dir), "base": base, "dtype": dtype, "output": str(out)}
