"""bench/gpu_check.py without a GPU: its cases, their bundles, the verdicts and the report.

The check itself needs a GPU (no GPU machine was lent to the project when it was written);
what can run here does: every case renders through `hpctune render` from a shipped recipe
(or is refused by the rule the case expects), the expectations name the right outcomes,
and the report is built from results.
"""

from __future__ import annotations

import importlib.util
import sys

from tests import tiny_assets as ta


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ta.REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cases_cover_the_reference_workloads_and_the_defects(capsys):
    gc = _gpu_check()
    assert gc.main(["--list"]) == 0 and "w3-bart-zero3-offload" in capsys.readouterr().out
    one = {c.name: c for c in gc.cases(1, have_flash=True)}
    for prefix in ("w1-", "w2-", "w3-", "w4-", "d1-", "d2-", "d12-", "d17-", "d20-"):
        assert any(n.startswith(prefix) for n in one), prefix
    assert not any(n.startswith("d3-") for n in one)  # DDP needs two GPUs
    assert any(n.startswith("d3-") for n in (c.name for c in gc.cases(2, have_flash=False)))
    assert one["d1-qlora-storage-vs-fp16"].expect == "refused:method.bnb_4bit_quant_storage_dtype"
    assert "model.attn_implementation=flash_attention_2" in one["w1-llama-lora-zero3"].sets
    no_fa = {c.name: c for c in gc.cases(1, have_flash=False)}
    assert "model.attn_implementation=sdpa" in no_fa["w1-llama-lora-zero3"].sets
    assert no_fa["d12-flash-attention-preflight"].expect == "refused:model.attn_implementation"
    assert all(set(c.checks) <= {"phases", "load_peak", "seq2seq_phases", "tokens_added", "fp32_weights",
                                 "cpu_below_model", "reentrant_false"} for c in gc.cases(2, True))


def test_every_case_renders_or_is_refused_as_expected(tmp_path, capsys):
    """--dry-run: config-only models of the real shapes, one bundle per case, rules included."""
    gc = _gpu_check()
    assert gc.main(["--dry-run", "--out", str(tmp_path)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "d1-qlora-storage-vs-fp16" in out and "exit 2" in out  # refused at render: qlora-storage-precision
    for name in ("w1-llama-lora-zero3", "w2-llama-qlora-zero3", "w3-bart-zero3-offload", "w4-falcon-lora-zero3"):
        assert (tmp_path / "bundles" / name / "launch.sh").is_file(), name
    recipe = (tmp_path / "bundles" / "w4-falcon-lora-zero3" / "recipe.yaml").read_text()
    assert "num_processes" not in recipe and "use_reentrant: true" in recipe


def test_verdicts_and_report():
    gc = _gpu_check()
    cases = {c.name: c for c in gc.cases(1, have_flash=False)}
    d1 = cases["d1-qlora-storage-vs-fp16"]
    err = ("hpctune: error: r.yaml: method.bnb_4bit_quant_storage_dtype: is bfloat16 but DeepSpeed runs precision fp16 "
           "[rule qlora-storage-precision]")
    assert gc.judge(d1, 2, err, None, 4.0)[0] == "ok"
    assert gc.judge(d1, 0, "", {"status": "completed"}, 4.0)[0] == "FAILED"  # trained: the corruption is back
    w2 = cases["w2-llama-qlora-zero3"]
    good = {"status": "completed", "gpu_load_peak_gib": 6.0, "ranks": [{"gpu_peak_gib": {"load": 6.0, "train": 5.0}}],
            "train_seconds": 10.0, "steps_this_run": 5, "tokens_per_second": 900.0, "cpu_rss_peak_gib": 3.2,
            "gpu_train_peak_gib": 5.0}
    assert gc.judge(w2, 0, "", good, 4.0) == ("ok", "completed")
    assert gc.judge(w2, 0, "", {**good, "ranks": [{}]}, 4.0)[0] == "FAILED"
    assert gc.judge(w2, 1, "Traceback ...\nRuntimeError: CUDA out of memory", None, 4.0) == \
        ("FAILED", "exit 1: RuntimeError: CUDA out of memory")
    w3 = cases["w3-bart-zero3-offload"]
    s2s = {**good, "memory_mb": {"train": {"gpu": {"before": 900, "consumed": 8504, "peak": 9404}},
                                 "eval": {"gpu": {"before": 900, "consumed": 1754, "peak": 2654}}}}
    assert gc.judge(w3, 0, "", s2s, 0.8) == ("ok", "completed")
    s2s["memory_mb"]["train"]["gpu"]["peak"] = 2654  # the training's figure was the evaluation's (D5)
    assert "D5" in gc.judge(w3, 0, "", s2s, 0.8)[1]
    d20 = cases["d20-lora-no-zero3-loads-on-gpu"]
    assert "built in CPU RAM" in gc.judge(d20, 0, "", {**good, "cpu_rss_peak_gib": 5.0}, 4.2)[1]
    results = [gc.result_from(w2, "ok", "completed", 42.0, good),
               gc.result_from(d1, "ok", "refused: ...", 3.0, None),
               gc.Result("w3-bart-zero3-offload", "W3", "skipped", "over the 540 s budget")]
    assert results[0].gpu_gib == {"load": 6.0, "train": 5.0} and results[0].step_s == 2.0
    md = gc.report_md(results, {"date": "2026-12-02", "gpu": "NVIDIA H200", "gpus": 1, "torch": "2.13.0",
                                "flash_attn": None, "seconds": 312})
    assert "2/3 ok" in md and "| w2-llama-qlora-zero3 |" in md and "6.0 / 5.0 / -" in md
    assert "skipped: over the 540 s budget" in md
