"""hpctune submit / runs / status / logs / cancel: the registry, the executor, errors,
dry runs, `-c local` end to end, and `sbatch --test-only` of every shipped recipe.

The training runs on the real test Slurm are in test_submit_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpctune.prepare import prepare
from hpctune import resources
from hpctune.run import registry
from hpctune.run.backends import proctree
from hpctune.run.folder import RunFolder
from hpctune.run.backends import slurm as slurm_dispatch
from tests.clitools import hpctune
from tests.conftest import wait_until

HEAVY = ("torch", "transformers", "deepspeed", "accelerate", "peft", "trl", "datasets", "bitsandbytes")


def _registry(env) -> list[Path]:
    d = Path(env["HPCTUNE_HOME"]) / "runs"
    return sorted(d.glob("*.json")) if d.is_dir() else []


def _run_id(stdout: str) -> str:
    m = re.search(r"^Submitted run (\S+)", stdout, re.M)
    assert m, stdout
    return m.group(1)


# --- units ------------------------------------------------------------------------------

def _record(tmp_path, rid="tiny-sft-20260101-000000-abcd", jobs=("11",), **kw) -> registry.Run:
    bundle = tmp_path / rid
    (bundle / "logs").mkdir(parents=True)
    defaults = dict(id=rid, cluster="tc", recipe="tiny-sft", bundle=str(bundle), output_dir=str(bundle / "output"),
                    scheduler="slurm", nodes=2, procs_per_node=1, submitted=time.time(), jobs=list(jobs))
    defaults.update(kw)
    return registry.Run(**defaults)


def test_registry_find_by_id_prefix_job_folder_and_last(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCTUNE_HOME", str(tmp_path / "home"))
    a = _record(tmp_path, "tiny-sft-20260101-000000-aaaa", jobs=("11",), submitted=1.0)
    b = _record(tmp_path, "tiny-sft-20260102-000000-bbbb", jobs=("12",), submitted=2.0)
    for r in (a, b):
        registry.save(r)
    assert (Path(a.bundle) / "run.json").is_file()  # the run folder describes itself
    assert registry.find(a.id).id == a.id
    assert registry.find("tiny-sft-20260102").id == b.id
    assert registry.find("11").id == a.id
    assert registry.find(b.bundle).id == b.id
    assert registry.find("last").id == b.id
    with pytest.raises(registry.RunError, match="matches 2 runs"):
        registry.find("tiny-sft-2026")
    with pytest.raises(registry.RunError, match="no run 'nope'"):
        registry.find("nope")
    # A resubmitted job (profile mode cancel) is found through the run folder's events.
    registry.append_event(a.bundle, "resubmitted", job_id="99", previous="11", attempt=2)
    assert registry.find(a.id).job_ids() == ["11", "99"]
    assert registry.find("99").id == a.id
    # The cache of the last state is a rewrite of the registry entry only.
    registry.cache_state(a, "RUNNING")
    assert registry.find(a.id).state == "RUNNING"
    assert [r.id for r in registry.all_runs()] == [a.id, b.id]


def test_events_are_whole_lines_and_attempts_add_jobs(tmp_path):
    r = _record(tmp_path)
    for i in range(50):
        registry.append_event(r.bundle, "signal", job_id="11", attempt=i)
    lines = (Path(r.bundle) / "logs" / "events.jsonl").read_text().splitlines()
    assert len(lines) == 50 and all(json.loads(ln)["event"] == "signal" for ln in lines)
    (Path(r.bundle) / "logs" / "attempts.jsonl").write_text(
        '{"attempt": 1, "job_id": "11"}\n{"attempt": 2, "job_id": "11"}\n{"attempt": 3, "job_id": "12"}\n{"cut sho')
    assert r.job_ids() == ["11", "12"]
    assert len(r.attempts()) == 3


def test_progress_from_progress_file_checkpoint_and_metrics(tmp_path):
    """Progress comes from what the training writes (progress.json at every logging step;
    a checkpoint's trainer_state.json for runs that predate it; metrics.json at the end),
    never from a log: a loss line in a node log changes nothing."""
    r = _record(tmp_path, max_steps=40)
    out = Path(r.output_dir)
    ck = out / "checkpoint-20"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps(
        {"global_step": 20, "max_steps": 40, "log_history": [{"loss": 3.0, "step": 20}]}))
    (Path(r.bundle) / "logs" / "node-11-0.out").write_text("x\n{'loss': '2.5', 'grad_norm': '1'}\n 30/40 [\n")
    p = registry.progress(r)
    assert (p.step, p.max_steps, p.loss, p.finished, p.source) == (20, 40, 3.0, False, "checkpoint-20/trainer_state.json")
    RunFolder(r.bundle).output.write_progress(25, 40, 2.25, epoch=0.6)
    p = registry.progress(r)
    assert (p.step, p.max_steps, p.loss, p.source) == (25, 40, 2.25, "progress.json")
    assert p.describe() == "step 25 of 40, loss 2.2500"
    (out / "metrics.json").write_text(json.dumps({"status": "interrupted", "optimizer_steps": 25}))
    assert not registry.progress(r).finished and not r.training_completed()
    (out / "metrics.json").write_text(json.dumps({"status": "completed", "optimizer_steps": 40, "train_loss": 1.5}))
    p = registry.progress(r)
    assert (p.step, p.max_steps, p.loss, p.finished) == (40, 40, 1.5, True)


def test_executor_parameters_come_from_the_profile(tmp_path):
    prof = yaml.safe_load((resources.clusters_dir() / "example-h100.yaml").read_text())
    prof.update(account="proj1", qos="high", constraint="ib&h100", reservation="r1",
                sbatch_extra={"mail-type": "END"})
    prof["software"] = {"modules": ["CUDA/12.4"], "setup": ["source /scratch/venv/bin/activate"],
                        "container": {"image": "docker://nvcr.io#nvidia/pytorch:24.05-py3", "runtime": "pyxis",
                                      "mounts": ["/scratch:/scratch"]}}
    prof["preemption"] = {"mode": "cancel", "max_attempts": 5, "signal_seconds": 120}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(prof))
    job = prepare(str(path), "llama2-70b-lora-zero3", ["layout.nodes=2"]).raise_errors().job
    p = slurm_dispatch.executor_parameters(job, "RID")
    assert p["nodes"] == 2 and p["ntasks_per_node"] == 1 and p["wckey"] is None
    extra = p["additional_parameters"]
    assert extra["gpus-per-node"] == 8 and extra["partition"] == "h100"
    # the job fills its nodes on an exclusive profile: whole nodes, all their memory (D16)
    assert job.exclusive and extra["cpus-per-task"] == job.cpus_per_task and extra["mem"] == 0
    assert extra["time"] == "1-00:00:00" and extra["signal"] == "USR2@120" and extra["exclusive"] is True
    assert (extra["account"], extra["qos"], extra["constraint"]) == ("proj1", "high", "ib&h100")
    assert extra["no-requeue"] is True and "requeue" not in extra
    assert extra["reservation"] == "r1" and extra["mail-type"] == "END" and extra["export"] == "ALL,HPCTUNE_RUN_ID=RID"
    assert p["setup"] == ["module load CUDA/12.4"]  # host set-up only: the set-up lines run inside the image (launch.sh)
    assert "--cpus-per-task=%d" % job.cpus_per_task in p["srun_args"]
    assert "--container-image=docker://nvcr.io#nvidia/pytorch:24.05-py3" in p["srun_args"]
    assert "--container-mounts=/scratch:/scratch" in p["srun_args"]
    # submitit accepts every key (it checks them against its own list) and renders them. A pyxis
    # job is submitted as its own job.sbatch (slurm_request.by_job_sbatch), so submitit's script
    # is read for the same profile without the image: the set-up lines then run on the host.
    del prof["software"]["container"]
    path.write_text(yaml.safe_dump(prof))
    job = prepare(str(path), "llama2-70b-lora-zero3", ["layout.nodes=2"]).raise_errors().job
    script = slurm_dispatch.submission_script(job, tmp_path / "bundle", "RID")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR2@120", "#SBATCH --no-requeue", "#SBATCH --partition=h100",
                 "#SBATCH --mail-type=END", "module load CUDA/12.4", "source /scratch/venv/bin/activate"):
        assert line in script, line
    assert "wckey" not in script  # review-bundles D6: never a made-up wckey


def test_refusals_become_one_line_with_a_hint():
    params = {"nodes": 9, "additional_parameters": {"partition": "gpu", "gpus-per-node": 8, "cpus-per-task": 96,
                                                    "mem": "900G"}}
    cases = {
        "sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission failed: Invalid partition name specified": "does not exist",
        "sbatch: error: Batch job submission failed: Node count specification invalid": "9 nodes is more than",
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)": "does not answer",
        "sbatch: error: Batch job submission failed: Requested node configuration is not available": "no node of partition",
    }
    for stderr, hint in cases.items():
        msg = slurm_dispatch.explain_refusal(stderr, params)
        assert "\n" not in msg and msg.startswith("Slurm refused the job: ") and hint in msg, msg


def test_submit_side_imports_no_training_stack():
    code = ("import sys, hpctune.commands.submit, hpctune.commands.status, hpctune.commands.runs, "
            "hpctune.commands.logs, hpctune.commands.cancel, hpctune.run.backends.slurm, hpctune.run.backends.local, hpctune.run.submit, hpctune.run.watch; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_status_without_accounting_says_states_may_be_incomplete(tmp_path, hpctune_env):
    """No sacct answer (accounting down) and a job Slurm no longer queues: UNKNOWN + a note."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database: Connection refused' >&2\nexit 1\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = dict(hpctune_env, PATH=f"{fake}{os.pathsep}{hpctune_env['PATH']}")
    os.environ["HPCTUNE_HOME"], saved = env["HPCTUNE_HOME"], os.environ.get("HPCTUNE_HOME")
    try:
        r = _record(tmp_path, jobs=("4242",))
        registry.save(r)
    finally:
        if saved is None:
            os.environ.pop("HPCTUNE_HOME")
        else:
            os.environ["HPCTUNE_HOME"] = saved
    st = hpctune("status", r.id, "--json", env=env, cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["state"] == "UNKNOWN"
    assert any("states may be incomplete" in n for n in data["notes"]), data
    human = hpctune("status", r.id, env=env, cwd=tmp_path)
    assert "note: Slurm accounting is unavailable" in human.stdout
    listing = hpctune("runs", env=env, cwd=tmp_path)
    assert "states may be incomplete" in listing.stdout


# --- the embedded default: -c local -------------------------------------------------------

def test_local_submit_wait_trains_tiny_sft(tmp_path, hpctune_env):
    """The README's main command, end to end on this machine's CPU."""
    t0 = time.monotonic()
    proc = hpctune("submit", "-c", "local", "tiny-sft", "--wait", env=hpctune_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = _run_id(proc.stdout)
    assert "RUNNING" in proc.stdout and "COMPLETED" in proc.stdout
    assert re.search(r"step \d+ of 30", proc.stdout), proc.stdout
    bundle = tmp_path / "hpctune-runs" / rid
    metrics = json.loads((bundle / "output" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["optimizer_steps"] == 30
    assert (bundle / "output" / "adapter_model.safetensors").stat().st_size > 0
    # the progress the training wrote at each logging step (what --wait showed above)
    prog = json.loads((bundle / "output" / "progress.json").read_text())
    assert prog["step"] == 30 and prog["max_steps"] == 30 and prog["loss"] > 0
    st = json.loads(hpctune("status", rid, "--json", env=hpctune_env, cwd=tmp_path).stdout)
    assert st["state"] == "COMPLETED" and st["progress"]["step"] == 30
    logs = hpctune("logs", rid, env=hpctune_env, cwd=tmp_path)
    assert "hpctune train: completed 30 steps" in logs.stdout
    t1 = time.monotonic()
    follow = hpctune("logs", rid, "-f", env=hpctune_env, cwd=tmp_path, timeout=30)
    assert follow.returncode == 0 and "completed 30 steps" in follow.stdout and time.monotonic() - t1 < 15
    listing = hpctune("runs", env=hpctune_env, cwd=tmp_path).stdout
    assert rid in listing and "COMPLETED" in listing and "local" in listing
    # the planner beside the measurement, then a per-cluster step-time factor from it
    env = {**hpctune_env, "HPCTUNE_CALIBRATION_DIR": str(tmp_path / "calib")}
    cmp_ = json.loads(hpctune("plan", "--compare", rid, "--json", env=env, cwd=tmp_path).stdout)
    measured = cmp_["measured_step_seconds"]
    assert measured and measured > 0 and cmp_["time"]["step_seconds"] > 0
    cal = json.loads(hpctune("plan", "--calibrate", rid, "--json", env=env, cwd=tmp_path).stdout)
    assert cal["cluster"] == "local" and cal["runs"] == 1 and (tmp_path / "calib" / "local.json").is_file()
    # the factor is measured / predicted step time; the JSON rounds the prediction (the tiny
    # model's step is ~7 ms: 3 decimals were 1% off), so compare with the calibration's own,
    # finer figures, to their rounding
    expect = min(max(cal["measured_step_seconds"] / cal["predicted_step_seconds"], 0.5), 3.0)
    assert abs(cal["step_time"] - expect) < 1e-2 * expect
    again = json.loads(hpctune("plan", "-c", "local", "tiny-sft", "--json", env=env, cwd=tmp_path).stdout)
    assert again["corrections"]["step_time"] == cal["step_time"]
    # the calibrated prediction is the plain one times the factor; the JSON rounds step_seconds to
    # 3 decimals (half a millisecond either way), so compare with the calibration's unrounded one
    assert abs(again["time"]["step_seconds"] - cal["predicted_step_seconds"] * cal["step_time"]) <= 5e-4 + 1e-2 * measured
    print(f"local tiny-sft --wait: {time.monotonic() - t0:.1f} s")


def test_local_cancel_stops_the_whole_tree(tmp_path, hpctune_env):
    proc = hpctune("submit", "-c", "local", "tiny-sft", "--set", "training.max_steps=100000",
                   "--set", "training.save_steps=100000", env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rid = _run_id(proc.stdout)
    log = tmp_path / "hpctune-runs" / rid / "logs" / "node-local-0.out"
    try:
        wait_until(lambda: log.exists() and "hpctune train: starting" in log.read_text(), 120, "local training to start")
        assert proctree.find_by_env("HPCTUNE_RUN_ID", rid)
        t0 = time.monotonic()
        out = hpctune("cancel", rid, env=hpctune_env, cwd=tmp_path)
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert "CANCELLED" in out.stdout and took < 30
        assert proctree.find_by_env("HPCTUNE_RUN_ID", rid) == []
        st = json.loads(hpctune("status", rid, "--json", env=hpctune_env, cwd=tmp_path).stdout)
        assert st["state"] == "CANCELLED"
    finally:
        for pid in proctree.find_by_env("HPCTUNE_RUN_ID", rid):
            proctree.kill_tree(pid, grace=1)


# --- against the real test Slurm, without training -------------------------------------

def test_dry_run_submits_and_registers_nothing(slurm, tmp_path, hpctune_env):
    proc = hpctune("submit", "-c", "tc", "tiny-sft", "--set", "layout.nodes=2", "--dry-run",
                   env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing submitted" in proc.stdout
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --ntasks-per-node=1" in proc.stdout
    assert "submitit.core._submit" in proc.stdout
    assert _registry(hpctune_env) == []
    bundle = Path(re.search(r"Run folder written: (\S+)/", proc.stdout).group(1))
    assert (bundle / "job.sbatch").is_file() and not list(bundle.glob("logs/submitit/*.pkl"))
    script = proc.stdout[proc.stdout.index("#!/bin/bash"):proc.stdout.index("Or by hand:")]
    f = tmp_path / "dry.sbatch"
    f.write_text(script)
    test = subprocess.run(["sbatch", "--test-only", str(f)], capture_output=True, text=True)
    assert test.returncode == 0 and "to start at" in test.stderr, test.stderr


def _problems(stderr: str) -> list[str]:
    """stderr without the findings submit shows and goes past (e.g. an unverified test profile)."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith("warning: ")]


def _refused(proc, env, tmp_path, expect: str):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _problems(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpctune: error: Slurm refused the job: ") and expect in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert _registry(env) == []
    runs_dir = tmp_path / "hpctune-runs"
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_unknown_partition_is_refused_cleanly(slurm, tmp_path, hpctune_env):
    proc = hpctune("submit", "-c", "tc-nopart", "tiny-sft", env=hpctune_env, cwd=tmp_path)
    _refused(proc, hpctune_env, tmp_path, "Invalid partition name")
    # A partition the profile does not list never reaches Slurm (exit 2, names the field).
    proc = hpctune("submit", "-c", "tc", "tiny-sft", "--set", "layout.partition=nosuch", env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 2 and "layout.partition" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_more_nodes_than_the_partition_has_is_refused_cleanly(slurm, tmp_path, hpctune_env):
    # The profile allows 8 nodes; Slurm's debug partition has 2.
    proc = hpctune("submit", "-c", "tc-wide", "tiny-sft", "--set", "layout.nodes=3", env=hpctune_env, cwd=tmp_path)
    _refused(proc, hpctune_env, tmp_path, "Node count specification invalid")
    proc = hpctune("submit", "-c", "tc", "tiny-sft", "--set", "layout.nodes=3", env=hpctune_env, cwd=tmp_path)
    assert proc.returncode == 2 and "layout.nodes" in proc.stderr


def test_no_slurm_commands_on_this_host(tmp_path, hpctune_env):
    """A Slurm profile used where sbatch/srun are not installed: one line, nothing left."""
    env = dict(hpctune_env, PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/local/nonexistent")
    proc = hpctune("submit", "-c", "tc", "tiny-sft", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and len(_problems(proc.stderr)) == 1, proc.stderr
    assert "Slurm's commands are not available" in proc.stderr
    assert _registry(env) == [] and not any((tmp_path / "hpctune-runs").glob("*"))


def test_controller_down_is_refused_cleanly(slurm, tmp_path, hpctune_env):
    """A client whose slurmctld does not answer (its config points at a port nobody serves)."""
    conf = Path("/etc/slurm/slurm.conf").read_text()
    dead = tmp_path / "etc"
    dead.mkdir()
    (dead / "slurm.conf").write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=6", conf))
    for extra in ("gres.conf", "cgroup.conf"):
        if Path("/etc/slurm", extra).exists():
            (dead / extra).write_text(Path("/etc/slurm", extra).read_text())
    env = dict(hpctune_env, SLURM_CONF=str(dead / "slurm.conf"))
    proc = hpctune("submit", "-c", "tc", "tiny-sft", env=env, cwd=tmp_path, timeout=120)
    _refused(proc, env, tmp_path, "Unable to contact slurm controller")


SHIPPED = {
    "llama2-70b-lora-zero3": "example-h100",
    "llama2-70b-qlora-zero3": "example-a100-40g",
    "falcon-180b-lora-zero3": "example-a100-80g",
    "bart-large-lora-zero3-offload": "example-a100-40g",
    "tiny-sft": "example-t4",
}


def test_every_shipped_recipe_has_a_profile_here():
    shipped = {p.stem for p in resources.recipes_dir().glob("*.yaml")}
    assert shipped == set(SHIPPED), "add the new recipe (and its example profile) to SHIPPED"


@pytest.mark.parametrize("recipe,cluster", sorted(SHIPPED.items()))
def test_sbatch_test_only_accepts_shipped_recipes(slurm, tmp_path, recipe, cluster):
    """Both scripts (job.sbatch and submitit's) on a partition shaped like the profile."""
    job = prepare(cluster, recipe).raise_errors().job
    from hpctune import render
    bundle = render.write_bundle(job, tmp_path / "b")
    sub = tmp_path / "submitit.sbatch"
    sub.write_text(slurm_dispatch.submission_script(job, bundle, "RID"))
    for script in (bundle / "job.sbatch", sub):
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{script}:\n{proc.stderr}"
        assert "to start at" in proc.stderr and f"partition {job.partition.name}" in proc.stderr, proc.stderr


_FAKE_TRAINER = r'''
import json, os, signal, sys, time
out = sys.argv[1]
time.sleep(float(sys.argv[2]))           # starts late: Slurm's own USR2 came before this
got = []
signal.signal(signal.SIGUSR2, lambda *a: got.append(1))
while not got:
    time.sleep(0.05)
open(os.path.join(out, ".hpctune-interrupted"), "w").write(json.dumps({"global_step": 7}))
'''


@pytest.mark.parametrize("mode,attempts,cancelled,expect", [
    ("requeue", 3, False, "requeue"), ("none", 3, False, "stopped"), ("requeue", 1, False, "stopped"),
    ("cancel", 3, True, "stopped")], ids=["requeue", "mode-none", "no-attempt-left", "cancel-requested"])
def test_checkpoint_forwards_usr2_then_requeues_or_stops(tmp_path, monkeypatch, mode, attempts, cancelled, expect):
    """NodeLauncher.checkpoint() (what submitit calls on USR2), with a stand-in trainer
    that installs its USR2 handler late and ignores it in its launcher shell."""
    from hpctune.run.backends.slurm import NodeLauncher, _Handled
    import submitit

    bundle = tmp_path / "b"
    (bundle / "logs").mkdir(parents=True)
    out = bundle / "output"
    out.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"output_dir": str(out)}))
    (bundle / "trainer.py").write_text(_FAKE_TRAINER)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    if cancelled:  # `hpctune cancel` raced with a preemption: no resubmission
        registry.append_event(bundle, "cancel_requested")
    nl = NodeLauncher(str(bundle), "RID", mode=mode, max_attempts=attempts, signal_seconds=30)
    # like launch.sh: the shell ignores USR2, the trainer catches it
    # and a process that would die of USR2 (like a compiler the trainer started) must not get it
    nl._proc = subprocess.Popen(["bash", "-c", f"trap '' USR2; (trap - USR2; exec sleep 60) & "
                                               f"{sys.executable} {bundle}/trainer.py {out} 1.5"])
    wait_until(lambda: any(Path(f"/proc/{p}/comm").read_text().strip() == "sleep"
                           for p in proctree.descendants(nl._proc.pid)), 5, "the bystander")
    bystander = next(p for p in proctree.descendants(nl._proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "sleep")
    t0 = time.monotonic()
    try:
        if expect == "requeue":
            delayed = nl.checkpoint()
            assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function is nl
        else:
            with pytest.raises(_Handled) as h:
                nl.checkpoint()
            assert h.value.result["interrupted"] and not h.value.result["continued"]
        assert proctree.alive(bystander)
    finally:
        proctree.kill_tree(nl._proc.pid, grace=1, keep=nl._proc.pid)
        nl._proc.wait()
        os.kill(bystander, 9)
    assert time.monotonic() - t0 < 10
    events = [e["event"] for e in RunFolder(bundle).events() if e["event"] != "cancel_requested"]
    assert events[:2] == ["signal", "checkpointed"] and events[-1] == expect, events
