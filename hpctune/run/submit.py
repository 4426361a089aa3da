"""The one submit service: render the run folder, hand it to the profile's backend, and
register the run. ``hpctune submit`` (one run) and ``hpctune sweep`` (one job array) both
come here, and ``record`` is the one place a registry record is built from a Job.

A failure, Ctrl-C included, removes a folder this call created and registers nothing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hpctune import render
from hpctune.errors import RunError
from hpctune.run import backends, registry
from hpctune.run import folder as layout
from hpctune.run.folder import RunFolder


@dataclass
class Submitted:
    run: registry.Run | None      # None for a dry run
    folder: Path
    dry_run_text: str = ""        # what the backend would start (dry runs)


def record(job, run_id: str, folder: Path, handle: backends.Handle, *, now: float,
           forced=(), sweep: str | None = None, grid: dict | None = None) -> registry.Run:
    """The registry record of a started run: everything from the Job and the run folder."""
    rec, prof = job.recipe, job.profile
    return registry.Run(
        id=run_id, cluster=prof.name, recipe=rec.name, bundle=str(folder),
        output_dir=RunFolder(folder).manifest().output_dir, scheduler=prof.scheduler, nodes=job.nodes,
        procs_per_node=job.procs_per_node, submitted=now, cluster_file=prof.source,
        recipe_file=str(Path(rec.source).absolute()) if rec.source else "",
        partition=job.partition.name if job.partition else None, time_limit=job.time_slurm,
        preemption=prof.preemption.mode, max_attempts=prof.preemption.max_attempts,
        max_steps=rec.training.max_steps if rec.training.max_steps > 0 else None,
        submitted_from=registry.whoami(), jobs=[handle.job_id] if handle.job_id else [], local=handle.local,
        state=handle.state, state_time=now, sweep=sweep, grid=grid,
        forced=[str(f.as_error()) for f in forced])


def register(run: registry.Run, *, forced: bool = False, **event) -> None:
    registry.save(run)
    run.folder.append_event("submitted", job_id=run.jobs[0] if run.jobs else None, attempt=1, **event)
    if forced:
        run.folder.append_event("forced", findings=run.forced)


def submit(job, *, output: str | Path | None = None, overrides=(), forced=(), dry_run: bool = False,
           replace: bool = False) -> Submitted:
    """Render ``job`` into a run folder (default: the profile's runs_dir/RUN-ID) and start it
    (or, ``dry_run``, say what would start). ``forced``: error findings overridden (--force)."""
    now = time.time()
    run_id = registry.new_id(job.recipe.name, now)
    folder = (Path(output) if output else Path(job.profile.runs_dir) / run_id).expanduser().absolute()
    if (folder / layout.RUN_FILE).exists():
        raise RunError(f"{folder} already holds a submitted run; choose another folder with -o")
    backend = backends.get(job.profile.scheduler)
    created = not folder.exists()
    try:
        folder = render.write_bundle(job, folder, tuple(overrides), force=replace)
        if dry_run:
            return Submitted(None, folder, backend.dry_run_text(job, folder, run_id))
        handle = backend.submit(job, folder, run_id)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    run = record(job, run_id, folder, handle, now=now, forced=forced)
    register(run, forced=bool(forced))
    return Submitted(run, folder)


def submit_group(items, *, group_id: str, group_folder: Path, max_parallel: int | None, grids: list[dict],
                 dry_run: bool = False) -> tuple[list[registry.Run], str]:
    """Start rendered folders ``items`` [(job, folder, run_id)] as ONE group (a Slurm job
    array; locally a queue, ``max_parallel`` at a time) and register one run per item,
    tagged with ``group_id``. Returns (runs, dry-run text)."""
    backend = backends.get(items[0][0].profile.scheduler)
    if dry_run:
        return [], backend.dry_run_array_text(items, max_parallel, group_id, group_folder)
    now = time.time()
    handles = backend.submit_array(items, max_parallel, group_id, group_folder)
    out = []
    for i, ((job, folder, run_id), handle, grid) in enumerate(zip(items, handles, grids)):
        run = record(job, run_id, folder, handle, now=now + i * 1e-3, sweep=group_id, grid=grid)
        register(run, sweep=group_id)
        out.append(run)
    return out, ""
