"""Checkpoint cadence against the time limit (issue #11 item 6), from the planner's time plan
(``job_plan.time_plan``: step and save time of this layout, calibrated by `hpctune plan
--calibrate RUN` from the steps an earlier run measured).

- ``signal-lead``: the time-limit warning (USR2, ``preemption.signal_seconds`` before the
  kill) must leave time for up to two optimizer steps (the stop is checked at a step's end)
  plus one checkpoint; else the save starts too late and the job ends without one.
- ``save-cadence``: with ``save_strategy: steps``, checkpoints must come within the run and
  within one attempt; else a time limit or a preemption loses all the work since the start.
"""

from __future__ import annotations

import math
from typing import Iterable

from hpctune.rules.book import Finding, rule


_LAST: list = [None, None]  # (job, its plan): both rules of one `prepare` share one plan


def _time_plan(job):
    """The plan, or None when the planner cannot estimate this job (unknown model shape).
    Computed once per Job object: the plan reads the model's shape, the calibration and, for
    a local .jsonl, the whole training file."""
    if _LAST[0] is not job:
        _LAST[:] = [job, _compute(job)]
    return _LAST[1]


def _compute(job):
    from hpctune.errors import ConfigError
    from hpctune.plan import job_plan
    if job.profile.scheduler != "slurm":
        return None
    try:
        return job_plan.time_plan(job)
    except (ConfigError, ValueError, KeyError, ZeroDivisionError):
        return None


@rule("signal-lead", "the time-limit warning leaves time for two optimizer steps and a checkpoint", scope="job",
      pains=(18,))
def signal_lead(job) -> Iterable[Finding]:
    pre = job.profile.preemption
    if pre.mode == "none":
        return
    tp = _time_plan(job)
    if tp is None:
        return
    need = tp.advice["signal_seconds_min"]
    if pre.signal_seconds < need:
        fix = f"set preemption.signal_seconds to at least {need} in {job.profile.source}"
        if need > 3600:
            fix += " (over an hour: also make one step shorter, e.g. fewer gradient_accumulation_steps)"
        yield Finding("signal-lead", "warning", job.profile.source, "preemption.signal_seconds",
                      f"{pre.signal_seconds} s from the time-limit warning to the kill is less than two optimizer "
                      f"steps plus a checkpoint of this job (about {need} s: a step {tp.step_seconds:.0f} s, a save "
                      f"{tp.save_seconds:.0f} s, by `hpctune plan`): the save would start too late",
                      fix + "; `hpctune plan --calibrate RUN` corrects the estimate from a run's measured steps")


@rule("save-cadence", "periodic checkpoints happen within the run and within one attempt", scope="job", pains=(18,))
def save_cadence(job) -> Iterable[Finding]:
    t = job.recipe.training
    if t.save_strategy != "steps" or job.profile.preemption.mode == "none":
        return
    tp = _time_plan(job)
    if tp is None:
        return
    advice = tp.advice["save_steps"]
    total = tp.total_steps
    if total and t.save_steps >= total:
        better = max(1, min(advice, total // 2))
        yield Finding("save-cadence", "warning", job.recipe.source, "training.save_steps",
                      f"save_steps {t.save_steps} is not less than the {total} optimizer steps of the whole run "
                      "(by the plan): no checkpoint before the end, so a time limit or a preemption loses all "
                      "the work",
                      f"set training.save_steps to about {better}")
        return
    attempt_s = job.time_minutes * 60 - tp.load_seconds - job.profile.preemption.signal_seconds
    if tp.step_seconds > 0 and attempt_s > 0 and t.save_steps * tp.step_seconds > attempt_s:
        fit = max(1, math.floor(attempt_s / tp.step_seconds / 2))
        yield Finding("save-cadence", "warning", job.recipe.source, "training.save_steps",
                      f"a checkpoint every {t.save_steps} steps is about {t.save_steps * tp.step_seconds / 3600:.1f} h "
                      f"of training, longer than one attempt under the time limit {job.time_slurm}: every "
                      "attempt would end before its first checkpoint",
                      f"set training.save_steps to at most {fit}")
