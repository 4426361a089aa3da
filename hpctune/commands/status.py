"""``hpctune status RUN``: one run's state (from its backend: Slurm, or the local
supervisor), nodes, attempts and training progress (progress.json)."""

from __future__ import annotations

import json
import time

import click


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def status_dict(run, st, prog) -> dict:
    return {
        "id": run.id, "state": st.state, "job_id": st.job_id, "jobs": run.job_ids(),
        "nodes": st.nodes, "reason": st.reason, "detail": st.detail, "notes": st.notes,
        "cluster": run.cluster, "recipe": run.recipe, "scheduler": run.scheduler,
        "num_nodes": run.nodes, "processes_per_node": run.procs_per_node, "submitted": run.submitted,
        "attempts": st.attempts, "run_folder": run.bundle, "output_dir": run.output_dir,
        "progress": {"step": prog.step, "max_steps": prog.max_steps, "loss": prog.loss,
                     "finished": prog.finished, "source": prog.source},
    }


@click.command("status")
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def command(run_ref, as_json):
    """Show RUN's state, nodes, attempts and training progress.

    \b
    RUN is a run id (or a unique prefix), a Slurm job id, a run folder, or `last`.
    States come from Slurm (squeue, then sacct); without accounting, finished jobs
    may show as UNKNOWN and the command says so.

    \b
    Examples:
      hpctune status last
      hpctune status tiny-sft-20261122 --json
    """
    from hpctune.run import backends, registry, watch

    run = registry.find(run_ref)
    st = backends.status(run)
    prog = registry.progress(run)
    registry.cache_state(run, st.state)
    from hpctune.run import evidence
    from hpctune.run import hours as hours_mod
    job_runs = evidence.job_runs_of(run)  # one sacct call for the causes and the GPU-hours
    causes = evidence.of_run(run, st.state, job_runs=job_runs)
    if as_json:
        data = status_dict(run, st, prog)
        data["causes"] = [c.to_dict() for c in causes]
        data["why"] = causes[-1].why() if causes and causes[-1].kind != "running" else None
        data["gpu_hours"] = hours_mod.of_run(run, st.state, job_runs=job_runs, causes=causes).to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("run", run.id), ("state", watch.where(st) + (f" - {st.detail}" if st.detail else ""))]
    if causes and causes[-1].kind not in ("running", "completed"):
        rows.append(("why", causes[-1].why()))
        nxt = _next(run, causes)
        if nxt:
            rows.append(("next", nxt))
    layout = f"{run.nodes} node(s) x {run.procs_per_node} process(es)"
    if run.partition:
        layout = f"partition {run.partition}, " + layout
    rows.append(("cluster", f"{run.cluster} ({layout})"))
    rows.append(("recipe", f"{run.recipe} ({run.recipe_file})" if run.recipe_file else run.recipe))
    rows.append(("submitted", f"{_when(run.submitted)} by {run.submitted_from}"))
    if run.job_ids():
        rows.append(("jobs", ", ".join(run.job_ids())))
    rows.append(("attempts", f"{st.attempts} (at most {run.max_attempts})"))
    for c in causes[:-1]:
        rows.append(("", f"attempt {c.attempt}: {c.why()}"))
    for ev in run.events():
        if ev.get("event") in ("requeue", "resubmitted", "stopped", "stop_timeout"):
            rows.append(("", _event_text(ev)))
    rows.append(("progress", prog.describe() or "-"))
    from hpctune.train import tracker
    gh = hours_mod.of_run(run, st.state, job_runs=job_runs, causes=causes)
    rows.append(("GPU-hours", gh.describe()))
    env_diff = _environment_changes(run)
    if env_diff:
        rows.append(("environment", env_diff))
    sync = tracker.sync_command(run.path)
    if sync:
        rows.append(("tracker", f"offline on the nodes; upload with: {sync}"))
    rows.append(("run folder", run.bundle))
    rows.append(("output", run.output_dir))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}".rstrip())
    for note in st.notes:
        click.echo(f"note: {note}")


def _event_text(ev: dict) -> str:
    when = _when(ev.get("time"))
    kind = ev.get("event")
    if kind == "requeue":
        return f"{when}  signalled; checkpoint saved; job {ev.get('job_id')} requeued (attempt {ev.get('attempt')})"
    if kind == "resubmitted":
        return f"{when}  signalled; checkpoint saved; job {ev.get('previous')} ended, resubmitted as job {ev.get('job_id')}"
    if kind == "stopped":
        return f"{when}  signalled; checkpoint saved; not continued ({ev.get('reason')})"
    return f"{when}  signalled; the training did not stop in time (waited {ev.get('waited_s')} s)"


def _environment_changes(run) -> str:
    """The latest attempt's differences from the first attempt's environment (env.json)."""
    from hpctune.run import folder
    numbers = folder.attempt_numbers(run.path)
    for a in reversed(numbers):
        rec = folder.read_json(folder.env_record_path(run.path, a))
        if rec and rec.get("differences"):
            items = rec["differences"]
            return (f"attempt {a} differs from attempt {rec.get('differs_from_attempt')}: " + "; ".join(items[:5])
                    + (f" (+{len(items) - 5} more in {folder.env_record_path(run.path, a)})" if len(items) > 5 else ""))
    return ""


def _next(run, causes) -> str:
    """What the retry policy does (or did) after the last attempt, with its advice."""
    from hpctune.run import folder, retry
    recorded = [r for r in folder.read_jsonl(run.path / folder.CAUSES) if r.get("by") == "after_step"]
    last = causes[-1]
    for rec in reversed(recorded):
        if rec.get("attempt") == last.attempt:
            return rec.get("reason") or ""
    policy = retry.Policy.from_manifest(folder.read_manifest(run.path))
    action = retry.decide(last, attempt=last.attempt or len(causes), policy=policy,
                          retries_used=retry.retries_used(causes[:-1], policy))
    text = action.reason
    if last.kind == "oom":
        from hpctune.run import replan
        found = replan.next_layout(run.path)
        if found:
            sets, what = found
            man = folder.read_manifest(run.path)
            text += (f"; the planner's next layout with more headroom: {what}: `hpctune submit -c "
                     f"{(man.get('cluster') or {}).get('file')} {(man.get('recipe') or {}).get('file')} "
                     + " ".join(f"--set {s}" for s in sets) + "`")
            return text
    if action.advice:
        text += f"; {action.advice}"
    if action.kind == "retry" and last.kind in ("node_failure", "nccl", "hang"):
        # No host-side decision was recorded: a run submitted through submitit, whose batch
        # script ends with the step (job.sbatch's host side retries by itself).
        excl = f"--exclude={','.join(action.exclude)} " if action.exclude else ""
        text += (f"; nothing retried it (submitted through submitit): `sbatch {excl}{run.path}/job.sbatch` "
                 "resumes from the last checkpoint")
    return text
