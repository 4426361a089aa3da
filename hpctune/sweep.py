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
4. ``submit``: every combination's folder goes to ``hpctune.run.submit.submit_group``, the
   submit service that ``hpctune submit`` uses too: on Slurm ONE ``sbatch --array=0-N%P``
   (the slurm backend batches the launchers), each task running its own bundle (own output
   folder, resume, metrics); ``-c local``: the local backend's detached queue runner, at
   most ``max_parallel`` at a time. Each combination is registered as a run of its own,
   tagged with the sweep id.

Nothing here imports submitit or torch at module level.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
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
    from hpctune import yamlfile
    from hpctune.prepare import prepare
    from hpctune.run import registry

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
    from hpctune.run import backends
    if backends.get(prof.scheduler).one_request_per_group:
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
    sid = sweep_id or registry.new_id(f"{first.recipe.name}-sweep")
    width = len(str(len(combos) - 1))
    for combo in combos:
        combo.run_id = f"{sid}-{combo.index:0{width}d}"
    return Sweep(id=sid, cluster=cluster, recipe=str(path), grid=grid, sets=sets, combinations=combos,
                 warnings=warnings)


def render(sweep: Sweep, folder: str | Path | None = None) -> Path:
    """Write one bundle per combination and ``sweep.json``; a failure removes the folder."""
    from hpctune import render as render_mod

    from hpctune.run import place

    folder = Path(folder) if folder else Path(sweep.profile.runs_dir) / sweep.id
    folder = place.target(folder)  # no symlink, not inside hpctune, a folder
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
    from hpctune.run.folder import write_json
    write_json(sweep.folder / SWEEP_FILE, data)


# --- submitting: one group (a Slurm job array, or a local queue) -------------------------

def _items(sweep: Sweep) -> list:
    return [(c.job, c.bundle, c.run_id) for c in sweep.combinations]


def array_script(sweep: Sweep, max_parallel: int | None) -> str:
    """What would be submitted for the sweep (for --dry-run): the array's sbatch script."""
    from hpctune.run import submit as submit_service
    return submit_service.submit_group(_items(sweep), group_id=sweep.id, group_folder=sweep.folder,
                                       max_parallel=max_parallel, grids=[], dry_run=True)[1]


def submit(sweep: Sweep, max_parallel: int | None = None) -> tuple[list, str | None]:
    """Submit a rendered sweep as ONE group; register its runs. Returns (runs, array job id or
    None). A refusal removes the sweep folder and registers nothing."""
    from hpctune.run import submit as submit_service
    try:
        registered, _ = submit_service.submit_group(
            _items(sweep), group_id=sweep.id, group_folder=sweep.folder, max_parallel=max_parallel,
            grids=[dict(c.values) for c in sweep.combinations])
        job_ids = [r.jobs[0] for r in registered if r.jobs]
        array_id = job_ids[0].split("_")[0] if job_ids else None
        write_record(sweep, array_job_id=array_id, job_ids=job_ids or None, submitted=time.time(),
                     max_parallel=max_parallel or (None if array_id else 1))
    except BaseException:
        shutil.rmtree(sweep.folder, ignore_errors=True)
        raise
    return registered, array_id


# --- reading a sweep back ---------------------------------------------------------------

def sweep_runs(ref: str) -> tuple[str, list]:
    """(sweep id, its runs in grid order) for a sweep id or a unique prefix of one."""
    from hpctune.run import registry

    every = [r for r in registry.all_runs() if r.sweep]
    ids = sorted({r.sweep for r in every})
    hits = [s for s in ids if s == ref] or [s for s in ids if s.startswith(ref)]
    if not hits:
        raise RunError(f"no sweep {ref!r} in {registry.registry_dir()} (sweeps: {', '.join(ids[-5:]) or 'none'})")
    if len(hits) > 1:
        raise RunError(f"{ref!r} matches {len(hits)} sweeps ({', '.join(hits[:5])}): give more of the id")
    return hits[0], sorted([r for r in every if r.sweep == hits[0]], key=lambda r: r.id)


def final_losses(run) -> tuple[float | None, float | None]:
    """(train loss, eval loss) from the run's metrics.json (None when not there)."""
    from hpctune.run.registry import _float
    m = run.output.metrics() or {}
    return _float(m.get("train_loss")), _float(m.get("eval_loss"))


def table(items, states: dict) -> list[str]:
    """A sweep's runs side by side: grid values, state, final train/eval loss, job."""
    from hpctune.textui import table as text_table

    keys: list[str] = []
    try:  # the grid's own order, from the sweep folder's sweep.json
        keys = list(json.loads((Path(items[0].bundle).parent / SWEEP_FILE).read_text())["grid"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    for r in items:
        for k in (r.grid or {}):
            if k not in keys:
                keys.append(k)

    def loss(v):
        return "-" if v is None else f"{v:.4f}"

    rows = [("RUN", *keys, "STATE", "TRAIN_LOSS", "EVAL_LOSS", "JOB")]
    for r in items:
        train, ev = final_losses(r)
        rows.append((r.id, *[str((r.grid or {}).get(k, "")) for k in keys], states.get(r.id, r.state),
                     loss(train), loss(ev), r.current_job()))
    return text_table(rows).splitlines()
