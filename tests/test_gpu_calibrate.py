"""The CPU-runnable parts of bench/gpu_calibrate: the grid, the fit, the report and the
command line. The measuring part needs a GPU and runs only where one is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_calibrate import configs, fit  # noqa: E402

GIB = 2**30


def test_grid_covers_methods_engines_and_points_that_fit():
    rows = configs.grid(139.0, "h200")
    assert {r["method"] for r in rows} == {"lora", "qlora", "full"}
    assert {r["zero_stage"] for r in rows} == {0, 3}
    assert len({(r["micro_batch"], r["seq_len"]) for r in rows}) >= 4
    assert all(r["predicted_device_gib"] <= 0.9 * 139.0 for r in rows)
    small = configs.grid(24.0)
    assert len(small) < len(rows)  # what would not fit a 24 GiB card is left out


def _synthetic(rows, a, b, ctx):
    """Measurements made by a known allocator: the fit must give its constants back."""
    out = []
    for r in rows:
        plan, kept, transient, buffers = fit._parts(r, 139.0)
        alloc = plan.allocated_peak_gib
        reserved = alloc + a * transient + b * (kept + buffers)
        out.append({**r, "allocated_gib": alloc, "reserved_gib": reserved, "device_gib": reserved + ctx})
    return out


def test_fit_recovers_known_allocator_constants():
    rows = _synthetic(configs.grid(139.0)[:20], 0.45, 0.08, 0.7)
    f = fit.fit(rows, 139.0)
    assert f["slack_transient"] == pytest.approx(0.45, abs=1e-3)
    assert f["slack_kept"] == pytest.approx(0.08, abs=1e-3)
    assert f["context_gib"] == pytest.approx(0.7, abs=1e-3)


def test_command_line_plan_and_fit_write_the_report(tmp_path):
    grid = tmp_path / "grid.jsonl"
    run = [sys.executable, "-m", "bench.gpu_calibrate"]
    subprocess.run(run + ["plan", "--gpu-gib", "80", "-o", str(grid)], cwd=ROOT, check=True,
                   capture_output=True)
    rows = configs.read(str(grid))[:6]
    measured = tmp_path / "measured.jsonl"
    configs.write(_synthetic(rows, 0.3, 0.2, 0.6) + [{**rows[0], "error": "out of memory"}], str(measured))
    report = tmp_path / "report.md"
    proc = subprocess.run(run + ["fit", "-i", str(measured), "--gpu-gib", "80", "--gpu-name", "test",
                                 "-o", str(report)], cwd=ROOT, check=True, capture_output=True, text=True)
    fitted = json.loads(proc.stdout)
    assert fitted["points"] == 6 and fitted["slack_transient"] == pytest.approx(0.3, abs=1e-3)
    text = report.read_text()
    assert text.startswith("# GPU calibration on test (80 GiB)") and text.count("\n| ") >= 7
    assert "median |error| device" in text
