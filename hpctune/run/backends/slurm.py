"""The ``slurm`` backend: submit a run bundle with submitit; find job states; cancel.

One launcher per node
---------------------
The submitted callable, :class:`NodeLauncher`, runs once per node (``nodes=N``,
``ntasks_per_node=1``). On each node it takes its node index and the host list from
submitit's ``JobEnvironment`` and starts the bundle's ``launch.sh`` (the same script the
plain ``sbatch RUN/job.sbatch`` path runs under ``srun``) with ``HPCTUNE_REQUEUE_BY=submitit``,
its output in ``RUN/logs/node-<job>-<node>.out``.

Time limit and preemption (submitit's protocol, checked against submitit 1.5.4)
-------------------------------------------------------------------------------
Slurm sends ``USR2`` ``signal_seconds`` before the time limit (``--signal=USR2@N``), and on
preemption where the site sends the user signal. It reaches every process of the step:
submitit's handler in each task, and the training processes, which save a checkpoint at
the same step on every rank, write ``OUTPUT/.hpctune-interrupted`` and exit 0.
submitit's handler does nothing on tasks other than global rank 0. On rank 0 it calls
:meth:`NodeLauncher.checkpoint` (from the signal handler, on the main thread), which

1. forwards USR2 to training processes that started after Slurm's signal (only to
   processes that catch USR2, so a compiler or a shell is never killed by it), and waits,
   bounded by the signal lead time, for ``launch.sh`` to exit;
2. records the event in ``RUN/logs/events.jsonl``;
3. returns ``DelayedSubmission(self)``: submitit then pickles it and runs
   ``scontrol requeue`` (profile mode ``requeue``); or, for mode ``cancel`` (sites where a
   requeue does nothing), submits a new job with the same callable and ends this one; or,
   when no attempt is left or the mode is ``none``, ends the job with the checkpoint kept.

The training resumes by itself from the newest complete checkpoint in the output folder
when the next attempt starts (nothing about the resume point is pickled).

SIGTERM (scancel, a requeue by an administrator, preemption without the user signal) is
left to Slurm: submitit ignores it in its own process, the training saves if it can, and
Slurm kills the rest. Each launcher is a child subreaper, so training processes that lose
their parent stay in the tree that Slurm signals and kills.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core import utils as submitit_utils
from submitit.slurm.slurm import SlurmInfoWatcher

from hpctune.errors import RunError
from hpctune.run import folder as layout
from hpctune.run import records
from hpctune.run.backends import proctree
from hpctune.run.folder import RunFolder
from hpctune.slurm_request import by_job_sbatch, slurm_request

SUBMITIT_DIR = layout.SUBMITIT


# --- executor ----------------------------------------------------------------------------

def executor_parameters(job, run_id: str) -> dict:
    """submitit SlurmExecutor parameters: hpctune.slurm_request's options, as they are.

    submitit is told only what it must know itself (nodes and tasks per node: it counts the
    results; the job name), the rest goes through ``additional_parameters`` under the very
    option names and values job.sbatch prints. Its own default ``--wckey=submitit`` is
    dropped (``wckey=None``): sites that enforce wckeys refuse made-up ones."""
    req = slurm_request(job)
    opts = req.options()
    params: dict = {
        "job_name": opts.pop("job-name"),
        "nodes": opts.pop("nodes"),
        "ntasks_per_node": opts.pop("ntasks-per-node"),
        "signal_delay_s": job.profile.preemption.signal_seconds,  # submitit's own --signal; ours overrides it alike
        "stderr_to_stdout": True,
        "wckey": None,
    }
    # The launcher's identity for launch.sh (not a resource: job.sbatch has none by hand).
    params["additional_parameters"] = {**opts, "export": f"ALL,HPCTUNE_RUN_ID={run_id}"}
    prof = job.profile
    # Runs on the host, before srun. With a container only the modules (the runtime, the
    # host's drivers) belong here: the set-up lines run inside it, in launch.sh.
    setup = [f"module load {shlex.quote(m)}" for m in prof.software.modules]
    if prof.software.container is None:
        setup += list(prof.software.setup)
    if setup:
        params["setup"] = setup
    params["srun_args"] = list(req.srun)
    return params


def _python_for(job) -> str | None:
    container = job.profile.software.container
    # Under pyxis the launcher itself runs inside the image: use the image's python3.
    if container is not None and container.runtime == "pyxis":
        return "python3"
    return None


def make_executor(folder: Path, params: dict, max_attempts: int, python: str | None = None):
    try:
        ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=max_attempts + 1, python=python)
    except RuntimeError as e:
        raise RunError(f"Slurm's commands are not available on {socket.gethostname()}: {e} "
                       "(run on a login node, or load the Slurm module)") from None
    ex.update_parameters(**params)
    return ex


def launcher_for(job, bundle: Path, run_id: str) -> "NodeLauncher":
    prof = job.profile
    return NodeLauncher(
        bundle=str(bundle), run_id=run_id, mode=prof.preemption.mode,
        max_attempts=prof.preemption.max_attempts, signal_seconds=prof.preemption.signal_seconds,
        head_suffix=prof.network.hostname_suffix, port_base=prof.port_base,
        executor_params=executor_parameters(job, run_id), python=_python_for(job))


def submission_script(job, bundle: Path, run_id: str) -> str:
    """The sbatch script submitit would submit (for --dry-run); job.sbatch for pyxis."""
    if by_job_sbatch(job):
        return (Path(bundle) / "job.sbatch").read_text()
    launcher = launcher_for(job, bundle, run_id)
    ex = make_executor(Path(bundle) / SUBMITIT_DIR, launcher.executor_params, launcher.max_attempts, launcher.python)
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")  # noqa: SLF001


def submit(job, bundle: Path, run_id: str) -> str:
    """Submit; return the Slurm job id. RunError (one line) when Slurm refuses."""
    if by_job_sbatch(job):
        return _submit_job_sbatch(job, Path(bundle), run_id)
    launcher = launcher_for(job, bundle, run_id)
    return _submit_launcher(launcher, job=job)


def _submit_job_sbatch(job, bundle: Path, run_id: str) -> str:
    # HPCTUNE_PYTHON: the python the batch script asks what next after the step (this one,
    # which has hpctune; where the host cannot run it, job.sbatch asks inside the image).
    cmd = ["sbatch", "--parsable", f"--export=ALL,HPCTUNE_RUN_ID={run_id},HPCTUNE_PYTHON={sys.executable}",
           str(bundle / "job.sbatch")]
    with _outside_any_job():
        r = _run(cmd, timeout=60)
    if r.returncode != 0:
        raise RunError(explain_refusal(r.stderr, slurm_request(job).options(), job))
    job_id = r.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RunError(f"sbatch answered something unexpected: {r.stdout.strip()[:200]!r}")
    return job_id


def _submit_launcher(launcher: "NodeLauncher", job=None) -> str:
    folder = Path(launcher.bundle) / SUBMITIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ex = make_executor(folder, launcher.executor_params, launcher.max_attempts, launcher.python)
    noise = io.StringIO()
    try:
        # submitit prints sbatch's stderr itself on failure: keep it for our one line.
        with contextlib.redirect_stderr(noise), contextlib.redirect_stdout(noise), _outside_any_job():
            sj = ex.submit(launcher)
    except submitit_utils.FailedJobError as e:
        raise RunError(explain_refusal(str(e) or noise.getvalue(), launcher.executor_params, job)) from None
    except FileNotFoundError as e:
        raise RunError(f"cannot run sbatch: {e}") from None
    except submitit_utils.FailedSubmissionError as e:
        raise RunError(f"sbatch answered something unexpected: {str(e).splitlines()[0]}") from None
    return str(sj.job_id)


def explain_refusal(stderr: str, params: dict, job=None) -> str:
    """sbatch's error lines -> one line that says what was refused and what to check."""
    msgs = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in ("sbatch: error: ", "sbatch: fatal: ", "error: "):
            if line.startswith(prefix):
                line = line[len(prefix):]
        if line and line not in msgs:
            msgs.append(line)
    text = "; ".join(msgs) or "sbatch failed without a message"
    low = text.lower()
    extra = params.get("additional_parameters") or {}
    part = extra.get("partition")
    src = f" in {job.profile.source}" if job is not None and job.profile.source else ""
    if "invalid partition" in low:
        hint = f"partition {part!r} does not exist on this cluster (see `sinfo -s`); fix the partitions{src}"
    elif "node count specification invalid" in low:
        hint = f"{params.get('nodes')} nodes is more than partition {part!r} allows (`scontrol show partition {part}`); lower layout.nodes or fix max_nodes{src}"
    elif "unable to contact slurm controller" in low or "connection refused" in low and "controller" in low:
        hint = "the Slurm controller does not answer (`scontrol ping`); try again when it is up"
    elif "requested node configuration is not available" in low or "memory specification" in low:
        hint = (f"no node of partition {part!r} has {extra.get('gpus-per-node', 0)} GPUs, "
                f"{extra.get('cpus-per-task')} CPUs and {extra.get('mem')} memory (`sinfo -N -o '%N %c %m %G'`); fix node{src}")
    elif "time limit" in low:
        hint = f"a time limit of {extra.get('time')} is over the partition's limit; lower layout.time"
    elif "wckey" in low:
        hint = f"this site enforces wckeys: add sbatch_extra: {{wckey: NAME}}{src} (`sacctmgr show wckey`)"
    elif "account" in low or "association" in low:
        hint = f"check the account{src} (`sacctmgr show assoc user=$USER`)"
    elif "qos" in low:
        hint = f"check the qos{src}"
    else:
        hint = ""
    return f"Slurm refused the job: {text}" + (f" ({hint})" if hint else "")


