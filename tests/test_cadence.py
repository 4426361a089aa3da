"""Checkpoint cadence against the time limit (issue #11 item 6): the two rules on the shipped
workloads, from the planner's step and save times (hpctune.plan.job_plan.time_plan)."""

from __future__ import annotations

import yaml

from hpctune import resources
from hpctune.plan import job_plan
from hpctune.prepare import prepare


def _rules(prep, rule_id):
    return [f for f in prep.findings if f.rule == rule_id]


def test_shipped_workloads_warn_early_enough_and_checkpoint_within_the_run():
    for cluster, recipe in (("example-h100", "llama2-70b-lora-zero3"), ("example-a100-40g", "llama2-70b-qlora-zero3"),
                            ("example-a100-80g", "falcon-180b-lora-zero3"),
                            ("example-a100-40g", "bart-large-lora-zero3-offload")):
        prep = prepare(cluster, recipe)
        tp = job_plan.time_plan(prep.job)
        assert prep.job.profile.preemption.signal_seconds >= 2 * tp.step_seconds + tp.save_seconds, recipe
        t = prep.job.recipe.training
        if t.save_strategy == "steps":
            assert tp.total_steps and t.save_steps < tp.total_steps, (recipe, t.save_steps, tp.total_steps)
        assert not _rules(prep, "signal-lead") and not _rules(prep, "save-cadence"), recipe


def test_falcon_on_the_old_120s_warning(tmp_path):
    prof = yaml.safe_load((resources.clusters_dir() / "example-a100-80g.yaml").read_text())
    prof["preemption"]["signal_seconds"] = 120
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    (f,) = _rules(prepare(str(tmp_path / "p.yaml"), "falcon-180b-lora-zero3"), "signal-lead")
    assert "120 s from the time-limit warning" in f.message and "at least 1" in f.fix


def test_save_steps_beyond_the_run_and_beyond_one_attempt():
    (f,) = _rules(prepare("example-h100", "llama2-70b-lora-zero3", ("training.save_steps=100",)), "save-cadence")
    assert "not less than the 25 optimizer steps" in f.message and "about 12" in f.fix
    # QLoRA: ~800 steps of ~30 s; 200 steps between checkpoints outlast a 1-hour attempt
    (f,) = _rules(prepare("example-a100-40g", "llama2-70b-qlora-zero3",
                          ("training.save_steps=200", "layout.time=01:00:00")), "save-cadence")
    assert "longer than one attempt under the time limit 01:00:00" in f.message, f.message
