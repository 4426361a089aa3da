"""`hpctune plan` on the shipped recipes and profiles: JSON shape, verdicts, auto layout,
and `check`/`render` refusing a layout that cannot fit (the memory-fits rule)."""

from __future__ import annotations

import json

from tests.clitools import hpctune


def _plan(*args):
    proc = hpctune("plan", *args, "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_json_has_the_documented_keys():
    rc, out = _plan("-c", "example-h100", "llama2-70b-lora-zero3")
    assert rc == 0
    for key in ("per_gpu_peak_gib", "cpu_ram_peak_gib_per_node", "fits", "headroom_gib", "nodes",
                "gpus_per_node", "breakdown"):
        assert key in out
    assert out["fits"] and out["nodes"] == 1 and out["gpus_per_node"] == 8
    assert abs(sum(out["breakdown"].values()) - out["per_gpu_peak_gib"]) < 0.05 * out["per_gpu_peak_gib"]


def test_reference_workload_figures_within_15_percent():
    # Measured in PEFT's DeepSpeed guide: 64 GB and 36.6 GB per GPU (read as GiB here; the
    # planner's own tests check both readings).
    _, l70 = _plan("-c", "example-h100", "llama2-70b-lora-zero3")
    assert abs(l70["per_gpu_peak_gib"] - 64) / 64 <= 0.15
    _, q70 = _plan("-c", "example-a100-40g", "llama2-70b-qlora-zero3")
    assert abs(q70["per_gpu_peak_gib"] - 36.6) / 36.6 <= 0.15


def test_falcon_qlora_does_not_fit_but_lora_does():
    rc, out = _plan("-c", "example-a100-80g", "falcon-180b-lora-zero3", "--set", "method.type=qlora")
    assert not out["fits"]
    assert any("not sharded at load" in n for n in out["notes"])
    rc, out = _plan("-c", "example-a100-80g", "falcon-180b-lora-zero3")
    assert rc == 0 and out["fits"] and out["nodes"] == 2 and out["gpus_per_node"] == 8


def test_llama70b_bf16_on_two_gpus_without_zero3_does_not_fit():
    for stage in ("0", "2"):
        proc = hpctune("plan", "-c", "example-h100", "llama2-70b-lora-zero3", "--set", "layout.gpus_per_node=2",
                       "--set", f"deepspeed.zero_stage={stage}")
        assert proc.returncode == 2 and "DOES NOT FIT" in proc.stdout


def test_auto_layout_picks_zero3_on_8_gpus():
    rc, out = _plan("-c", "example-h100", "llama2-70b-lora-zero3", "--set", "layout.nodes=auto",
                    "--set", "deepspeed.zero_stage=0")
    assert rc == 0
    assert out["nodes"] == 1 and out["gpus_per_node"] == 8
    assert out["layout"].startswith("1 node(s) x 8 GPU(s), ZeRO-3")
    assert out["alternatives"], "the next-best layouts are listed"


def test_render_refuses_a_layout_that_cannot_fit(tmp_path):
    proc = hpctune("render", "-c", "example-h100", "llama2-70b-lora-zero3", "--set", "layout.gpus_per_node=2",
                   "--set", "deepspeed.zero_stage=2", "-o", str(tmp_path / "b"))
    assert proc.returncode == 2
    assert "layout: does not fit" in proc.stderr and "[rule memory-fits]" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_check_reports_memory_fits():
    proc = hpctune("check", "-c", "example-a100-80g", "falcon-180b-lora-zero3", "--set", "method.type=qlora")
    assert proc.returncode == 2 and "[rule memory-fits]" in proc.stdout


def test_json_has_three_figures_time_and_advice():
    rc, out = _plan("-c", "example-h100", "llama2-70b-lora-zero3")
    assert out["allocated_peak_gib"] < out["reserved_peak_gib"] < out["device_used_gib"] == out["per_gpu_peak_gib"]
    assert "nvidia-smi" in out["figures"]["device_used_gib"]
    t = out["time"]
    assert 20 < t["step_seconds"] < 300 and t["tokens_per_second"] > 0
    assert t["advice"]["signal_seconds_min"] >= 2 * t["step_seconds"] + t["save_seconds"]
    assert out["corrections"] == {"memory": 1.0, "step_time": 1.0, "runs": []} or out["corrections"]["runs"]


def test_text_says_which_figure_compares_with_which_tool():
    proc = hpctune("plan", "-c", "example-h100", "llama2-70b-lora-zero3")
    assert "torch.cuda.max_memory_allocated()" in proc.stdout and "nvidia-smi" in proc.stdout
    assert "signal_seconds >=" in proc.stdout and "save_steps <=" in proc.stdout


def test_model_path_relative_to_the_recipe(tmp_path, monkeypatch):
    from hpctune import recipe as recipe_mod
    from hpctune.plan import job_plan
    (tmp_path / "exp" / "model").mkdir(parents=True)
    (tmp_path / "exp" / "model" / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}))
    (tmp_path / "exp" / "r.yaml").write_text(
        "name: rel\nmodel:\n  model_name_or_path: ./model\ndata:\n  dataset_name: x/y\n")
    monkeypatch.chdir(tmp_path)  # ./model is not in the working directory
    rec = recipe_mod.load(tmp_path / "exp" / "r.yaml")
    assert job_plan.model_shape(rec).n_params == 7_615_616_512


def test_unknown_model_type_is_one_line_naming_the_field(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    rec = tmp_path / "r.yaml"
    rec.write_text(f"name: enc\nmodel:\n  model_name_or_path: {tmp_path / 'm'}\ndata:\n  dataset_name: x/y\n")
    proc = hpctune("plan", "-c", "example-h100", str(rec))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.model_name_or_path" in proc.stderr and "encoder-only" in proc.stderr
