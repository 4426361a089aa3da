"""Check a saved LoRA adapter: ZeRO-3 can silently save an empty one (peft#453, DeepSpeed#3620).

After every run: the adapter file exists; it holds a tensor for every trainable LoRA
parameter of the model that was trained (the expected names are taken from the PEFT model);
no tensor is empty or has a zero-sized dimension; ranks match ``r``; nothing is NaN/inf;
every lora_A is non-zero (they start random) and, after at least one optimizer step, not
every lora_B is zero (they start at zero, so all-zero B means nothing was learned or
nothing was gathered). Any failure raises AdapterCheckError (exit code 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from hpctune.errors import RunError

FIX = ("under ZeRO-3 set deepspeed.zero3_save_16bit_model: true (without it the adapter is saved "
       "without its gathered weights)")


class AdapterCheckError(RunError):
    """The saved adapter is missing, empty or incomplete."""


def expected_keys(peft_model, adapter_name: str = "default") -> list[str]:
    """Names PEFT writes for the trainable parameters of ``peft_model``."""
    return sorted(n.replace(f".{adapter_name}", "") for n, p in peft_model.named_parameters() if p.requires_grad)


def _load(adapter_dir: Path) -> dict:
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors import safe_open
        if st.stat().st_size == 0:
            raise AdapterCheckError(f"{st} is an empty file; {FIX}")
        try:
            with safe_open(str(st), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise AdapterCheckError(f"{st} cannot be read ({e.__class__.__name__}: {e}); {FIX}") from None
    binf = adapter_dir / "adapter_model.bin"
    if binf.is_file():
        import torch
        return torch.load(str(binf), map_location="cpu", weights_only=True)
    raise AdapterCheckError(f"no adapter_model.safetensors in {adapter_dir}; {FIX}")


def verify(adapter_dir: str | Path, expected: list[str] | None = None, *, trained: bool = True) -> dict:
    """Raise AdapterCheckError if the adapter in ``adapter_dir`` is not sound; else a summary."""
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise AdapterCheckError(f"no adapter_config.json in {adapter_dir}")
    cfg = json.loads(cfg_path.read_text())
    r = cfg.get("r")
    tensors = _load(adapter_dir)
    if not tensors:
        raise AdapterCheckError(f"the adapter in {adapter_dir} holds no tensor; {FIX}")

    problems = []
    lora = {k: v for k, v in tensors.items() if ".lora_A." in k or ".lora_B." in k}
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} expected tensors are missing (first: {missing[0]})")
    if not lora and (expected is None or any(".lora_" in k for k in expected)):
        problems.append("no lora_A/lora_B tensor in it")
    b_nonzero = False
    for name, t in tensors.items():
        if t.numel() == 0 or any(d == 0 for d in t.shape):
            problems.append(f"{name} is empty (shape {tuple(t.shape)})")
            continue
        tf = t.float()
        if not bool(tf.isfinite().all()):
            problems.append(f"{name} holds NaN or inf")
        if ".lora_A." in name:
            if r and t.shape[0] != r:
                problems.append(f"{name} has shape {tuple(t.shape)}, expected rank r={r} rows")
            if not bool(tf.abs().sum() > 0):
                problems.append(f"{name} is all zero")
        elif ".lora_B." in name:
            if r and t.shape[-1] != r:
                problems.append(f"{name} has shape {tuple(t.shape)}, expected rank r={r} columns")
            b_nonzero = b_nonzero or bool(tf.abs().sum() > 0)
    if trained and lora and not b_nonzero and not problems:
        problems.append("every lora_B is zero: the adapter does not change the model")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AdapterCheckError(f"the adapter in {adapter_dir} is not sound: {'; '.join(problems[:3])}{more}; {FIX}")
    return {"tensors": len(tensors), "lora_tensors": len(lora), "expected": len(expected) if expected is not None else None,
            "parameters": int(sum(t.numel() for t in tensors.values())), "r": r}
