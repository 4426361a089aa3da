"""Per-cluster correction factors learnt from finished runs (``hpctune plan --calibrate RUN``).

Two factors per cluster profile, stored as JSON in ``$HPCTUNE_CALIBRATION_DIR`` or
``~/.config/hpctune/calibration/<cluster>.json``:

* ``memory``: measured / predicted short-lived GPU memory (activations, buffers and the
  allocator's slack; the weights and optimizer states are exact and are not scaled), from the
  run's ``gpu_peak_reserved_gib`` against the predicted reserved figure;
* ``step_time``: measured / predicted seconds per optimizer step.

Later plans on that cluster multiply by them (memory.estimate(correction=...),
timing.Workload(time_factor=...)). Each new calibration is averaged (geometrically) with the
stored one, and both are kept within [0.5, 3] so that one odd run cannot wreck the planner.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

LIMITS = (0.5, 3.0)


def _dir() -> Path:
    env = os.environ.get("HPCTUNE_CALIBRATION_DIR")
    return Path(env) if env else Path.home() / ".config" / "hpctune" / "calibration"


def path(cluster: str) -> Path:
    return _dir() / f"{cluster}.json"


def load(cluster: str) -> dict:
    """{"memory": f, "step_time": f, "runs": [...]}; factors 1.0 when nothing is stored."""
    try:
        data = json.loads(path(cluster).read_text())
    except (OSError, ValueError):
        data = {}
    return {"memory": float(data.get("memory", 1.0)), "step_time": float(data.get("step_time", 1.0)),
            "runs": list(data.get("runs", []))}


def _clamp(x: float) -> float:
    return min(max(x, LIMITS[0]), LIMITS[1])


def memory_factor(*, measured_reserved: float, predicted_reserved: float, static: float,
                  current: float = 1.0) -> float | None:
    """Factor on the short-lived memory that makes the prediction meet the measurement."""
    predicted_short = predicted_reserved - static
    measured_short = measured_reserved - static
    if predicted_short <= 0.01 or measured_short <= 0:
        return None
    return _clamp(current * measured_short / predicted_short)


def store(cluster: str, *, run: str, memory: float | None, step_time: float | None) -> dict:
    """Merge new factors into the cluster's file (geometric mean with what was stored)."""
    data = load(cluster)
    for key, new in (("memory", memory), ("step_time", step_time)):
        if new is not None:
            old = data[key] if data["runs"] else new
            data[key] = round(_clamp(math.sqrt(old * new)), 4)
    data["runs"] = (data["runs"] + [run])[-20:]
    p = path(cluster)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, p)
    return data
