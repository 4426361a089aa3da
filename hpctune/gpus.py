"""What hpctune knows about GPU models: memory and which features they support.

Used to fill in profiles (``clusters detect``), and by the checks: T4 and V100 have no
bf16 and no FlashAttention-2 (user-pains 23).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_gib: float
    bf16: bool
    flash_attention_2: bool
    # Other memory sizes sold under the same name: a Slurm Gres type "a100" may be the
    # 40 GiB or the 80 GiB card, so a detected memory must be confirmed by the user.
    variants: tuple[str, ...] = ()


KNOWN: dict[str, GpuModel] = {g.name: g for g in [
    GpuModel("b200", 180.0, True, True),
    GpuModel("h200", 141.0, True, True),
    GpuModel("gh200", 96.0, True, True, variants=("gh200-144g",)),
    GpuModel("gh200-144g", 144.0, True, True),
    GpuModel("h100", 80.0, True, True, variants=("h100-94g",)),
    GpuModel("h100-80g", 80.0, True, True),
    GpuModel("h100-94g", 94.0, True, True),
    GpuModel("a100", 80.0, True, True, variants=("a100-40g",)),
    GpuModel("a100-80g", 80.0, True, True),
    GpuModel("a100-40g", 40.0, True, True),
    GpuModel("a40", 48.0, True, True),
    GpuModel("a30", 24.0, True, True),
    GpuModel("a10", 24.0, True, True),
    GpuModel("a6000", 48.0, True, True),
    GpuModel("l40s", 48.0, True, True),
    GpuModel("l40", 48.0, True, True),
    GpuModel("l4", 24.0, True, True),
    GpuModel("rtx6000ada", 48.0, True, True),
    GpuModel("v100", 32.0, False, False, variants=("v100-16g",)),
    GpuModel("v100-32g", 32.0, False, False),
    GpuModel("v100-16g", 16.0, False, False),
    GpuModel("p100", 16.0, False, False),
    GpuModel("t4", 16.0, False, False),
    GpuModel("mi300x", 192.0, True, False),
    GpuModel("mi250x", 128.0, True, False),
    GpuModel("mi250", 128.0, True, False),
    GpuModel("mi210", 64.0, True, False),
]}

# Words sites put around the model in a Gres type (nvidia_a100-sxm4-80gb, tesla_v100).
_NOISE = re.compile(r"\b(nvidia|tesla|amd|instinct|geforce|quadro|rtx|sxm\d*|pcie|nvl|hbm\w*)\b")
# Base model names, longest first so that "a100" wins over "a10" and "l40s" over "l40".
_BASES = sorted({n.split("-")[0] for n in KNOWN}, key=len, reverse=True)


def lookup(model: str) -> GpuModel | None:
    """Find a GPU model by a profile's or Slurm Gres name (case-insensitive)."""
    key = model.strip().lower().replace("_", "-")
    return KNOWN.get(key)


@dataclass(frozen=True)
class GresMatch:
    """What a Slurm Gres type says about the GPU: the model (None: unknown), and whether
    its memory is certain (False when the type names a model sold in several sizes)."""

    model: GpuModel | None
    memory_certain: bool


def from_gres_type(gres_type: str | None) -> GresMatch:
    """Map a Gres type (``h100``, ``a100``, ``A100_80GB``, ``nvidia_a100-sxm4-40gb``,
    ``tesla_v100``) to a known model. An explicit memory in the type (``40gb``) settles
    the size; a bare ``a100`` is taken as the table's default size, to be confirmed."""
    if not gres_type:
        return GresMatch(None, False)
    exact = lookup(gres_type)
    if exact is not None:
        return GresMatch(exact, not exact.variants)
    text = gres_type.strip().lower().replace("_", "-")
    if re.search(r"\d+g\.\d+gb", text):  # a MIG slice (a100-3g.20gb): not a whole GPU
        return GresMatch(None, False)
    text = _NOISE.sub(" ", text.replace("-", " "))
    words = text.split()
    base = next((b for w in words for b in _BASES if w == b), None)
    if base is None:
        return GresMatch(None, False)
    mem = re.search(r"\b(\d+)\s*g(?:b|ib)?\b", text)
    if mem:
        sized = KNOWN.get(f"{base}-{mem[1]}g")
        if sized is None and KNOWN[base].memory_gib == float(mem[1]):
            sized = KNOWN[base]
        if sized is not None:
            return GresMatch(sized, True)
    model = KNOWN[base]
    return GresMatch(model, not model.variants)
