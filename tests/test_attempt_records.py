"""What each attempt leaves in the run folder (#14), without training: the watchdog's rules,
the heartbeat writer and its watchdog thread (real threads, files and a real exit in a
child process), the fault hook's grammar, the tracker's id across attempts, the
reproducibility record's comparison and the GPU-hours arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from hpctune.run import folder, hours, watchdog
from hpctune.train import faults, record, tracker


def hb(rank, step, node="n1", in_step=False, gap=2.0, beats=1):
    return {"rank": rank, "step": step, "node": node, "in_step": in_step, "max_gap_s": gap, "beats": beats, "world_size": 2}


def test_limit_from_step_times_with_a_floor():
    s = watchdog.Settings(floor_minutes=1, factor=4)
    assert watchdog.limit_seconds(s, {0: hb(0, 1, gap=2.0)}) == 60           # the floor
    assert watchdog.limit_seconds(s, {0: hb(0, 1, gap=30.0), 1: hb(1, 1, gap=5)}) == 120   # 4 x the slowest gap
    assert watchdog.limit_seconds(watchdog.Settings(minutes=0.5), {0: hb(0, 1, gap=300)}) == 30  # fixed


def test_suspect_is_the_lagging_rank():
    beats = {0: hb(0, 3, "n1", in_step=True), 1: hb(1, 3, "n2", in_step=False)}
    sus = watchdog.suspect(beats)
    assert sus["ranks"] == [1] and sus["nodes"] == ["n2"] and "after step 3" in sus["why"] and "in step 4" in sus["why"]
    assert watchdog.suspect({0: hb(0, 3), 1: hb(1, 3)}) is None
    assert watchdog.suspect({0: hb(0, 3)}, world_size=2)["ranks"] == [1]   # no heartbeat at all


def test_suspect_from_stacks():
    stacks = {0: 'File "/v/torch/distributed/distributed_c10d.py", line 4287 in all_gather',
              1: 'File "/w/hpctune/train/faults.py", line 88 in _hang_forever'}
    sus = watchdog.suspect_from_stacks(stacks, {0: hb(0, 3, "n1"), 1: hb(1, 3, "n2")})
    assert sus["ranks"] == [1] and sus["nodes"] == ["n2"]
    spy = {0: "Thread 1 (idle): MainThread\n    all_reduce (torch/distributed/c10d_logger.py:81)", 1: "    sleep (x.py:1)"}
    assert watchdog.suspect_from_stacks(spy, {})["ranks"] == [1]


def test_fault_grammar():
    assert faults.parse("hang:rank=1:step=5:attempt=1; raise:rank=0:step=2") == [
        faults.Fault("hang", 1, 5, 1), faults.Fault("raise", 0, 2, None)]
    for bad in ("boom:rank=1:step=1", "hang:rank=1", "hang:rank=x:step=1"):
        with pytest.raises(ValueError):
            faults.parse(bad)
    plan = faults.parse("hang:rank=1:step=5:attempt=1")
    assert faults.due(plan, rank=1, step=5, attempt=1) and not faults.due(plan, rank=1, step=5, attempt=2)


def test_watchdog_thread_fires_dumps_the_stack_and_exits(tmp_path):
    """A real Heartbeat + watchdog thread in a child process whose main thread then blocks
    (the test stands in for a stuck collective): the watchdog must dump that stack, write its
    verdict and end the process with EXIT_CODE within the limit."""
    bundle = tmp_path / "run"
    (bundle / "logs").mkdir(parents=True)
    folder.write_json(bundle / folder.MANIFEST, {"run": {"watchdog": {"minutes": 0.05}}})
    (bundle / folder.RECIPE).write_text("name: x\n")
    child = textwrap.dedent(f"""
        import threading, time
        from hpctune.train import attempt, heartbeat
        ctx = attempt.init({str(bundle / folder.RECIPE)!r})
        hb = heartbeat.Heartbeat(ctx, heartbeat.settings_for(ctx))
        hb.beat(0, "train_begin", force=True)
        hb.arm()
        hb.beat(1, "step")
        def stuck_in_a_collective():
            threading.Event().wait(600)
        stuck_in_a_collective()
    """)
    t0 = time.monotonic()
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == watchdog.EXIT_CODE, proc.stderr
    assert took < 3 + 10, took                                  # limit 3 s, + start-up and one poll
    verdict = folder.read_json(folder.watchdog_path(bundle, 1))
    assert verdict["limit_s"] == 3.0 and verdict["stalled_s"] >= 3.0
    stack = folder.stack_path(bundle, 1, 0).read_text()
    assert "stuck_in_a_collective" in stack and ("faulthandler" in stack or "py-spy" in stack)
    beat = folder.heartbeats(bundle, 1)[0]
    assert beat["step"] == 1 and beat["start_step"] == 0          # the throttled beat was flushed


def test_tracker_keeps_one_id_across_attempts(tmp_path):
    bundle = tmp_path / "run"
    bundle.mkdir()
    folder.write_json(bundle / folder.MANIFEST, {"run": {"offline": True}})
    env1, env2 = {}, {}
    assert tracker.setup("none", bundle, env1) is None and env1 == {}
    first = tracker.setup("wandb", bundle, env1)
    second = tracker.setup("wandb", bundle, env2)           # attempt 2 (a requeue) reads the same file
    assert first["id"] == second["id"] and len(first["id"]) == 8
    assert env2 == {"WANDB_RUN_ID": first["id"], "WANDB_RESUME": "allow", "WANDB_DIR": str(bundle), "WANDB_MODE": "offline"}
    assert json.loads((bundle / folder.TRACKER).read_text())["wandb"]["id"] == first["id"]
    assert tracker.sync_command(bundle) == f"wandb sync --include-offline {bundle}/wandb/offline-run-*"


def test_environment_differences():
    a = {"python": "3.11.7", "torch": "2.5.1", "cuda": "12.4", "git_commit": "abc", "dataset_fingerprint": "f1",
         "packages": {"torch": "2.5.1", "peft": "0.13.0"}, "hosts": ["n1", "n2"]}
    b = {**a, "torch": "2.6.0", "packages": {"torch": "2.6.0", "trl": "0.20"}, "hosts": ["n1", "n3"]}
    assert record.differences(a, a) == []
    assert record.differences(a, b) == ["torch 2.5.1 -> 2.6.0", "peft 0.13.0 -> (none)", "torch 2.5.1 -> 2.6.0",
                                        "trl (none) -> 0.20"]


def test_gpu_hours():
    t = 1000.0
    beat = lambda start, step, secs: {0: {"start_step": start, "step": step, "train_begin": t, "time": t + secs}}  # noqa: E731
    attempts = [
        # attempt 1: steps 0..30 in 300 s, killed (node failure); attempt 2 resumed from 20
        {"attempt": 1, "cause": "node_failure", "heartbeats": beat(0, 30, 300), "elapsed_s": 400, "gpus": 8},
        # attempt 2: 20..100, completed
        {"attempt": 2, "cause": "completed", "heartbeats": beat(20, 100, 800), "elapsed_s": 900, "gpus": 8},
    ]
    h = hours.compute(attempts, gpus_per_attempt=8)
    a1, a2 = h.attempts
    assert (a1.steps_kept, a1.steps_redone, a2.steps_kept, a2.steps_redone) == (20, 10, 80, 0)
    assert a1.allocated == pytest.approx(400 * 8 / 3600) and a1.kept == pytest.approx(200 * 8 / 3600)
    assert a1.lost == pytest.approx((400 - 200) * 8 / 3600)       # all but its kept steps
    assert a2.lost == 0 and h.kept == pytest.approx((200 + 800) * 8 / 3600)
    assert h.allocated == pytest.approx(1300 * 8 / 3600) and h.redone == pytest.approx(100 * 8 / 3600)
    assert "allocated" in h.describe() and "redone" in h.describe()
    assert hours.compute([{"attempt": 1, "cause": "completed", "heartbeats": {}}], gpus_per_attempt=0).describe() == "no GPUs allocated"
