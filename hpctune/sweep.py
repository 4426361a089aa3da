"""``hpctune sweep``: one run per combination of ``--grid`` values, as ONE Slurm job array.

1. ``parse_grid``: ``--grid key=v1,v2`` -> keys and raw values; each value is applied like
   a ``--set`` value (``key=v``, parsed as YAML by ``hpctune.yamlfile.apply_overrides``).
2. ``plan``: loads the profile and the recipe file ONCE, then builds and checks a Job for
   every combination (``hpctune.prepare``: the same composition as check/render/submit).
   The first bad combination raises a one-line ConfigError naming it; nothing is written.
   On Slurm every combination must ask for the same resources (partition, nodes, GPUs,
   CPUs, memory, time): the tasks of one job array share one request.
3. ``render``: one bundle per combination under the sweep folder
   (``runs_dir/<sweep-id>/<run-id>/``) plus ``sweep.json``.
4. ``submit``: Slurm: every combination's ``NodeLauncher`` in one ``executor.batch()``, so
   submitit makes exactly one ``sbatch --array=0-N%P`` call; each task runs its own bundle
   (own output folder, resume, metrics). ``-c local``: a detached queue runner starts the
   bundles through the local dispatcher, at most ``max_parallel`` at a time.
   Each combination is then registered as a run of its own, tagged with the sweep id.

Nothing here imports submitit or torch at module level.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpctune.errors import ConfigError, RunError

SWEEP_FILE = "sweep.json"


@dataclass
class Combination:
    index: int
    values: dict                 # grid key -> value text, as given
    overrides: tuple             # the --set overrides, then this combination's grid values
    job: object                  # hpctune.job.Job
    findings: list = field(default_factory=list)  # its warnings (errors stop the sweep)
    run_id: str = ""
    bundle: Path | None = None

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass
class Sweep:
    id: str
    cluster: str
    recipe: str
    grid: list                   # [(key, [values])]
    sets: tuple
    combinations: list
    folder: Path | None = None
    warnings: list = field(default_factory=list)

    @property
    def profile(self):
        return self.combinations[0].job.profile

    @property
    def slurm(self) -> bool:
        return self.profile.scheduler == "slurm"


def parse_grid(items) -> list:
    """``["a.b=1,2", "c=x"]`` -> ``[("a.b", ["1", "2"]), ("c", ["x"])]``."""
    out: list = []
    seen: set = set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key or not raw.strip():
            raise ConfigError("--grid", item, "expected KEY=V1,V2,..., for example training.learning_rate=1e-4,2e-4")
        if any(v == "" for v in values):
            raise ConfigError("--grid", item, "has an empty value (values are separated by commas)")
        if key in seen:
            raise ConfigError("--grid", key, "is given twice; list all its values in one --grid")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError("--grid", key, f"repeats value {dup[0]!r}")
        seen.add(key)
        out.append((key, values))
    if not out:
        raise ConfigError("--grid", "", "a sweep needs at least one --grid KEY=V1,V2,...")
    return out


def _shape(job) -> tuple:
    """What one Slurm job array request fixes for every task."""
    return (job.partition.name if job.partition else None, job.nodes, job.procs_per_node, job.gpus_per_node,
            job.time_slurm, job.cpus_per_task, job.mem_gib)


_SHAPE_NAMES = ("partition", "nodes", "processes per node", "GPUs per node", "time", "CPUs per task", "memory GiB")


def plan(cluster: str, recipe: str, grid_items, sets=(), *, sweep_id: str | None = None) -> Sweep:
    """Build and check every combination; raise ConfigError (one line) on the first bad one."""
    from hpctune import profile as profile_mod
    from hpctune import recipe as recipe_mod
    from hpctune import runs, yamlfile
    from hpctune.prepare import prepare

    grid = parse_grid(grid_items)
    sets = tuple(sets)
    prof = profile_mod.load(cluster)
    path = recipe_mod.find(str(recipe))
    base = yamlfile.read(path)
    keys = [k for k, _ in grid]
    total = 1
    for _, vals in grid:
        total *= len(vals)
    combos: list[Combination] = []
    failed: list[tuple[Combination, ConfigError]] = []
    for i, vals in enumerate(itertools.product(*[v for _, v in grid])):
        values = dict(zip(keys, vals))
        overrides = sets + tuple(f"{k}={v}" for k, v in values.items())
        combo = Combination(i, values, overrides, None)
        try:
            data = yamlfile.apply_overrides(copy.deepcopy(base), overrides)
            prep = prepare(prof, recipe_mod.parse(data, str(path))).raise_errors()
            combo.job, combo.findings = prep.job, prep.warnings
        except ConfigError as e:
            failed.append((combo, e))
            continue
        combos.append(combo)
    if failed:
        combo, err = failed[0]
        lines = str(err).splitlines()
        more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        others = f"; {len(failed) - 1} other combination(s) fail too" if len(failed) > 1 else ""
        raise ConfigError(f"sweep combination {combo.index + 1} of {total} ({combo.describe()})", "",
                          f"{lines[0]}{more}{others}. Nothing was submitted.")
    first = combos[0].job
    if prof.scheduler == "slurm":
        want = _shape(first)
        for combo in combos[1:]:
            got = _shape(combo.job)
            if got != want:
                diffs = [f"{n} {a} vs {b}" for n, a, b in zip(_SHAPE_NAMES, want, got) if a != b]
                changed = [k for k in keys if combo.values[k] != combos[0].values[k]]
                raise ConfigError(
                    "--grid", ", ".join(changed) or ", ".join(keys),
                    f"combinations ({combos[0].describe()}) and ({combo.describe()}) ask for different resources "
                    f"({'; '.join(diffs)}): the runs of one Slurm job array share one request. Set layout "
                    "values with --set, and run one sweep per layout.")
    warnings: list = []
    for combo in combos:
        for w in combo.findings:
            text = str(w.as_error())
            if text not in warnings:
                warnings.append(text)
    sid = sweep_id or runs.new_id(f"{first.recipe.name}-sweep")
    width = len(str(len(combos) - 1))
    for combo in combos:
        combo.run_id = f"{sid}-{combo.index:0{width}d}"
    return Sweep(id=sid, cluster=cluster, recipe=str(path), grid=grid, sets=sets, combinations=combos,
                 warnings=warnings)


def render(sweep: Sweep, folder: str | Path | None = None) -> Path:
    """Write one bundle per combination and ``sweep.json``; a failure removes the folder."""
    from hpctune import render as render_mod

    folder = Path(folder) if folder else Path(sweep.profile.runs_dir) / sweep.id
    folder = folder.expanduser().absolute()
    if folder.exists() and any(folder.iterdir()):
        raise RunError(f"{folder} exists and is not empty; choose another folder with -o")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for combo in sweep.combinations:
            combo.bundle = render_mod.write_bundle(combo.job, folder / combo.run_id, combo.overrides)
        sweep.folder = folder
        write_record(sweep)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def write_record(sweep: Sweep, **extra) -> None:
    data = {
        "id": sweep.id, "cluster": sweep.profile.name, "cluster_file": sweep.profile.source,
        "recipe": sweep.recipe, "grid": {k: v for k, v in sweep.grid}, "set": list(sweep.sets),
        "runs": [{"index": c.index, "run_id": c.run_id, "bundle": str(c.bundle), "values": c.values}
                 for c in sweep.combinations],
        **extra,
    }
    tmp = sweep.folder / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, sweep.folder / SWEEP_FILE)


def _output_dir(bundle: Path) -> str:
    try:
        return json.loads((bundle / "manifest.json").read_text())["output_dir"]
    except (OSError, ValueError, KeyError):
        return str(bundle / "output")


# --- Slurm: one job array ---------------------------------------------------------------

def array_parameters(sweep: Sweep, max_parallel: int | None) -> tuple[dict, list]:
    """(the array's executor parameters, one NodeLauncher per combination)."""
    from hpctune.dispatch import slurm as sd

    launchers = [sd.launcher_for(c.job, c.bundle, c.run_id) for c in sweep.combinations]
    params = copy.deepcopy(launchers[0].executor_params)
    extra = dict(params.get("additional_parameters", {}))
    # Each launcher sets HPCTUNE_RUN_ID for its own launch.sh; the array carries the sweep id.
    extra["export"] = f"ALL,HPCTUNE_SWEEP_ID={sweep.id}"
    params["additional_parameters"] = extra
    params["array_parallelism"] = max(1, min(max_parallel or len(launchers), len(launchers)))
    return params, launchers


def array_script(sweep: Sweep, max_parallel: int | None) -> str:
    """The sbatch script submitit would submit for the array (for --dry-run)."""
    from hpctune.dispatch import slurm as sd

    params, launchers = array_parameters(sweep, max_parallel)
    ex = sd.make_executor(sweep.folder / sd.SUBMITIT_DIR, params, launchers[0].max_attempts, launchers[0].python)
    if len(launchers) > 1:
        ex.parameters["map_count"] = len(launchers)
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")  # noqa: SLF001


def submit_array(sweep: Sweep, max_parallel: int | None) -> list[str]:
    """One ``sbatch --array`` for every combination; the task ids (``A_0``, ``A_1``, ...)."""
    import contextlib
    import io

    from submitit.core import utils as submitit_utils

    from hpctune.dispatch import slurm as sd

    params, launchers = array_parameters(sweep, max_parallel)
    folder = sweep.folder / sd.SUBMITIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ex = sd.make_executor(folder, params, launchers[0].max_attempts, launchers[0].python)
    noise = io.StringIO()
    try:
        with contextlib.redirect_stderr(noise), contextlib.redirect_stdout(noise), sd._outside_any_job():  # noqa: SLF001
            with ex.batch():
                jobs = [ex.submit(launcher) for launcher in launchers]
    except submitit_utils.FailedJobError as e:
        raise RunError(sd.explain_refusal(str(e) or noise.getvalue(), params, sweep.combinations[0].job)) from None
    except FileNotFoundError as e:
        raise RunError(f"cannot run sbatch: {e}") from None
    except submitit_utils.FailedSubmissionError as e:
        raise RunError(f"sbatch answered something unexpected: {str(e).splitlines()[0]}") from None
    return [str(j.job_id) for j in jobs]


# --- local: a queue runner ---------------------------------------------------------------

def start_local(sweep: Sweep, max_parallel: int | None) -> int:
    """Start the detached queue runner for a ``-c local`` sweep; return its pid."""
    import subprocess

    n = max(1, min(max_parallel or 1, len(sweep.combinations)))
    (sweep.folder / "logs").mkdir(parents=True, exist_ok=True)
    with open(sweep.folder / "logs" / "local-queue.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpctune.sweep", str(sweep.folder), str(n)],
                                cwd=str(sweep.folder), env={**os.environ, "HPCTUNE_SWEEP_ID": sweep.id},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc.pid


def run_local_queue(folder: Path, max_parallel: int) -> int:
    """Start each bundle through ``hpctune.dispatch.local`` when a slot is free; skip
    runs cancelled before their turn (``hpctune cancel`` writes their exit file)."""
    from hpctune import runs
    from hpctune.dispatch import local

    data = json.loads((folder / SWEEP_FILE).read_text())
    pending = [(Path(r["bundle"]), r["run_id"]) for r in data["runs"]]
    active: dict[int, Path] = {}
    while pending or active:
        for pid in list(active):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del active[pid]
        while pending and len(active) < max_parallel:
            bundle, run_id = pending.pop(0)
            cancelled = any(ev.get("event") == "cancel_requested" for ev in runs.read_jsonl(bundle / runs.EVENTS))
            if cancelled or (bundle / local.EXIT).exists():
                continue
            active[local.start(bundle, run_id)] = bundle
            print(f"started {run_id}", flush=True)
        time.sleep(0.5)
    return 0


# --- registering -------------------------------------------------------------------------

def register(sweep: Sweep, job_ids: list | None, now: float) -> list:
    """One registry entry per combination, tagged with the sweep id."""
    from hpctune import runs

    out = []
    for i, combo in enumerate(sweep.combinations):
        job, rec = combo.job, combo.job.recipe
        jid = job_ids[i] if job_ids else None
        run = runs.Run(
            id=combo.run_id, cluster=job.profile.name, recipe=rec.name, bundle=str(combo.bundle),
            output_dir=_output_dir(combo.bundle), scheduler=job.profile.scheduler, nodes=job.nodes,
            procs_per_node=job.procs_per_node, submitted=now + i * 1e-3, cluster_file=job.profile.source,
            recipe_file=str(Path(rec.source).absolute()) if rec.source else "",
            partition=job.partition.name if job.partition else None, time_limit=job.time_slurm,
            preemption=job.profile.preemption.mode, max_attempts=job.profile.preemption.max_attempts,
            max_steps=rec.training.max_steps if rec.training.max_steps > 0 else None,
            submitted_from=runs.whoami(), jobs=[jid] if jid else [],
            local=None if jid else {"host": _hostname(), "pid": None},
            state="PENDING", state_time=now, sweep=sweep.id, grid=dict(combo.values))
        runs.save(run)
        runs.append_event(combo.bundle, "submitted", job_id=jid, attempt=1, sweep=sweep.id)
        out.append(run)
    return out


def submit(sweep: Sweep, max_parallel: int | None = None) -> tuple[list, str | None]:
    """Submit a rendered sweep; register its runs. Returns (runs, array job id or None).
    A refusal removes the sweep folder and registers nothing."""
    now = time.time()
    try:
        if sweep.slurm:
            job_ids = submit_array(sweep, max_parallel)
            array_id = job_ids[0].split("_")[0]
            write_record(sweep, array_job_id=array_id, job_ids=job_ids, submitted=now)
        else:
            job_ids, array_id = None, None
            write_record(sweep, submitted=now, max_parallel=max_parallel or 1)
    except BaseException:
        shutil.rmtree(sweep.folder, ignore_errors=True)
        raise
    registered = register(sweep, job_ids, now)
    if not sweep.slurm:
        start_local(sweep, max_parallel)
    return registered, array_id


def _hostname() -> str:
    import socket
    return socket.gethostname()


# --- reading a sweep back ---------------------------------------------------------------

def sweep_runs(ref: str) -> tuple[str, list]:
    """(sweep id, its runs in grid order) for a sweep id or a unique prefix of one."""
    from hpctune import runs

    every = [r for r in runs.all_runs() if r.sweep]
    ids = sorted({r.sweep for r in every})
    hits = [s for s in ids if s == ref] or [s for s in ids if s.startswith(ref)]
    if not hits:
        raise RunError(f"no sweep {ref!r} in {runs.registry_dir()} (sweeps: {', '.join(ids[-5:]) or 'none'})")
    if len(hits) > 1:
        raise RunError(f"{ref!r} matches {len(hits)} sweeps ({', '.join(hits[:5])}): give more of the id")
    return hits[0], sorted([r for r in every if r.sweep == hits[0]], key=lambda r: r.id)


def final_losses(run) -> tuple[float | None, float | None]:
    """(train loss, eval loss) from the run's metrics.json (None when not there)."""
    try:
        m = json.loads((Path(run.output_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None, None

    def num(v):
        try:
            return float(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    return num(m.get("train_loss")), num(m.get("eval_loss"))


if __name__ == "__main__":
    sys.exit(run_local_queue(Path(sys.argv[1]), int(sys.argv[2])))