# --- the callable that runs on every node ---------------------------------------------

class _Handled(Exception):
    """Raised from checkpoint() (inside submitit's signal handler) to end __call__ cleanly."""

    def __init__(self, result: dict):
        super().__init__(result)
        self.result = result


class NodeLauncher(submitit.helpers.Checkpointable):
    """Runs ``bash RUN/launch.sh`` on one node; handles the time-limit / preemption signal."""

    def __init__(self, bundle: str, run_id: str, *, mode: str, max_attempts: int, signal_seconds: int,
                 head_suffix: str = "", port_base: int = 20000, executor_params: dict | None = None,
                 python: str | None = None,
                 resubmissions: int = 0):
        self.bundle = str(bundle)
        self.run_id = run_id
        self.mode = mode
        self.max_attempts = int(max_attempts)
        self.signal_seconds = int(signal_seconds)
        self.head_suffix = head_suffix
        self.port_base = int(port_base)
        self.executor_params = dict(executor_params or {})
        self.python = python
        self.resubmissions = int(resubmissions)
        self._proc: subprocess.Popen | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_proc"] = None
        return state

    # The attempt number as launch.sh computes it: requeues + resubmissions + 1.
    def attempt(self) -> int:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0) + self.resubmissions + 1

    def _output(self) -> layout.Output:
        return RunFolder(self.bundle).output

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        node, hosts, job_id = env.node, list(env.hostnames), str(env.job_id)
        bundle = Path(self.bundle)
        (bundle / "logs").mkdir(parents=True, exist_ok=True)
        proctree.become_subreaper()
        child_env = dict(os.environ)
        child_env.update({
            "HPCTUNE_REQUEUE_BY": "submitit",
            "HPCTUNE_NODE_RANK": str(node),
            # head and port computed once, here, on the host: launch.sh needs no Slurm command
            "HPCTUNE_HEAD_ADDR": hosts[0] + self.head_suffix,
            # SLURM_JOB_ID: an array task's own id, so the tasks of a sweep differ
            "HPCTUNE_MAIN_PORT": str(self.port_base + int(os.environ.get("SLURM_JOB_ID") or job_id.split("_")[0]) % 10000),
            "HPCTUNE_RESUBMISSIONS": str(self.resubmissions),
            "HPCTUNE_RUN_ID": self.run_id,
            # the accelerate that belongs to this python, if set-up lines do not choose one
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        })
        log = bundle / "logs" / f"node-{job_id}-{node}.out"
        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        with open(log, "ab", buffering=0) as out:
            out.write(f"hpctune: node {node} of {env.num_nodes} ({host}) in job {job_id}, hosts "
                      f"{','.join(hosts)}, attempt {self.attempt()}\n".encode())
            self._proc = subprocess.Popen(["bash", str(bundle / "launch.sh")], cwd=str(bundle), env=child_env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            rc = self._wait_child()
        except _Handled as handled:
            return handled.result
        finally:
            self._cleanup()
        if rc != 0:
            raise RuntimeError(f"node {node} ({host}): launch.sh exited with code {rc}; see {log}")
        return {"node": node, "job_id": job_id, "exit_code": rc,
                "interrupted": self._output().interrupted() is not None}

    def _wait_child(self, deadline: float | None = None) -> int | None:
        # Never block in Popen.wait(): it holds a lock that checkpoint() (run from the signal
        # handler on this same thread) would need. Poll instead.
        proc = self._proc
        while proc is not None and proc.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            proctree.reap_orphans(keep=proc.pid)
            time.sleep(0.25)
        return proc.returncode if proc is not None else None

    def _cleanup(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proctree.kill_tree(proc.pid, grace=5, keep=proc.pid)
            proc.poll()
        # Orphans adopted as a subreaper (e.g. training processes whose launcher died).
        proctree.kill_tree(os.getpid(), grace=5, include_root=False, keep=proc.pid if proc else None)

    def checkpoint(self, *args, **kwargs):  # noqa: ARG002 - submitit's signature
        """Called by submitit on global rank 0 when USR2 arrives (time limit or preemption)."""
        bundle = Path(self.bundle)
        job_id = os.environ.get("SLURM_JOB_ID", "")
        attempt = self.attempt()
        # Wait for the checkpoint at most until shortly before the kill: the signal's lead
        # time, or less when Slurm says less is left (it checks limits only every ~30 s).
        left = _time_left_s(job_id)
        bound = max(5.0, min(float(self.signal_seconds), left if left is not None else 1e9) - 5.0)
        RunFolder(bundle).append_event("signal", job_id=job_id, attempt=attempt, signal="USR2", wait_s=round(bound, 1))
        t0 = time.monotonic()
        rc = self._stop_child(bound)
        stopped_s = round(time.monotonic() - t0, 1)
        marker = self._output().interrupted() is not None
        if self._proc is None:
            # The signal came before launch.sh started: nothing ran, nothing to save.
            RunFolder(bundle).append_event("signal_before_start", job_id=job_id, attempt=attempt)
        elif rc is None:
            RunFolder(bundle).append_event("stop_timeout", job_id=job_id, attempt=attempt, waited_s=stopped_s)
            proctree.kill_tree(self._proc.pid, grace=3, keep=self._proc.pid)
        elif rc == 0 and not marker:
            RunFolder(bundle).append_event("finished_before_stop", job_id=job_id, attempt=attempt)
            raise _Handled({"job_id": job_id, "exit_code": 0, "interrupted": False})
        elif not marker:
            RunFolder(bundle).append_event("failed_during_stop", job_id=job_id, attempt=attempt, exit_code=rc)
            raise RuntimeError(f"the training exited with code {rc} while stopping for the time limit/preemption")
        else:
            RunFolder(bundle).append_event("checkpointed", job_id=job_id, attempt=attempt, waited_s=stopped_s)
        cancelled = RunFolder(bundle).cancel_requested()
        if cancelled or self.mode == "none" or attempt >= self.max_attempts:
            why = ("a cancel was requested" if cancelled
                   else "this profile's preemption mode is none" if self.mode == "none"
                   else f"attempt {attempt} of {self.max_attempts}")
            RunFolder(bundle).append_event("stopped", job_id=job_id, attempt=attempt, reason=why)
            raise _Handled({"job_id": job_id, "interrupted": True, "continued": False, "reason": why})
        if self.mode == "cancel":
            new_id = self._resubmit()
            RunFolder(bundle).append_event("resubmitted", job_id=new_id, previous=job_id, attempt=attempt + 1)
            raise _Handled({"job_id": job_id, "interrupted": True, "continued_in": new_id})
        RunFolder(bundle).append_event("requeue", job_id=job_id, attempt=attempt + 1)
        return submitit.helpers.DelayedSubmission(self)  # submitit runs `scontrol requeue`

    def _stop_child(self, bound: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        deadline = time.monotonic() + bound
        last = -1e9
        while proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() - last >= 2.0:
                # Training processes that started after Slurm's signal missed it.
                proctree.signal_catchers(proc.pid, signal.SIGUSR2)
                last = time.monotonic()
            proctree.reap_orphans(keep=proc.pid)
            time.sleep(0.2)
        return proc.poll()

    def _resubmit(self) -> str:
        """Profiles with preemption mode ``cancel``: a new job, same callable, next attempt."""
        nxt = NodeLauncher(self.bundle, self.run_id, mode=self.mode, max_attempts=self.max_attempts,
                           signal_seconds=self.signal_seconds, head_suffix=self.head_suffix,
                           port_base=self.port_base,
                           executor_params=self.executor_params, python=self.python,
                           resubmissions=self.resubmissions + 1)
        return _submit_launcher(nxt)


@contextlib.contextmanager
def _outside_any_job():
    """sbatch run inside a job (an interactive allocation, or a node resubmitting) would
    pass that job's SLURM_* settings on to the new one: hide them while submitting."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.startswith(("SLURM_", "SRUN_", "SUBMITIT_")) and key != "SLURM_CONF":
                del os.environ[key]
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _time_left_s(job_id: str) -> float | None:
    """Seconds before the job's time limit, as squeue reports it (None if unknown)."""
    if not records.job_id_ok(job_id):
        return None
    r = _run(["squeue", "-h", "-j", job_id, "-o", "%L"], timeout=10)
    return parse_duration(r.stdout.strip()) if r.returncode == 0 else None


def parse_duration(text: str) -> float | None:
    """Slurm's [D-]HH:MM:SS, MM:SS or SS; None for INVALID/UNLIMITED/empty."""
    text = text.strip()
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        if not d.isdigit():
            return None
        days = int(d)
    parts = text.split(":")
    if not text or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p)
    return float(days * 86400 + secs)


# --- states ----------------------------------------------------------------------------

@dataclass
class JobInfo:
    job_id: str
    state: str
    nodes: str = ""
    reason: str = ""
    exit_code: str = ""
    source: str = ""


@dataclass
class Query:
    jobs: dict
    note: str | None = None      # e.g. accounting is unavailable: states may be incomplete


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]}: no answer in {timeout:.0f} s")


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def query(job_ids: list[str]) -> Query:
    """States of Slurm jobs: squeue for jobs Slurm still holds, sacct (through submitit's
    parser) for the others. Without accounting the note says states may be incomplete."""
    ids = [j for j in job_ids if records.job_id_ok(j)]  # never an option of squeue/sacct
    out: dict[str, JobInfo] = {}
    notes = []
    if not ids:
        return Query(out)
    sq = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r", "-j", ",".join(ids)])
    if sq.returncode == 0:
        for line in sq.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 4 and parts[0] in ids:
                out[parts[0]] = JobInfo(parts[0], parts[1].upper(), parts[2], parts[3], source="squeue")
    elif "invalid job id" not in sq.stderr.lower():
        notes.append(f"squeue failed: {_first_error(sq.stderr)}")
    missing = [j for j in ids if j not in out]
    if missing:
        sa = _run(["sacct", "--parsable2", "-X", "-o", "JobID,State,NodeList,ExitCode", "-j", ",".join(missing)])
        if sa.returncode != 0 or "error" in sa.stderr.lower():
            notes.append(f"Slurm accounting is unavailable ({_first_error(sa.stderr)}): "
                         "jobs that left the queue show as UNKNOWN; states may be incomplete")
        else:
            info = SlurmInfoWatcher().read_info(sa.stdout)
            for jid in missing:
                rec = info.get(jid)
                if rec:
                    state = (rec.get("State") or "UNKNOWN").split()[0].upper()
                    out[jid] = JobInfo(jid, state, rec.get("NodeList", ""), "", rec.get("ExitCode", ""), source="sacct")
    return Query(out, "; ".join(notes) or None)


