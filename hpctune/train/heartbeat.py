"""Heartbeats and the hang watchdog, in every training rank.

Each rank rewrites ``logs/attempt-N/rank-R.heartbeat.json`` (hpctune.run.folder) at every
optimizer step (at most every 5 s), save and evaluation: step, time, the step this
attempt started from, and the longest gap between two heartbeats. A watchdog thread runs in
every rank; rank 0 (and the last rank, as a backup) reads all ranks' heartbeats, and when
none advanced for the limit (hpctune.run.watchdog: the profile's ``watchdog`` section,
recorded in manifest.json) it writes ``watchdog.json`` (limit, steps, the lagging rank).
Every rank that sees it dumps its own Python stack (py-spy when installed, else
faulthandler) into ``rank-R.stack.txt``, waits a little for the others' stacks, and exits
with ``watchdog.EXIT_CODE``: the attempt ends as "hang" and the retry policy applies.

The thread runs while the main thread is blocked in a collective, which releases the GIL
(a rank stuck while holding the GIL would not dump its own stack; the others still do).
Before the first heartbeat (model loading) the watchdog is not armed.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from hpctune.run import folder, watchdog
from hpctune.train import faults
from hpctune.train.attempt import Context

WRITE_EVERY_S = 5.0  # per rank: a 512-rank job writes ~100 small files a second at most


class Heartbeat:
    def __init__(self, ctx: Context, settings: watchdog.Settings):
        self.ctx = ctx
        self.settings = settings
        self.started = time.time()
        self.train_begin: float | None = None
        self.start_step: int | None = None
        self.step = 0
        self.max_steps = None
        self.beats = 0
        self.max_gap = 0.0
        self._last_beat = None
        self._last_write = 0.0
        self._pending: dict | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def beat(self, step: int, phase: str, *, in_step: bool = False, force: bool = False) -> None:
        now = time.time()
        with self._lock:
            if self.start_step is None:
                self.start_step, self.train_begin = int(step), now
            if self._last_beat is not None:
                self.max_gap = max(self.max_gap, now - self._last_beat)
            self._last_beat = now
            self.step = int(step)
            self.beats += 1
            self._pending = {"rank": self.ctx.rank, "local_rank": self.ctx.local_rank, "world_size": self.ctx.world_size,
                      "node": self.ctx.node, "node_index": self.ctx.node_index, "host": self.ctx.host, "pid": os.getpid(), "job_id": self.ctx.job_id,
                      "attempt": self.ctx.attempt, "phase": phase, "step": self.step, "in_step": in_step,
                      "max_steps": self.max_steps,
                      "start_step": self.start_step, "train_begin": round(self.train_begin, 3),
                      "started": round(self.started, 3), "time": round(now, 3), "beats": self.beats,
                      "max_gap_s": round(self.max_gap, 3)}
            if not force and now - self._last_write < WRITE_EVERY_S:
                return  # written by the next beat, or by the watchdog thread's flush
        self.flush()

    def flush(self) -> None:
        with self._lock:
            record, self._pending = self._pending, None
            if record is None:
                return
            self._last_write = time.time()
        try:
            folder.write_json(folder.heartbeat_path(self.ctx.bundle, self.ctx.attempt, self.ctx.rank), record, indent=None)
        except OSError:
            pass  # a full or flaky disk must not stop the training

    # --- the watchdog thread ---------------------------------------------------------------
    def arm(self) -> None:
        if self._thread is None and self.settings.enabled:
            self._thread = threading.Thread(target=self._watch, name="hpctune-watchdog", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        """Rank 0 judges (it alone reads every heartbeat: one read per rank per poll, not one
        per pair of ranks); the last rank judges too, with half again the patience, in case
        rank 0 itself is wedged. Every rank looks for the verdict file (one stat per poll),
        then dumps its own stack and leaves."""
        ctx = self.ctx
        judge = ctx.rank in (0, ctx.world_size - 1)
        patience = 1.0 if ctx.rank == 0 else 1.5
        verdict_path = folder.watchdog_path(ctx.bundle, ctx.attempt)
        guess = watchdog.limit_seconds(self.settings, {})
        key, changed = None, time.monotonic()
        while not self._stop.is_set():
            self.flush()
            if verdict_path.exists():
                self._leave(folder.read_json(verdict_path) or {})
                return
            interval = max(0.5, min(10.0, guess / 10))
            if judge:
                beats = folder.heartbeats(ctx.bundle, ctx.attempt)
                limit = watchdog.limit_seconds(self.settings, beats)
                now_key = watchdog.progress_key(beats)
                if now_key != key:
                    key, changed = now_key, time.monotonic()
                stalled = time.monotonic() - changed
                if stalled >= limit * patience:
                    verdict = watchdog.verdict(beats, self.settings, stalled_s=stalled, attempt=ctx.attempt,
                                               world_size=ctx.world_size)
                    verdict.update(time=round(time.time(), 3), fired_by={"rank": ctx.rank, "node": ctx.node})
                    _create_once(verdict_path, verdict)
                    self._leave(folder.read_json(verdict_path) or verdict)
                    return
                interval = max(0.5, min(30.0, limit / 10))
            self._stop.wait(interval)

    def _leave(self, verdict: dict) -> None:
        """Dump this rank's stack, give the others time to dump theirs, and end the process."""
        ctx = self.ctx
        stack = folder.stack_path(ctx.bundle, ctx.attempt, ctx.rank)
        how = dump_stack(stack)
        print(f"hpctune train: watchdog: no rank advanced for {verdict.get('stalled_s', '?')} s (limit "
              f"{verdict.get('limit_s', '?')} s); rank {ctx.rank}'s stack ({how}) in {stack}; ending the attempt",
              file=sys.stderr, flush=True)
        # Before this exit tears the job down (torchrun, srun --kill-on-bad-exit), the other
        # ranks' watchdogs must have seen the verdict and dumped their stacks.
        deadline = time.monotonic() + min(30.0, max(5.0, float(verdict.get("limit_s") or 10) / 2))
        while time.monotonic() < deadline and len(folder.stacks(ctx.bundle, ctx.attempt)) < ctx.world_size:
            time.sleep(0.5)
        sys.stderr.flush()
        os._exit(watchdog.EXIT_CODE)


