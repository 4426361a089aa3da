"""What hpctune knows about GPU models: memory and which features they support.

Used to fill in profiles (``clusters detect``), and by the checks: T4 and V100 have no
bf16 and no FlashAttention-2 (user-pains 23).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_gib: float
    bf16: bool
    flash_attention_2: bool


KNOWN: dict[str, GpuModel] = {g.name: g for g in [
    GpuModel("h200", 141.0, True, True),
    GpuModel("h100", 80.0, True, True),
    GpuModel("h100-94g", 94.0, True, True),
    GpuModel("gh200", 96.0, True, True),
    GpuModel("a100", 80.0, True, True),
    GpuModel("a100-80g", 80.0, True, True),
    GpuModel("a100-40g", 40.0, True, True),
    GpuModel("a40", 48.0, True, True),
    GpuModel("a10", 24.0, True, True),
    GpuModel("l40s", 48.0, True, True),
    GpuModel("l4", 24.0, True, True),
    GpuModel("rtx6000ada", 48.0, True, True),
    GpuModel("v100", 32.0, False, False),
    GpuModel("v100-16g", 16.0, False, False),
    GpuModel("t4", 16.0, False, False),
    GpuModel("mi250", 64.0, True, False),
    GpuModel("mi300x", 192.0, True, False),
]}


def lookup(model: str) -> GpuModel | None:
    """Find a GPU model by a profile's or Slurm Gres name (case-insensitive)."""
    key = model.strip().lower().replace("_", "-")
    return KNOWN.get(key)
