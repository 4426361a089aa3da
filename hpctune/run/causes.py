"""Why an attempt ended: one pure function from what Slurm and the run folder say to a cause.

``classify(Evidence) -> Cause``. The evidence of one attempt (hpctune.run.evidence gathers
it) is Slurm's view (job and step states, exit code; sacct), the run folder's markers
(metrics.json, the interruption marker, the watchdog's verdict, heartbeats, every rank's
recorded exception) and the nodes' logs of that attempt (tracebacks, torchrun's failure
summary, srun's lost tasks, slurmstepd's OOM kills). Order of the rules, first match wins:

1. still running; completed (metrics.json says so); cancelled (a cancel was requested, or
   Slurm says CANCELLED for the job);
2. hang: the watchdog fired (its suspect rank names the node);
3. stopped with a checkpoint (the training's marker): time limit near the limit, else
   preempted;
4. Slurm: NODE_FAIL -> node failure; OUT_OF_MEMORY -> out of memory (host);
   TIMEOUT -> time limit, not checkpointed; PREEMPTED -> preempted;
5. the ranks: the earliest exception that is not a communication error -> out of memory
   (CUDA) or an error in the training (or "stopped before the first step" when no step was
   done); a launcher lost on a node (srun: task Killed) -> node failure; a rank killed by
   SIGKILL -> out of memory (host: the kernel's OOM killer, the usual sender); only communication errors ->
   NCCL/gloo error or timeout (errors in the peers of a failed rank are consequences, so
   they come last);
6. no step done -> stopped before the first step; else an error with Slurm's exit code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

KINDS = ("running", "completed", "cancelled", "hang", "time_limit", "preempted", "node_failure", "oom",
         "nccl", "error", "before_first_step", "unknown")

LABELS = {
    "running": "running", "completed": "completed", "cancelled": "cancelled by the user", "hang": "hang",
    "time_limit": "time limit", "preempted": "preempted", "node_failure": "node failure",
    "oom": "out of memory", "nccl": "communication error", "error": "error in the training",
    "before_first_step": "stopped before the first step", "unknown": "unknown",
}


@dataclass
class Cause:
    kind: str
    detail: str = ""               # "checkpointed at step 40", "CUDA", "NCCL timeout", ...
    node: str | None = None
    rank: int | None = None
    first_line: str = ""           # the first error line (an exception's type and message)
    log: str | None = None         # where the whole story is
    evidence: str = ""             # what the verdict was read from
    attempt: int | None = None
    job_id: str | None = None
    checkpointed: bool | None = None

    @property
    def label(self) -> str:
        text = LABELS.get(self.kind, self.kind)
        if self.kind == "time_limit":
            text += " (checkpointed)" if self.checkpointed else " (no checkpoint)"
        elif self.kind == "nccl" and self.detail:
            text = self.detail
        elif self.kind == "oom" and self.detail:
            text += f" ({self.detail})"
        return text

    def why(self) -> str:
        """The one line `status` shows."""
        parts = [self.label]
        where = []
        if self.rank is not None:
            where.append(f"rank {self.rank}")
        if self.node:
            where.append(f"node {self.node}")
        if where:
            parts.append("on " + ", ".join(where))
        text = " ".join(parts)
        if self.first_line:
            text += f": {self.first_line}"
        elif self.detail and self.kind not in ("nccl", "oom"):
            text += f": {self.detail}"
        if self.log:
            text += f" (see {self.log})"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, data: dict) -> "Cause":
        known = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class Evidence:
    attempt: int
    job_id: str | None = None
    running: bool = False
    slurm_state: str = ""                  # the job's (or this run of it) State from sacct
    exit_code: str = ""                    # "1:0"
    step_states: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    down_nodes: list[str] = field(default_factory=list)   # the job's nodes Slurm has down/failing
    started: float | None = None
    ended: float | None = None
    time_limit_s: float | None = None
    signal_seconds: float | None = None
    completed: bool = False
    cancel_requested: bool = False
    interrupted: dict | None = None        # the training's marker, when written in this attempt
    watchdog: dict | None = None
    heartbeats: dict = field(default_factory=dict)   # rank -> heartbeat
    stacks: dict = field(default_factory=dict)       # rank -> stack text (the watchdog's dumps)
    errors: dict = field(default_factory=dict)       # rank -> recorded exception
    logs: dict = field(default_factory=dict)         # node log path -> this attempt's text
    batch_log: str = ""                              # this attempt's part of slurm-<job>.out
    batch_log_path: str | None = None
    attempt_dir: str | None = None                   # where this attempt's records and stacks are


# --- reading logs ---------------------------------------------------------------------------

_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:\s?")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Timeout|Warning)|[\w.]+\.[A-Z]\w+)(?::\s?(.*))?$")
_COMM = re.compile(r"NCCL|nccl|gloo|Gloo|ProcessGroup|DistBackendError|DistNetworkError|DistStoreError|"
                   r"Connection closed by peer|Connection reset by peer|collective operation timeout|"
                   r"c10d|TCPStore|RendezvousTimeout|Socket Timeout", re.I)
_CUDA_OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDA error: out of memory")
_TIMEOUT = re.compile(r"time(?:d)?[ _-]?out|Timeout", re.I)
_SRUN_LOST = re.compile(r"srun: error: (\S+): tasks? ([\d\-,]+): (Killed|Terminated|Exited with exit code \d+)")
_OOM_KILL = re.compile(r"(?:slurmstepd(?:-(\S+))?: error: )?Detected \d+ oom[-_ ]kill event", re.I)
_SIGNAL = re.compile(r"Signal (\d+) \((SIG\w+)\) received by PID (\d+)")
_LAUNCH_ERROR = re.compile(r"^(?:hpctune launch: error: |error: )(.+)$", re.M)


# The launchers' own reports of a failed worker: consequences, never a cause themselves.
_LAUNCHER_NOISE = re.compile(r"ChildFailedError|SignalException|elastic\.multiprocessing\.errors")


def is_launcher_noise(line: str) -> bool:
    return bool(_LAUNCHER_NOISE.search(line or ""))


def is_comm_error(line: str) -> bool:
    return bool(_COMM.search(line or ""))


def tracebacks(text: str) -> list[dict]:
    """Python tracebacks in a log: {rank (from a "[rankN]:" prefix, else None), first_line, line_no}."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        m = _RANK_PREFIX.match(raw)
        rank = int(m.group(1)) if m else None
        body = raw[m.end():] if m else raw
        if body.startswith("Traceback (most recent call last):"):
            j = i + 1
            exc = None
            while j < len(lines):
                inner = lines[j]
                mm = _RANK_PREFIX.match(inner)
                if mm and rank is not None and int(mm.group(1)) != rank:
                    j += 1
                    continue
                inner = inner[mm.end():] if mm else inner
                if inner.startswith((" ", "\t")) or not inner.strip():
                    j += 1
                    continue
                if inner.startswith(("During handling", "The above exception")):
                    j += 1
                    continue
                if inner.startswith("Traceback (most recent call last):"):
                    j += 1
                    continue
                if _EXC_LINE.match(inner.strip()):
                    exc = inner.strip()
                break
            if exc and not is_launcher_noise(exc):
                out.append({"rank": rank, "first_line": exc, "line_no": i + 1})
            i = j + 1
            continue
        i += 1
    return out


