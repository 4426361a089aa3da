"""One Job -> Slurm mapping: the job.sbatch that is rendered (and checked) and the script
submitit submits ask for the same resources with the same values, for every shipped recipe
on every shipped Slurm profile it fits, and for a sweep's job array."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hpctune import profile as profile_mod
from hpctune import render, resources, sweep
from hpctune.run.backends import slurm as slurm_dispatch
from hpctune.errors import ConfigError
from hpctune.prepare import prepare
from hpctune.slurm_request import slurm_request

# Options only one of the two scripts has, on purpose (see hpctune/slurm_request.py).
ONLY_SBATCH = {"chdir", "output"}           # by hand: run in and log into the run folder
ONLY_SUBMITIT = {"output", "export", "array"}  # submitit's own log files; the run's identity; a sweep


def sbatch_options(text: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            word = shlex.split(line[len("#SBATCH "):])[0]
            key, sep, value = word[2:].partition("=")
            assert key not in out, f"--{key} given twice"
            out[key] = value if sep else True
    return out


def _fitting() -> list[tuple[str, str]]:
    pairs = []
    for prof in sorted(p.stem for p in resources.clusters_dir().glob("*.yaml")):
        if profile_mod.load(prof).scheduler != "slurm":
            continue
        for rec in sorted(p.stem for p in resources.recipes_dir().glob("*.yaml")):
            try:
                if not prepare(prof, rec).errors:
                    pairs.append((rec, prof))
            except ConfigError:
                pass  # a layout this profile cannot hold: the recipe does not fit it
    return pairs


PAIRS = _fitting()


def _compare(sbatch_text: str, submitit_text: str, job) -> None:
    mine, theirs = sbatch_options(sbatch_text), sbatch_options(submitit_text)
    request = {k: (v if v is True else str(v)) for k, v in slurm_request(job).options().items()}
    for key, value in request.items():
        assert mine.get(key) == value, f"job.sbatch --{key}: {mine.get(key)!r} != {value!r}"
        assert theirs.get(key) == value, f"submitit --{key}: {theirs.get(key)!r} != {value!r}"
    assert set(mine) - set(request) <= ONLY_SBATCH, set(mine) - set(request)
    assert set(theirs) - set(request) <= ONLY_SUBMITIT, set(theirs) - set(request)
    assert "wckey" not in theirs and "wckey" not in mine
    # the one srun step: the same arguments on both
    srun_sbatch = sbatch_text[sbatch_text.index("\nsrun "):]
    srun_submitit = next(line for line in submitit_text.splitlines() if line.startswith("srun "))
    for arg in slurm_request(job).srun:
        assert shlex.quote(arg) in srun_sbatch and shlex.quote(arg) in srun_submitit, arg


def test_every_shipped_recipe_is_compared_somewhere():
    assert {r for r, _ in PAIRS} == {p.stem for p in resources.recipes_dir().glob("*.yaml")}
    assert len(PAIRS) >= 8, PAIRS


@pytest.mark.parametrize("rec,prof", PAIRS, ids=[f"{r}@{p}" for r, p in PAIRS])
def test_sbatch_and_submitit_ask_for_the_same(rec, prof, tmp_path):
    job = prepare(prof, rec).raise_errors().job
    bundle = tmp_path / "run"
    files = render.render_files(job, bundle)
    _compare(files["job.sbatch"], slurm_dispatch.submission_script(job, bundle, "RID"), job)


def test_a_sweep_array_asks_for_what_each_run_renders(tmp_path):
    sw = sweep.plan("testcluster", "tiny-sft", ["training.learning_rate=1e-4,2e-4", "method.lora_r=4,8"],
                    ["layout.nodes=2", "layout.gpus_per_node=1"])
    sweep.render(sw, tmp_path / "sw")
    script = sweep.array_script(sw, 2)
    assert "#SBATCH --array=0-3%2" in script
    for combo in sw.combinations:
        _compare((Path(combo.bundle) / "job.sbatch").read_text(), script, combo.job)
