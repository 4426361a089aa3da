"""What happens after an attempt ends: one pure decision from its cause and the profile.

``decide(cause, attempt=, retries_used=, policy=) -> Action``; the host side after the
srun step (job.sbatch, or the submitit launcher) and ``hpctune status`` both call it.

- completed -> done; cancelled -> stop (never continued);
- stopped with a checkpoint (time limit, preemption with the user signal) -> continue: requeue
  (preemption mode requeue) or resubmit (cancel); mode none -> stop, `sbatch` continues it;
- time limit without a checkpoint (warned, the save did not finish) -> continue from the last
  periodic checkpoint while attempts are left, with the advice that makes the next one save;
- transient causes (``retry.causes``: preempted, node failure, NCCL/gloo error or timeout,
  hang) -> retry, at most ``retry.max_retries`` times per run, with the failing node excluded
  (``--exclude``). Slurm cannot change the node list of a running job (measured: `scontrol
  update ExcNodeList` answers "Job is no longer pending execution"), so a retry that excludes
  a node is a resubmission; one that excludes nothing requeues in requeue mode;
- out of memory -> stop with the planner's advice, or ``retry.on_oom: replan``;
- an error in the training, stopped before the first step, unknown -> stop, never retried.

Every attempt, continuations included, counts against ``preemption.max_attempts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpctune.run.causes import Cause

TRANSIENT = ("preempted", "node_failure", "nccl", "hang")


@dataclass(frozen=True)
class Policy:
    causes: tuple = TRANSIENT
    max_retries: int = 2
    exclude_failing_node: bool = True
    on_oom: str = "stop"
    max_attempts: int = 3
    preemption_mode: str = "requeue"

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Policy":
        run = manifest.get("run") or {}
        r = run.get("retry") or {}
        pre = run.get("preemption") or {}
        return cls(causes=tuple(r.get("causes") or TRANSIENT), max_retries=int(r.get("max_retries", 2)),
                   exclude_failing_node=bool(r.get("exclude_failing_node", True)), on_oom=r.get("on_oom") or "stop",
                   max_attempts=int(pre.get("max_attempts") or 1), preemption_mode=pre.get("mode") or "none")


@dataclass(frozen=True)
class Action:
    kind: str                     # done | continue | retry | replan | stop
    how: str | None = None        # requeue | resubmit (continue, retry)
    exclude: tuple = field(default_factory=tuple)
    reason: str = ""
    advice: str = ""

    def shell(self) -> str:
        """One word (and option) for the host-side script: requeue, resubmit [--exclude=a,b], stop, done."""
        if self.kind in ("continue", "retry"):
            return self.how + (f" --exclude={','.join(self.exclude)}" if self.exclude and self.how == "resubmit" else "")
        return "done" if self.kind == "done" else "stop"


OOM_ADVICE = ("lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
              "batch), use more GPUs or nodes, or offload (deepspeed.offload_optimizer: cpu); "
              "`hpctune plan -c CLUSTER RECIPE` lists layouts that fit")
TIME_ADVICE = ("no checkpoint was saved before the time limit: raise preemption.signal_seconds (at least 2 steps "
               "+ one save; `hpctune plan` says how much) or lower training.save_steps")


def decide(cause: Cause, *, attempt: int, retries_used: int, policy: Policy, excluded: tuple = ()) -> Action:
    kind = cause.kind
    if kind == "running":
        raise ValueError("decide() is for an attempt that ended")
    if kind == "completed":
        return Action("done", reason="the training completed")
    if kind == "cancelled":
        return Action("stop", reason="cancelled by the user")
    last = attempt >= policy.max_attempts
    if kind in ("time_limit", "preempted") and cause.checkpointed:
        if policy.preemption_mode == "none":
            return Action("stop", reason="stopped with a checkpoint; this profile's preemption mode is none",
                          advice="`sbatch RUN/job.sbatch` continues it")
        if last:
            return Action("stop", reason=f"stopped with a checkpoint after attempt {attempt} of {policy.max_attempts}",
                          advice="`sbatch RUN/job.sbatch` continues it; raise preemption.max_attempts for longer runs")
        return Action("continue", how="requeue" if policy.preemption_mode == "requeue" else "resubmit",
                      reason=f"{cause.label}: continuing from the checkpoint (attempt {attempt + 1})")
    if kind == "time_limit":
        # warned, but the save did not finish: the next attempt resumes from the last periodic
        # checkpoint (max_attempts bounds a loop that never saves)
        if policy.preemption_mode == "none" or last:
            why = "preemption mode none" if policy.preemption_mode == "none" else f"attempt {attempt} of {policy.max_attempts}"
            return Action("stop", reason=f"time limit, no checkpoint saved in time ({why})", advice=TIME_ADVICE)
        return Action("continue", how="requeue" if policy.preemption_mode == "requeue" else "resubmit",
                      reason=f"time limit, no checkpoint saved in time: continuing from the last periodic checkpoint "
                             f"(attempt {attempt + 1})", advice=TIME_ADVICE)
    if kind in policy.causes:
        if retries_used >= policy.max_retries:
            return Action("stop", reason=f"{cause.label}: not retried, {retries_used} of {policy.max_retries} "
                                         "retries used (retry.max_retries)")
        if last:
            return Action("stop", reason=f"{cause.label}: not retried, attempt {attempt} of {policy.max_attempts} "
                                         "(preemption.max_attempts)")
        exclude = tuple(excluded)
        if policy.exclude_failing_node and cause.node and kind != "preempted" and cause.node not in exclude:
            exclude += (cause.node,)
        how = "resubmit" if exclude or policy.preemption_mode != "requeue" else "requeue"
        what = f" without {', '.join(exclude)}" if exclude else ""
        return Action("retry", how=how, exclude=exclude,
                      reason=f"{cause.label}: retried{what} (retry {retries_used + 1} of {policy.max_retries})")
    if kind == "oom":
        if policy.on_oom == "replan" and not last:
            return Action("replan", reason=f"{cause.label}: re-rendering with the next layout that fits with more headroom")
        return Action("stop", reason=f"{cause.label}: not retried", advice=OOM_ADVICE)
    never = {"error": "an error in the training is never retried",
             "before_first_step": "a run that stops before its first step is never retried (fix the recipe or the environment)"}
    return Action("stop", reason=never.get(kind, f"{cause.label}: not retried (not in retry.causes)"))


def retries_used(causes: list[Cause], policy: Policy) -> int:
    """Retries already made: attempts before the last that ended in a retried cause."""
    return sum(1 for c in causes if c.kind in policy.causes and not c.checkpointed)
