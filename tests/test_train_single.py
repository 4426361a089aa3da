"""recipes/tiny-sft.yaml on one CPU process, through the real command line.

Proves: the loss falls over 30 steps; the adapter is saved and verified; it reloads onto
the base model; `hpctune merge` merges it on CPU, and the merged model gives the same
logits as base + adapter and generates; a completed run is not trained again; merge
refuses to run inside a distributed launch.
"""

from __future__ import annotations

import shutil

import pytest

from tests import tiny_assets as ta


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder (recipe.yaml + output/) trained once by `hpctune train`."""
    folder = tmp_path_factory.mktemp("tiny-run")
    recipe = ta.write_recipe(folder, {"training.logging_steps": 1})
    proc = ta.hpctune("train", str(recipe))
    assert proc.returncode == 0, ta.tail(proc)
    return folder


def test_tiny_sft_trains_and_loss_falls(run_dir):
    m = ta.metrics(run_dir / "output")
    assert m["status"] == "completed"
    assert m["optimizer_steps"] == 30 and m["world_size"] == 1
    curve = [loss for _, loss in m["loss_curve"]]
    assert len(curve) == 30
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 1.5, f"loss did not fall clearly: first 5 steps {first:.3f}, last 5 {last:.3f}"
    assert m["eval_loss"] is not None and m["eval_loss"] < curve[0]
    # what metrics.json promises
    assert m["tokens_per_second"] > 0 and m["samples_per_second"] > 0
    cpu = m["ranks"][0]["memory_mb"]["cpu"]
    assert cpu["peak"] >= cpu["before"] > 0 and cpu["consumed"] >= 0
    assert m["adapter"]["tensors"] == m["adapter"]["expected"] == 28  # 2 layers x 7 linear x (A, B)
    # checkpoints are complete and marked
    from hpctune.train import resume
    assert resume.latest_complete(run_dir / "output").name == "checkpoint-30"
    assert not (run_dir / "output" / ".hpctune-interrupted").exists()


def test_adapter_reloads_merges_and_generates(run_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpctune.train import tiny

    merged_dir = tmp_path / "merged"
    proc = ta.hpctune("merge", str(run_dir), "-o", str(merged_dir))
    assert proc.returncode == 0, ta.tail(proc)
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": "what colour is the lime?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)

    base = AutoModelForCausalLM.from_pretrained(tiny.resolve(tiny.TINY_MODEL), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(**ids).logits
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "output")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        adapted = peft_model(**ids).logits
        merged_logits = merged(**ids).logits
    assert torch.allclose(adapted, merged_logits, atol=1e-4), float((adapted - merged_logits).abs().max())
    assert float((adapted - base_logits).abs().max()) > 0.1  # the adapter changes the model

    out = merged.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:]
    assert len(new) > 0
    assert tok.decode(new, skip_special_tokens=True).strip()  # some text comes out


def test_completed_run_is_not_trained_again(run_dir, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(run_dir, copy)
    before = (copy / "output" / "adapter_model.safetensors").read_bytes()
    proc = ta.train(copy / "recipe.yaml")
    assert proc.returncode == 0, ta.tail(proc)
    assert "already holds a completed run" in proc.stderr
    assert (copy / "output" / "adapter_model.safetensors").read_bytes() == before


def test_merge_refuses_inside_a_distributed_launch(run_dir, tmp_path):
    proc = ta.hpctune("merge", str(run_dir), "-o", str(tmp_path / "m"), WORLD_SIZE="2", LOCAL_RANK="0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "outside DeepSpeed" in proc.stderr and "WORLD_SIZE=2" in proc.stderr
    proc = ta.hpctune("merge", str(run_dir), "-o", str(tmp_path / "m"), ACCELERATE_USE_DEEPSPEED="true")
    assert proc.returncode == 2 and "ACCELERATE_USE_DEEPSPEED" in proc.stderr
    assert not (tmp_path / "m").exists()
