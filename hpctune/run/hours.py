"""GPU-hours of a run: allocated, training kept, lost to failures and redone steps. Pure.

Per attempt (hpctune.run.evidence gathers the inputs):

- allocated: Slurm's elapsed time x the GPUs it allocated (sacct ElapsedRaw, AllocTRES
  gres/gpu); without accounting (or for -c local), from the attempt's start to its last
  heartbeat x the run's GPUs;
- the attempt's training steps (from its heartbeats: the step it started from, the last step
  it reached, and the time per step between its first and last heartbeat) are "kept" up to
  the step the next attempt resumed from (or the end, for the last attempt), and "redone"
  after it (computed, then thrown away with the attempt);
- lost to failures: everything an attempt that ended in a failure was allocated, except the
  steps it kept (attempts that stopped with a checkpoint or completed lose only their
  redone steps). Start-up, saving and evaluation are the rest of "allocated".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NOT_FAILURES = ("completed", "running", "time_limit", "preempted")


@dataclass
class AttemptHours:
    attempt: int
    allocated: float = 0.0
    kept: float = 0.0
    redone: float = 0.0
    lost: float = 0.0
    steps_kept: int = 0
    steps_redone: int = 0
    source: str = ""


@dataclass
class Hours:
    allocated: float = 0.0
    kept: float = 0.0
    redone: float = 0.0
    lost: float = 0.0
    gpus_known: bool = True
    attempts: list = None

    def to_dict(self) -> dict:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items() if k != "attempts"},
                "attempts": [asdict(a) for a in self.attempts or []]}

    def describe(self) -> str:
        if not self.gpus_known:
            return "no GPUs allocated"
        text = f"{self.allocated:.2f} allocated, {self.kept:.2f} training kept, {self.lost:.2f} lost to failures"
        if self.redone:
            text += f" ({self.redone:.2f} in redone steps)"
        return text


def _span(beats: dict) -> tuple[int, int, float, float | None] | None:
    """(start step, last step, seconds per step, last heartbeat time) from an attempt's heartbeats."""
    if not beats:
        return None
    hb = max(beats.values(), key=lambda h: (int(h.get("step") or 0), float(h.get("time") or 0)))
    start, last = int(hb.get("start_step") or 0), int(hb.get("step") or 0)
    t0, t1 = hb.get("train_begin"), hb.get("time")
    per = (float(t1) - float(t0)) / (last - start) if t0 and t1 and last > start else 0.0
    return start, last, per, max(float(h.get("time") or 0) for h in beats.values())


def compute(attempts: list[dict], *, gpus_per_attempt: int) -> Hours:
    """``attempts``: oldest first, each {attempt, cause (kind), heartbeats, elapsed_s, gpus,
    started, completed_step}; ``gpus_per_attempt``: the run's GPUs when Slurm does not say."""
    out = Hours(attempts=[])
    spans = [_span(a.get("heartbeats") or {}) for a in attempts]
    for i, a in enumerate(attempts):
        gpus = int(a.get("gpus") or gpus_per_attempt or 0)
        h = AttemptHours(attempt=a["attempt"])
        span = spans[i]
        elapsed = float(a.get("elapsed_s") or 0.0)
        h.source = "sacct" if elapsed else "heartbeats"
        if not elapsed and span and a.get("started"):
            elapsed = max(0.0, span[3] - float(a["started"]))
        h.allocated = elapsed * gpus / 3600
        if span:
            start, last, per, _ = span
            nxt = next((s[0] for s in spans[i + 1:] if s), None)
            end = min(last, nxt) if nxt is not None else last
            h.steps_kept = max(0, end - start)
            h.steps_redone = max(0, last - max(end, start))
            h.kept = h.steps_kept * per * gpus / 3600
            h.redone = h.steps_redone * per * gpus / 3600
        failed = a.get("cause") not in NOT_FAILURES
        h.lost = max(0.0, h.allocated - h.kept) if failed else h.redone
        out.attempts.append(h)
        out.allocated += h.allocated
        out.kept += h.kept
        out.redone += h.redone
        out.lost += h.lost
    out.gpus_known = bool(gpus_per_attempt) or any(a.get("gpus") for a in attempts)
    return out


def of_run(run, state: str = "", *, job_runs: dict | None = None, causes: list | None = None) -> Hours:
    """A registered run's GPU-hours (reads the run folder and, for Slurm runs, sacct).
    ``causes``: evidence.of_run's answer for the same run and state, when the caller has it."""
    from pathlib import Path

    from hpctune.run import evidence, folder

    bundle = Path(run.bundle)
    if job_runs is None:
        job_runs = evidence.job_runs_of(run)
    evs = evidence.gather(bundle, state=state, job_runs=job_runs, output_dir=run.output_dir)
    found = causes if causes is not None else evidence.of_run(run, state, job_runs=job_runs)
    man = folder.read_manifest(bundle)
    lay = man.get("layout") or {}
    gpus = int(lay.get("gpus_per_node") or 0) * int(lay.get("nodes") or 1)
    rows = []
    by_job: dict[str, int] = {}
    for ev, cause in zip(evs, found):
        nth = by_job.get(ev.job_id or "", 0)
        by_job[ev.job_id or ""] = nth + 1
        runs = job_runs.get(ev.job_id or "", [])
        sr = runs[nth] if nth < len(runs) else None
        rows.append({"attempt": ev.attempt, "cause": cause.kind, "heartbeats": ev.heartbeats, "started": ev.started,
                     "elapsed_s": sr.elapsed_s if sr else 0.0, "gpus": sr.gpus if sr else 0})
    return compute(rows, gpus_per_attempt=gpus)
