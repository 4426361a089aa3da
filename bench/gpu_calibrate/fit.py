"""Fit the allocator constants to measured points and write the report (pure Python)."""

from __future__ import annotations

import datetime as _dt
import statistics

from hpctune.plan import allocator, estimate
from hpctune.plan.activations import activations

from .configs import plan_input

GIB = 2**30


def _parts(row: dict, gpu_gib: float):
    inp = plan_input(row, gpu_gib, row.get("gpu_model", ""))
    plan = estimate(inp)
    kept, transient = activations(inp, inp.engine)
    b = plan.breakdown
    buffers = sum(b[k] for k in ("zero3_gathered_params", "comm_buckets", "dequant_buffers",
                                 "autocast_weight_copies"))
    return plan, kept / GIB, transient / GIB, buffers


def fit(rows: list[dict], gpu_gib: float) -> dict:
    """Least squares for reserved - allocated = a * transient + b * (kept + buffers), and the
    median of device - reserved as the context (one GPU: no NCCL)."""
    sxx = sxy = syy = sx1 = sy1 = 0.0
    ctx = []
    for r in rows:
        _, kept, transient, buffers = _parts(r, gpu_gib)
        x, y = transient, kept + buffers
        slack = r["reserved_gib"] - r["allocated_gib"]
        sxx, sxy, syy = sxx + x * x, sxy + x * y, syy + y * y
        sx1, sy1 = sx1 + x * slack, sy1 + y * slack
        if r.get("device_gib"):
            ctx.append(r["device_gib"] - r["reserved_gib"])
    det = sxx * syy - sxy * sxy
    if abs(det) < 1e-12:
        a, b = allocator.SLACK_TRANSIENT, allocator.SLACK_KEPT
    else:
        a, b = (sx1 * syy - sy1 * sxy) / det, (sy1 * sxx - sx1 * sxy) / det
    return {"slack_transient": round(a, 4), "slack_kept": round(b, 4),
            "context_gib": round(statistics.median(ctx), 3) if ctx else None, "points": len(rows)}


def report(rows: list[dict], gpu_gib: float, gpu_name: str = "GPU") -> str:
    """A markdown report: every point predicted vs measured, the errors, the fitted constants."""
    lines = [f"# GPU calibration on {gpu_name} ({gpu_gib:g} GiB), {_dt.date.today().isoformat()}", "",
             "| model | method | ZeRO | mb x seq | allocated meas/pred | reserved meas/pred | device meas/pred |",
             "|---|---|---|---|---|---|---|"]
    errs = {"allocated": [], "reserved": [], "device": []}
    for r in rows:
        plan, *_ = _parts(r, gpu_gib)
        cells = []
        for key, pred in (("allocated", plan.allocated_peak_gib), ("reserved", plan.reserved_peak_gib),
                          ("device", plan.device_used_gib)):
            meas = r.get(f"{key}_gib")
            if meas:
                errs[key].append(abs(pred - meas) / meas)
                cells.append(f"{meas:.2f} / {pred:.2f}")
            else:
                cells.append("- / " + f"{pred:.2f}")
        lines.append(f"| {r['model']} | {r['method']} | {r['zero_stage']} | {r['micro_batch']} x {r['seq_len']} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    for key, v in errs.items():
        if v:
            lines.append(f"- median |error| {key}: {statistics.median(v) * 100:.1f}% over {len(v)} points")
    f = fit(rows, gpu_gib)
    lines.append(f"- fitted: SLACK_TRANSIENT={f['slack_transient']}, SLACK_KEPT={f['slack_kept']}, "
                 f"CUDA context {f['context_gib']} GiB (hpctune.plan.allocator)")
    return "\n".join(lines) + "\n"