def cancel_jobs(job_ids: list[str]) -> None:
    if not job_ids:
        return
    # Job ids only (digits, optionally _N), after `--`: nothing a record holds becomes an option.
    ids = [j for j in job_ids if records.job_id_ok(j)]
    if not ids:
        return
    r = _run(["scancel", "--", *ids])
    if r.returncode != 0:
        raise RunError(f"scancel failed: {_first_error(r.stderr)}")


# --- a sweep: one job array -------------------------------------------------------------------

def array_parameters(items, max_parallel: int | None, group_id: str) -> tuple[dict, list]:
    """(the array's executor parameters, one NodeLauncher per item (job, folder, run id))."""
    import copy
    launchers = [launcher_for(job, folder, run_id) for job, folder, run_id in items]
    params = copy.deepcopy(launchers[0].executor_params)
    extra = dict(params.get("additional_parameters", {}))
    # Each launcher sets HPCTUNE_RUN_ID for its own launch.sh; the array carries the sweep id.
    extra["export"] = f"ALL,HPCTUNE_SWEEP_ID={group_id}"
    params["additional_parameters"] = extra
    params["array_parallelism"] = max(1, min(max_parallel or len(launchers), len(launchers)))
    return params, launchers


def array_script(items, max_parallel: int | None, group_id: str, group_folder: Path) -> str:
    params, launchers = array_parameters(items, max_parallel, group_id)
    ex = make_executor(Path(group_folder) / SUBMITIT_DIR, params, launchers[0].max_attempts, launchers[0].python)
    if len(launchers) > 1:
        ex.parameters["map_count"] = len(launchers)
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")  # noqa: SLF001


def submit_array(items, max_parallel: int | None, group_id: str, group_folder: Path) -> list[str]:
    """One ``sbatch --array`` for every item; the task ids (``A_0``, ``A_1``, ...)."""
    params, launchers = array_parameters(items, max_parallel, group_id)
    folder = Path(group_folder) / SUBMITIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ex = make_executor(folder, params, launchers[0].max_attempts, launchers[0].python)
    noise = io.StringIO()
    try:
        with contextlib.redirect_stderr(noise), contextlib.redirect_stdout(noise), _outside_any_job():
            with ex.batch():
                jobs = [ex.submit(launcher) for launcher in launchers]
    except submitit_utils.FailedJobError as e:
        raise RunError(explain_refusal(str(e) or noise.getvalue(), params, items[0][0])) from None
    except FileNotFoundError as e:
        raise RunError(f"cannot run sbatch: {e}") from None
    except submitit_utils.FailedSubmissionError as e:
        raise RunError(f"sbatch answered something unexpected: {str(e).splitlines()[0]}") from None
    return [str(j.job_id) for j in jobs]
