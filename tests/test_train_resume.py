"""Resume by default, and the preemption protocol (SIGUSR2 -> checkpoint -> exit 0).

Proves: a run stopped after a checkpoint (HPCTUNE_STOP_AFTER_STEPS, the test hook that acts
as if SIGUSR2 arrived at that step) leaves a checkpoint and .hpctune-interrupted, exits 0,
continues by itself when started again and ends with exactly the losses of an uninterrupted
run; a real SIGUSR2 does the same; half-written checkpoints are skipped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests import tiny_assets as ta

OVERRIDES = {"training.logging_steps": 1, "training.max_steps": 20, "training.save_steps": 5,
             "training.save_total_limit": 3}


def test_interrupted_run_resumes_to_the_same_losses(tmp_path):
    full = ta.write_recipe(tmp_path / "full", OVERRIDES)
    cut = ta.write_recipe(tmp_path / "cut", OVERRIDES)

    proc = ta.train(full)
    assert proc.returncode == 0, ta.tail(proc)

    proc = ta.train(cut, HPCTUNE_STOP_AFTER_STEPS="8")
    assert proc.returncode == 0, ta.tail(proc)  # interrupted is not a failure
    out = tmp_path / "cut" / "output"
    marker = json.loads((out / ".hpctune-interrupted").read_text())
    assert marker["global_step"] == 8 and "HPCTUNE_STOP_AFTER_STEPS" in marker["reason"]
    assert marker["checkpoint"].endswith("checkpoint-8")  # saved on the stop, not only every 5
    assert not (out / "adapter_model.safetensors").exists()  # no final save when interrupted
    assert ta.metrics(out)["status"] == "interrupted"

    proc = ta.train(cut)  # started again, nothing told: it finds checkpoint-8 itself
    assert proc.returncode == 0, ta.tail(proc)
    assert "resuming from checkpoint-8" in proc.stderr
    assert not (out / ".hpctune-interrupted").exists()

    a, b = ta.metrics(tmp_path / "full" / "output"), ta.metrics(out)
    assert b["status"] == "completed" and b["steps_this_run"] == 12
    assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6, (a["train_loss"], b["train_loss"])
    la, lb = dict(map(tuple, a["loss_curve"])), dict(map(tuple, b["loss_curve"]))
    assert la.keys() == lb.keys() == set(range(1, 21))
    assert max(abs(la[s] - lb[s]) for s in la) <= 1e-6
    assert abs(a["eval_loss"] - b["eval_loss"]) <= 1e-6
    assert ta.max_abs_diff(ta.adapter(tmp_path / "full" / "output"), ta.adapter(out)) <= 1e-6


def test_sigusr2_checkpoints_and_exits_0(tmp_path):
    recipe = ta.write_recipe(tmp_path, {"training.max_steps": 100000, "training.save_steps": 100000,
                                        "training.eval_strategy": "no"})
    proc = subprocess.Popen([ta.PYTHON, "-m", "hpctune.train", str(recipe)], cwd=ta.REPO, env=ta.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        err = []
        for line in proc.stderr:
            err.append(line)
            if "hpctune train: starting" in line or time.time() > deadline:
                break
        time.sleep(1.0)  # a few steps in
        proc.send_signal(signal.SIGUSR2)
        out_, err_rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(err) + err_rest
    out = tmp_path / "output"
    marker = json.loads((out / ".hpctune-interrupted").read_text())
    assert marker["reason"] == "SIGUSR2" and marker["global_step"] > 0
    from hpctune.train import resume
    assert resume.latest_complete(out).name == f"checkpoint-{marker['global_step']}"


def _fake_checkpoint(out, step, *, marker=True, optimizer=True, state=True, weights=True):
    ck = out / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    if state:
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights:
        (ck / "adapter_model.safetensors").write_bytes(b"x" * 16)
    if optimizer:
        (ck / "optimizer.pt").write_bytes(b"x" * 16)
    if marker:
        (ck / ".hpctune-complete").write_text("{}")
    return ck


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    from hpctune.train import resume
    out = tmp_path / "output"
    assert resume.latest_complete(out) is None
    _fake_checkpoint(out, 10)
    _fake_checkpoint(out, 20)
    _fake_checkpoint(out, 30, marker=False)  # killed before every rank finished
    _fake_checkpoint(out, 40, optimizer=False)
    _fake_checkpoint(out, 50, state=False)
    (out / "checkpoint-60").mkdir()  # empty
    assert resume.latest_complete(out).name == "checkpoint-20"


def test_checkpoints_without_markers_are_judged_by_their_files(tmp_path):
    """Checkpoints written by something else (no hpctune markers at all)."""
    from hpctune.train import resume
    out = tmp_path / "output"
    _fake_checkpoint(out, 5, marker=False)
    ck = _fake_checkpoint(out, 9, marker=False, optimizer=False)
    (ck / "latest").write_text("global_step9")  # a DeepSpeed checkpoint ...
    (ck / "global_step9").mkdir()
    assert resume.latest_complete(out).name == "checkpoint-5"  # ... without its optimizer shards
    (ck / "global_step9" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 16)
    assert resume.latest_complete(out).name == "checkpoint-9"