def torchrun_failures(text: str) -> list[dict]:
    """torchrun's failure summary: [{rank, host, exitcode, signal, time}] (root cause first)."""
    out = []
    for block in re.finditer(r"\[\d+\]:\n((?:  \w[\w ]*: .*\n?)+)", text):
        fields = dict(re.findall(r"^  (\w[\w ]*?)\s*: (.*)$", block.group(1), re.M))
        if "rank" not in fields or "exitcode" not in fields:
            continue
        rank = re.match(r"(\d+)", fields["rank"])
        code = re.match(r"(-?\d+)", fields["exitcode"])
        sig = _SIGNAL.search(fields.get("traceback", ""))
        out.append({"rank": int(rank.group(1)) if rank else None, "host": fields.get("host"),
                    "exitcode": int(code.group(1)) if code else None,
                    "signal": sig.group(2) if sig else None, "time": fields.get("time")})
    return out


_NCCL_LINE = re.compile(r"^(?:\[rank(\d+)\]:)?.*?((?:\[Rank (\d+)\] )?(?:Watchdog caught collective operation timeout|"
                        r"NCCL error|ncclInternalError|ncclSystemError|ncclRemoteError|ncclUnhandledCudaError|"
                        r"NCCL communicator was aborted).*)$", re.M)


def nccl_lines(text: str) -> list[dict]:
    """NCCL's own error lines (C++ logging: a rank taken down by SIGABRT leaves no traceback)."""
    out = []
    for m in _NCCL_LINE.finditer(text or ""):
        rank = m.group(1) or m.group(3)
        out.append({"rank": int(rank) if rank else None, "first_line": m.group(2).strip()[:300]})
    return out


