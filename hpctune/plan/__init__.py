"""Memory planning: model shapes, per-GPU / per-node memory estimates, auto layout.

Pure Python (no torch): safe and fast on login nodes. See docs/memory-model.md.
"""

from .inputs import PlanInput
from .memory import DEFAULT_MARGIN_GIB, GIB, Plan, estimate
from .search import DEFAULT_OFFLOADS, candidates, cost, search
from .shapes import (LinearSpec, ModelShape, get_shape, known_models, lora_param_count,
                     resolve_targets, shape_from_config)

__all__ = [
    "DEFAULT_MARGIN_GIB", "DEFAULT_OFFLOADS", "GIB", "LinearSpec", "ModelShape", "Plan",
    "PlanInput", "candidates", "estimate", "get_shape", "known_models", "lora_param_count",
    "cost", "resolve_targets", "search", "shape_from_config",
]
