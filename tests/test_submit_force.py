"""`hpctune submit` runs every check (the memory plan included) before submitting, refuses
on an error, and `--force` submits anyway while recording what it overrode."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clitools import hpctune

# A 70B model on the test cluster's 16 GiB "GPUs": the memory-fits rule must refuse it.
BIG = ["--set", "layout.gpus_per_node=1", "--set", "layout.time=5", "--set", "deepspeed.zero_stage=0",
       "--set", "model.attn_implementation=sdpa"]


def test_submit_refuses_what_cannot_fit_and_force_records_it(slurm, hpctune_env, tmp_path):
    refused = hpctune("submit", "-c", "tc", "llama2-70b-lora-zero3", *BIG, "-o", str(tmp_path / "r1"), env=hpctune_env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "[rule memory-fits]" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "r1").exists()
    registry = Path(hpctune_env["HPCTUNE_HOME"]) / "runs"
    assert not registry.exists() or not list(registry.glob("*.json"))

    forced = hpctune("submit", "-c", "tc", "llama2-70b-lora-zero3", *BIG, "--force", "-o", str(tmp_path / "r2"),
                     env=hpctune_env)
    try:
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "forced past:" in forced.stderr and "memory-fits" in forced.stderr
        run = json.loads((tmp_path / "r2" / "run.json").read_text())
        assert any("memory-fits" in f for f in run["forced"])
        events = [json.loads(line) for line in (tmp_path / "r2" / "logs" / "events.jsonl").read_text().splitlines()]
        assert any(e["event"] == "forced" for e in events)
    finally:
        hpctune("cancel", str(tmp_path / "r2"), env=hpctune_env, timeout=120)