def lost_tasks(batch_log: str) -> list[dict]:
    """srun's lines about tasks that died: [{node, how}]."""
    return [{"node": m.group(1), "how": m.group(3)} for m in _SRUN_LOST.finditer(batch_log or "")]


def first_launch_error(text: str) -> str:
    m = _LAUNCH_ERROR.search(text or "")
    return m.group(1).strip() if m else ""


# --- the verdict ------------------------------------------------------------------------------

def _steps_done(ev: Evidence) -> int | None:
    if not ev.heartbeats:
        return None
    return max(int(hb.get("step") or 0) - int(hb.get("start_step") or 0) for hb in ev.heartbeats.values())


def _node_of_rank(ev: Evidence, rank: int | None) -> str | None:
    if rank is None:
        return None
    for src in (ev.errors, ev.heartbeats):
        rec = src.get(rank)
        if rec and rec.get("node"):
            return str(rec["node"])
    return None


def _log_of_node(ev: Evidence, node: str | None) -> str | None:
    if not ev.logs:
        return ev.batch_log_path
    index = next((rec.get("node_index") for src in (ev.errors, ev.heartbeats) for rec in src.values()
                  if node is not None and rec.get("node") == node and rec.get("node_index") is not None), None)
    if index is not None:
        for path in ev.logs:
            if path.endswith(f"-{index}.out"):
                return path
    if node is not None:
        for path, text in ev.logs.items():
            if f"({node})" in text or f"on {node}" in text or path.endswith(f"-{node}.out"):
                return path
    return next(iter(ev.logs))


def _log_errors(ev: Evidence) -> list[dict]:
    """Tracebacks found in the logs (for ranks that left no record), with their log."""
    out = []
    for path, text in ev.logs.items():
        for tb in tracebacks(text):
            tb["log"] = path
            out.append(tb)
    return out


def _near_limit(ev: Evidence, when: float | None) -> bool:
    if ev.slurm_state.startswith("TIMEOUT"):
        return True
    if when is None or ev.started is None or not ev.time_limit_s:
        return False
    lead = (ev.signal_seconds or 90) + 90  # Slurm checks limits about every 30-60 s
    return when >= ev.started + ev.time_limit_s - lead


def _states(ev: Evidence) -> list[str]:
    return [s.split()[0].upper() for s in [ev.slurm_state, *ev.step_states] if s]


