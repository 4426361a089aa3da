"""``python -m hpctune.run.after_step RUN_DIR --job-id J --step-rc RC [--deadline]``

The host side's one question after the training step of an attempt ended (job.sbatch after
srun; the submitit launcher of rank 0 after launch.sh): why did it end, and what next?
Classifies the attempt (hpctune.run.causes), decides (hpctune.run.retry), records both
(``logs/causes.jsonl`` and an ``after_step`` event) and prints ONE shell-safe line:

    requeue | resubmit [--exclude=n2,n3] | stop | done

The caller runs ``scontrol requeue`` / ``sbatch`` itself: this never changes anything in
Slurm; it only reads (sacct, sinfo), and degrades to the run folder where they are missing
(inside a container). ``--deadline``: called shortly before the job's time limit while the
step still runs (the save overran): the attempt is classified "time limit". On an internal
error it prints ``stop`` (never a loop) and says why on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpctune.run import evidence, folder, retry
from hpctune.run.causes import Cause, classify


def verdict(bundle: Path, *, job_id: str, step_rc: int | None, deadline: bool = False,
            environ=None, job_runs: dict | None = None, down: list | None = None) -> tuple[Cause, retry.Action]:
    bundle = Path(bundle)
    man = folder.read_manifest(bundle)
    policy = retry.Policy.from_manifest(man)
    attempt = folder.attempt_from_env(environ)
    events = folder.read_jsonl(bundle / folder.EVENTS)
    cancel = any(ev.get("event") == "cancel_requested" for ev in events)
    if job_runs is None:
        job_runs = evidence.sacct([job_id])
    evs = evidence.gather(bundle, state="", job_runs=job_runs, down=down if down is not None else evidence.down_nodes(),
                          cancel_requested=cancel)
    ev = next((e for e in evs if e.attempt == attempt), None)
    if ev is None:  # launch.sh never recorded this attempt (it died at once): the bare facts
        from hpctune.run.causes import Evidence
        ev = Evidence(attempt=attempt, job_id=job_id, cancel_requested=cancel)
    if step_rc is not None and not ev.exit_code:
        ev.exit_code = f"{step_rc}:0"
    if deadline:
        marker = ev.interrupted
        cause = Cause("time_limit", checkpointed=marker is not None, attempt=attempt, job_id=job_id,
                      detail="the job's time limit came while the step still ran", evidence="deadline")
    else:
        cause = classify(ev)
        if cause.kind == "running":
            cause = Cause("unknown", attempt=attempt, job_id=job_id, first_line=f"step exit code {step_rc}")
    # what the host decided after earlier attempts (not the login side's cached verdicts)
    earlier = [c for a, c in sorted(evidence.recorded(bundle, by="after_step").items()) if a < attempt]
    excluded: tuple = ()
    for rec in folder.read_jsonl(bundle / folder.CAUSES):
        if rec.get("by") != "after_step":
            continue
        for node in rec.get("exclude") or []:
            if node not in excluded:
                excluded += (node,)
    action = retry.decide(cause, attempt=attempt, retries_used=retry.retries_used(earlier, policy), policy=policy,
                          excluded=excluded)
    return cause, action


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpctune.run.after_step")
    ap.add_argument("run_dir")
    ap.add_argument("--job-id", default="")
    ap.add_argument("--step-rc", type=int, default=None)
    ap.add_argument("--deadline", action="store_true")
    args = ap.parse_args(argv)
    bundle = Path(args.run_dir)
    try:
        cause, action = verdict(bundle, job_id=args.job_id, step_rc=args.step_rc, deadline=args.deadline)
        evidence.record(bundle, cause, action=action.kind, how=action.how, exclude=list(action.exclude),
                        reason=action.reason, by="after_step")
        folder.append_jsonl(bundle / folder.EVENTS, {
            "event": "after_step", "job_id": args.job_id, "attempt": cause.attempt, "cause": cause.kind,
            "why": cause.why(), "action": action.shell(), "reason": action.reason, "advice": action.advice or None})
        print(f"hpctune: attempt {cause.attempt} ended: {cause.why()}; {action.reason}", file=sys.stderr)
        print(action.shell())
    except Exception as e:  # noqa: BLE001 - the host must get an answer that cannot loop
        print(f"hpctune: after_step failed ({type(e).__name__}: {e}); stopping", file=sys.stderr)
        print("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