def dump_stack(path: Path) -> str:
    """This process's Python stacks (every thread) into ``path``: py-spy if installed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy")
    if spy:
        try:
            r = subprocess.run([spy, "dump", "--pid", str(os.getpid())], capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and r.stdout.strip():
                folder.atomic_write(path, r.stdout)
                return "py-spy"
        except (OSError, subprocess.SubprocessError):
            pass
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(f"# rank stack dumped by faulthandler (py-spy is not installed), pid {os.getpid()}\n")
        f.flush()
        faulthandler.dump_traceback(file=f, all_threads=True)
    os.replace(tmp, path)
    return "faulthandler"


def _create_once(path: Path, data: dict) -> None:
    """The first rank to fire writes the verdict; the others leave it."""
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def settings_for(ctx: Context) -> watchdog.Settings:
    if not ctx.enabled:
        return watchdog.Settings(enabled=False)
    return watchdog.Settings.from_dict((folder.read_manifest(ctx.bundle).get("run") or {}).get("watchdog"))


class _NoBeat:
    def beat(self, *a, **k) -> None:
        pass

    def disarm(self) -> None:
        pass


def loop_heartbeat(ctx: Context, step: int, max_steps: int | None):
    """For a training loop of our own (seq2seq): a started, armed Heartbeat (or a no-op)."""
    if not ctx.enabled:
        return _NoBeat()
    hb = Heartbeat(ctx, settings_for(ctx))
    hb.max_steps = max_steps
    hb.beat(step, "train_begin", force=True)
    hb.arm()
    return hb


def make_callback(ctx: Context):
    """The TrainerCallback: heartbeats, the watchdog, and the test-only fault hook."""
    from transformers import TrainerCallback

    plan = faults.from_env()

    class HeartbeatCallback(TrainerCallback):
        def __init__(self):
            self.hb = Heartbeat(ctx, settings_for(ctx)) if ctx.enabled else None
            self._last_pred = 0.0

        def _beat(self, state, phase, force=False):
            if self.hb is not None:
                self.hb.max_steps = state.max_steps
                self.hb.beat(state.global_step, phase, force=force)

        def on_train_begin(self, args, state, control, **kwargs):
            self._beat(state, "train_begin", force=True)
            if self.hb is not None:
                _record_environment(ctx, kwargs.get("train_dataloader"))
                self.hb.arm()

        def on_step_begin(self, args, state, control, **kwargs):
            if self.hb is not None:
                self.hb.beat(state.global_step, "step", in_step=True)

        def on_step_end(self, args, state, control, **kwargs):
            self._beat(state, "step")
            fault = faults.due(plan, rank=ctx.rank, step=state.global_step, attempt=ctx.attempt) if plan else None
            if fault is not None:
                self._beat(state, f"fault {fault.kind}", force=True)
                faults.trigger(fault)

        def on_save(self, args, state, control, **kwargs):
            self._beat(state, "save", force=True)

        def on_evaluate(self, args, state, control, **kwargs):
            self._beat(state, "evaluate", force=True)

        def on_prediction_step(self, args, state, control, **kwargs):
            if time.monotonic() - self._last_pred >= WRITE_EVERY_S:
                self._last_pred = time.monotonic()
                self._beat(state, "evaluate")

        def on_train_end(self, args, state, control, **kwargs):
            self._beat(state, "train_end", force=True)
            if self.hb is not None:
                self.hb.disarm()

    return HeartbeatCallback()


def _record_environment(ctx: Context, dataloader) -> None:
    """The attempt's reproducibility record (rank 0), with every rank's host (a collective)."""
    from hpctune.train import dist, record
    hosts = dist.gather_objects(ctx.node)
    if not dist.is_main():
        return
    ds = getattr(dataloader, "dataset", None)
    fingerprint = getattr(ds, "_fingerprint", None)
    try:
        man = folder.read_manifest(ctx.bundle)
        rec = record.build(attempt=ctx.attempt, job_id=ctx.job_id, hosts=hosts, dataset_fingerprint=fingerprint,
                           recipe_file=(man.get("recipe") or {}).get("file"))
        diffs = record.write(ctx.bundle, rec)
    except Exception as e:  # noqa: BLE001 - a record that cannot be written must not stop the training
        print(f"hpctune train: warning: no reproducibility record: {e}", file=sys.stderr, flush=True)
        return
    if diffs:
        print(f"hpctune train: warning: attempt {ctx.attempt}'s environment differs from attempt "
              f"{rec.get('differs_from_attempt')}: {'; '.join(diffs[:8])}" + (" ..." if len(diffs) > 8 else ""),
              file=sys.stderr, flush=True)