def classify(ev: Evidence) -> Cause:
    base = {"attempt": ev.attempt, "job_id": ev.job_id}
    states = _states(ev)
    if ev.running:
        return Cause("running", **base)
    if ev.completed:
        return Cause("completed", evidence="metrics.json", **base)
    if ev.cancel_requested or (states and states[0] == "CANCELLED"):
        by = ev.slurm_state.partition(" by ")[2]
        return Cause("cancelled", detail=f"by uid {by}" if by else "",
                     evidence="hpctune cancel" if ev.cancel_requested else "Slurm state CANCELLED", **base)
    if ev.watchdog:
        from hpctune.run.watchdog import suspect_from_stacks
        sus = ev.watchdog.get("suspect") or suspect_from_stacks(ev.stacks, ev.heartbeats) or {}
        ranks, nodes = sus.get("ranks") or [], sus.get("nodes") or []
        rank = ranks[0] if len(ranks) == 1 else None
        node = nodes[0] if len(nodes) == 1 else _node_of_rank(ev, rank)
        line = f"no rank advanced for {ev.watchdog.get('stalled_s')} s (limit {ev.watchdog.get('limit_s')} s)"
        if sus.get("why"):
            line += f"; {sus['why']}"
        return Cause("hang", node=node, rank=rank, first_line=line, log=f"stacks in {ev.attempt_dir or f'logs/attempt-{ev.attempt}'}",
                     evidence="watchdog", **base)
    if ev.interrupted is not None:
        step = ev.interrupted.get("global_step")
        reason = str(ev.interrupted.get("reason") or "")
        # the same signal warns of the time limit and of a preemption: when it came tells them apart
        kind = "time_limit" if _near_limit(ev, ev.interrupted.get("time")) else "preempted"
        return Cause(kind, detail=f"checkpointed at step {step} ({reason or 'signal'})", checkpointed=True,
                     evidence="the training's interruption marker", **base)
    if "NODE_FAIL" in states:
        node = _first_of(ev.down_nodes, ev.nodes) if ev.down_nodes else _stalest_node(ev)
        return Cause("node_failure", node=node, detail="Slurm state NODE_FAIL", evidence="sacct NODE_FAIL",
                     log=ev.batch_log_path, **base)
    if "OUT_OF_MEMORY" in states:
        m = _OOM_KILL.search(ev.batch_log + "\n".join(ev.logs.values()))
        return Cause("oom", detail="host memory", node=(m.group(1) if m and m.group(1) else None),
                     first_line="Slurm state OUT_OF_MEMORY: the job used more memory than it asked for (--mem)",
                     evidence="sacct OUT_OF_MEMORY", log=ev.batch_log_path, **base)
    if states and states[0] == "TIMEOUT":
        return Cause("time_limit", checkpointed=False, detail="no checkpoint was saved in time",
                     evidence="sacct TIMEOUT", log=ev.batch_log_path, **base)
    if states and states[0] in ("PREEMPTED", "REQUEUED"):
        # Slurm stopped and requeued it (errors in the ranks while they were killed are
        # consequences); a requeue hpctune decided itself is recorded with its own cause
        near = _near_limit(ev, ev.ended)
        return Cause("time_limit" if near else "preempted", checkpointed=False, evidence=f"sacct {states[0]}", **base)

    done = _steps_done(ev)
    errors = sorted(((rec.get("time") or 0, rank, rec) for rank, rec in ev.errors.items()), key=lambda t: (t[0], t[1]))
    own = [(r, rec) for _, r, rec in errors if not is_comm_error(rec.get("first_line", ""))]
    comm = [(r, rec) for _, r, rec in errors if is_comm_error(rec.get("first_line", ""))]
    logged = _log_errors(ev)
    if not own:
        own = [(tb["rank"], {"first_line": tb["first_line"], "log": tb["log"]}) for tb in logged
               if not is_comm_error(tb["first_line"]) and tb["rank"] not in ev.errors]
    if own:
        rank, rec = own[0]
        node = rec.get("node") or _node_of_rank(ev, rank)
        line = rec.get("first_line", "")
        log = rec.get("log") or _log_of_node(ev, node)
        ev_src = "the rank's recorded exception" if rank in ev.errors else "a traceback in the log"
        if _CUDA_OOM.search(line) or any(_CUDA_OOM.search(t) for t in rec.get("traceback", [])[-3:]):
            return Cause("oom", detail="CUDA", node=node, rank=rank, first_line=line, log=log, evidence=ev_src, **base)
        kind = "before_first_step" if not done else "error"
        return Cause(kind, node=node, rank=rank, first_line=line, log=log, evidence=ev_src, **base)

    # A launcher killed on a node (the node or its launcher lost): srun says so. Before the
    # workers killed by SIGKILL: srun's own kill of the other nodes' tasks looks like that too.
    lost = [t for t in lost_tasks(ev.batch_log) if t["how"] == "Killed"]
    if lost:
        node = lost[0]["node"]
        return Cause("node_failure", node=node, detail="the launcher on the node was lost",
                     first_line=f"srun: the task on {node} was killed", log=ev.batch_log_path,
                     evidence="srun: a task was killed", **base)

    all_text = "\n".join(ev.logs.values())
    killed = [f for f in torchrun_failures(all_text) if f["signal"] == "SIGKILL" or f["exitcode"] == -9]
    oom_kill = _OOM_KILL.search(ev.batch_log + "\n" + all_text)
    if killed or oom_kill:
        f = killed[0] if killed else {}
        rank = f.get("rank")
        node = _node_of_rank(ev, rank) or f.get("host") or (oom_kill.group(1) if oom_kill and oom_kill.group(1) else None)
        line = (f"rank {rank} was killed by SIGKILL, with no error of its own: the kernel's OOM killer is the usual "
                "sender (check `sacct -o MaxRSS` / the node's dmesg)") if killed else "slurmstepd detected an OOM kill"
        return Cause("oom", detail="host memory", node=node, rank=rank, first_line=line, log=_log_of_node(ev, node),
                     evidence="torchrun: worker killed by SIGKILL" if killed else "slurmstepd oom-kill event", **base)

    nccl = nccl_lines(all_text)
    if comm or nccl or any(is_comm_error(tb["first_line"]) for tb in logged):
        if nccl and not comm:
            rank, line, log = nccl[0]["rank"], nccl[0]["first_line"], None
            node = _node_of_rank(ev, rank)
        elif comm:
            rank, rec = comm[0]
            line, node, log = rec.get("first_line", ""), rec.get("node") or _node_of_rank(ev, rank), None
        else:
            tb = next(tb for tb in logged if is_comm_error(tb["first_line"]))
            rank, line, log = tb["rank"], tb["first_line"], tb["log"]
            node = _node_of_rank(ev, rank)
        backend = "NCCL" if "nccl" in line.lower() else "gloo" if "gloo" in line.lower() else "NCCL/gloo"
        detail = f"{backend} {'timeout' if _TIMEOUT.search(line) else 'error'}"
        # The peer that dropped out is the suspect: the rank whose heartbeat stopped first.
        stale = _stalest_node(ev)
        return Cause("nccl", detail=detail, node=stale or node, rank=rank, first_line=line,
                     log=log or _log_of_node(ev, node), evidence="communication errors only", **base)

    launch_error = first_launch_error(ev.batch_log + "\n" + all_text)
    if not done:
        return Cause("before_first_step", first_line=launch_error or _exit_text(ev), log=_log_of_node(ev, None),
                     evidence="no step done in this attempt", **base)
    if states and states[0] in ("FAILED", "COMPLETED", "BOOT_FAIL", "DEADLINE"):
        return Cause("error", first_line=launch_error or _exit_text(ev), log=_log_of_node(ev, None),
                     evidence=f"sacct {states[0]}", **base)
    return Cause("unknown", first_line=_exit_text(ev), log=_log_of_node(ev, None), **base)


def _exit_text(ev: Evidence) -> str:
    if ev.exit_code and ev.exit_code != "0:0":
        code, _, sig = ev.exit_code.partition(":")
        return f"exit code {code}" + (f", signal {sig}" if sig and sig != "0" else "")
    return ev.slurm_state or ""


def _first_of(items: list[str], within: list[str]) -> str | None:
    for x in items:
        if not within or x in within:
            return x
    return items[0] if items else None


def _stalest_node(ev: Evidence) -> str | None:
    """The node whose ranks' heartbeats stopped first (only if it is alone in that)."""
    if len(ev.heartbeats) < 2:
        return None
    times = {}
    for hb in ev.heartbeats.values():
        node = str(hb.get("node") or "")
        times[node] = max(times.get(node, 0.0), float(hb.get("time") or 0.0))
    if len(times) < 2:
        return None
    ordered = sorted(times.items(), key=lambda kv: kv[1])
    (node, t0), (_, t1) = ordered[0], ordered[1]
    return node if t1 - t0 > 5 else None
