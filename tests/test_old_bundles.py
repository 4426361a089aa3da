"""Run folders written by hpctune 0.1.0 (tests/fixtures/bundles/0.1.0, made with that release)
still load: runs, status, logs, check RUN_DIR, plan --compare and merge's recipe loading read
them with today's code. The folders hold absolute paths of where they were made; the copy
here rewrites that prefix, as if the runs had been made in the copy's place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.clitools import hpctune

FIXTURES = Path(__file__).parent / "fixtures" / "bundles" / "0.1.0"
MADE_AT = "/tmp/hpctune-fixture-0.1.0"
LOCAL = "tiny-sft-20261202-060415-dd28"   # `submit -c local tiny-sft --wait`, finished
SLURM = "tiny-sft-20261202-060443-e0ff"   # `submit -c testcluster ... layout.nodes=2 --wait`, finished


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("old") / "v0.1.0"
    shutil.copytree(FIXTURES, root)
    for p in root.rglob("*"):
        if p.is_file():
            text = p.read_text(encoding="utf-8")
            if MADE_AT in text:
                p.write_text(text.replace(MADE_AT, str(root)), encoding="utf-8")
    return root


@pytest.fixture
def env(old, tmp_path) -> dict:
    """This registry; and no Slurm client on PATH: the Slurm run's job is long gone, so its
    state must come from its run folder (as on a machine that cannot ask Slurm)."""
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    return {"HPCTUNE_HOME": str(old / "home"), "PATH": str(no_slurm), "HPCTUNE_CLUSTERS": ""}


def _json(*args, env, cwd=None) -> dict:
    proc = hpctune(*args, "--json", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_runs_lists_them_with_their_states(env):
    data = _json("runs", env=env)
    states = {r["id"]: (r["state"], r["job"]) for r in data["runs"]}
    assert states == {LOCAL: ("COMPLETED", "local"), SLURM: ("COMPLETED", "15")}, data


def test_status_of_a_finished_local_run(env):
    st = _json("status", LOCAL, env=env)
    assert st["state"] == "COMPLETED" and st["attempts"] == 1
    assert st["progress"] == {"step": 30, "max_steps": 30, "loss": pytest.approx(2.862, abs=1e-3), "finished": True,
                              "source": "metrics.json"}


def test_status_of_a_finished_slurm_run_slurm_no_longer_knows(env):
    st = _json("status", SLURM, env=env)
    assert st["state"] == "COMPLETED" and "from the run folder" in st["detail"]
    assert st["jobs"] == ["15"] and st["num_nodes"] == 2 and st["attempts"] == 1
    assert st["progress"]["step"] == 10 and st["progress"]["finished"]


def test_status_of_a_folder_rendered_and_never_submitted(old, env):
    st = _json("status", str(old / "tc-rendered"), env=env)
    assert st["state"] == "UNKNOWN" and st["jobs"] == [] and st["scheduler"] == "slurm"
    # 0.1.0 manifests do not say how a run behaves: the profile it names does
    from hpctune.run import registry
    run = registry.from_folder(old / "tc-rendered")
    assert (run.preemption, run.max_attempts, run.partition, run.time_limit) == ("requeue", 3, "debug", "00:10:00")


def test_logs_per_node(env):
    local = hpctune("logs", LOCAL, env=env)
    assert local.returncode == 0 and "hpctune train: completed 30 steps" in local.stdout
    node1 = hpctune("logs", SLURM, "--node", "1", env=env)
    assert node1.returncode == 0 and "node rank 1 of 2" in node1.stdout and "node-15-1.out" not in node1.stdout
    both = hpctune("logs", SLURM, "--node", "all", env=env)
    assert "==> " in both.stdout and "node-15-0.out" in both.stdout and "node-15-1.out" in both.stdout
    sub = hpctune("logs", SLURM, "--submitit", env=env)
    assert sub.returncode == 0 and "15_0_log.out" in sub.stdout


@pytest.mark.parametrize("name", ["local-finished", "tc-finished", "tc-rendered"])
def test_check_run_dir_accepts_them(old, env, name):
    proc = hpctune("check", str(old / name), env=env)
    assert proc.returncode == 0 and "OK: 0 error(s)" in proc.stdout, proc.stdout + proc.stderr


def test_plan_compare_reads_the_old_recipe(old, env):
    out = _json("plan", "--compare", str(old / "local-finished"), env=env)
    assert out["nodes"] == 1 and out["measured"] and out["measured"][0]["cpu_rss_peak_gib"] > 0


def test_merge_finds_the_adapter_and_the_recipe(old):
    from hpctune.train import merge
    adapter, recipe = merge.locate(old / "local-finished")
    assert adapter == old / "local-finished" / "output" and recipe.name == "tiny-sft"
    assert recipe.model.model_name_or_path == "hpctune:tiny-llama"
