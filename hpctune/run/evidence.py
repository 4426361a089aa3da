"""Gather the evidence of each attempt of a run, for hpctune.run.causes.classify.

Reads the run folder (attempts.jsonl, each attempt's folder, the output markers, the nodes'
logs split at the launch lines that name the attempt, the batch log) and, for Slurm runs,
one ``sacct -D`` call: every run of every job of the run (a requeued job appears once per
run, oldest first), with its steps. No torch, no submitit.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpctune.run import folder
from hpctune.run.records import job_id_ok
from hpctune.run.causes import Cause, Evidence, classify

SACCT_FIELDS = "JobID,JobIDRaw,State,ExitCode,NodeList,Start,End,ElapsedRaw,AllocTRES,Timelimit"
_ATTEMPT_HEADER = re.compile(r"^hpctune(?: launch)?: node .*attempt (\d+)\s*$", re.M)


@dataclass
class SlurmRun:
    """One run of a Slurm job (a requeued job runs several times), with its steps."""
    job_id: str
    state: str
    exit_code: str = ""
    nodes: str = ""
    start: float | None = None
    end: float | None = None
    elapsed_s: float = 0.0
    gpus: int = 0                       # GPUs allocated (AllocTRES gres/gpu)
    steps: list[str] = field(default_factory=list)


def _ts(text: str) -> float | None:
    if not text or text in ("Unknown", "None"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_sacct(text: str) -> dict[str, list[SlurmRun]]:
    """``sacct -D --parsable2 -o SACCT_FIELDS`` output -> job id -> runs, oldest first."""
    out: dict[str, list[SlurmRun]] = {}
    header = None
    current: dict[str, SlurmRun] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells))
        jid = row.get("JobID", "")
        if not jid:
            continue
        base, _, step = jid.partition(".")
        if step:
            run = current.get(base)
            if run is not None and step not in ("batch", "extern"):
                run.steps.append(row.get("State", ""))
            continue
        gpus = re.search(r"gres/gpu=(\d+)", row.get("AllocTRES", ""))
        try:
            elapsed = float(row.get("ElapsedRaw") or 0)
        except ValueError:
            elapsed = 0.0
        run = SlurmRun(jid, row.get("State", ""), row.get("ExitCode", ""), row.get("NodeList", ""),
                       _ts(row.get("Start", "")), _ts(row.get("End", "")), elapsed, int(gpus.group(1)) if gpus else 0)
        out.setdefault(jid, []).append(run)
        current[jid] = run
        raw = row.get("JobIDRaw", "")
        if raw and raw != jid:  # an array task (123_4) is also known by its own id, as launch.sh records it
            out.setdefault(raw, []).append(run)
            current[raw] = run
    for runs in out.values():
        runs.sort(key=lambda r: r.start or 0)
    return out


def sacct(job_ids: list[str]) -> dict[str, list[SlurmRun]]:
    """Every run of these jobs (empty when accounting cannot be asked)."""
    ids = [j for j in job_ids if job_id_ok(j)]  # from records and heartbeats: never an option of sacct
    if not ids:
        return {}
    try:
        r = subprocess.run(["sacct", "-D", "--parsable2", "-o", SACCT_FIELDS, "-j", ",".join(ids)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_sacct(r.stdout) if r.returncode == 0 else {}


def down_nodes() -> list[str]:
    """Nodes Slurm has down, drained or not responding now."""
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-t", "down,drain,fail,no_respond", "-o", "%N"],
                           capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({ln.strip() for ln in r.stdout.splitlines() if ln.strip()}) if r.returncode == 0 else []


def split_attempts(text: str) -> dict[int, str]:
    """A node log appended by several attempts -> attempt -> its part."""
    parts: dict[int, str] = {}
    marks = list(_ATTEMPT_HEADER.finditer(text))
    if not marks:
        return {}
    # Each attempt prints the header twice (the launcher, then launch.sh): cut at changes only.
    cuts = []
    for m in marks:
        a = int(m.group(1))
        if not cuts or cuts[-1][0] != a:
            cuts.append((a, m.start()))
    for i, (a, start) in enumerate(cuts):
        end = cuts[i + 1][1] if i + 1 < len(cuts) else len(text)
        # the launcher's own line before the first header belongs to the first attempt
        parts[a] = parts.get(a, "") + text[0 if i == 0 else start:end]
    return parts


def _read(path: Path, limit: int = 4_000_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def attempt_table(bundle: Path) -> list[dict]:
    """Every attempt: {attempt, job_id, started, node} from attempts.jsonl, completed by
    the attempt folders (an attempt whose launch.sh never recorded itself)."""
    seen: dict[int, dict] = {}
    for rec in folder.read_jsonl(Path(bundle) / folder.ATTEMPTS):
        try:
            a = int(rec.get("attempt"))
        except (TypeError, ValueError):
            continue
        seen.setdefault(a, {"attempt": a, "job_id": str(rec.get("job_id") or ""), "started": rec.get("started"),
                            "node": rec.get("node")})
    for a in folder.attempt_numbers(bundle):
        if a not in seen:
            beats = folder.heartbeats(bundle, a)
            hb = next(iter(beats.values()), {})
            seen[a] = {"attempt": a, "job_id": str(hb.get("job_id") or ""), "started": hb.get("started"), "node": hb.get("node")}
    return [seen[a] for a in sorted(seen)]


def node_logs(bundle: Path, job_id: str) -> list[Path]:
    logs = Path(bundle) / folder.LOGS
    if job_id in ("", "local"):
        return [Path(bundle) / folder.LOCAL_NODE_LOG] if (Path(bundle) / folder.LOCAL_NODE_LOG).exists() else []
    if not job_id_ok(job_id):  # a hostile id would be a glob or a path outside logs/
        return []
    return sorted(logs.glob(f"node-{job_id}-*.out"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def batch_log(bundle: Path, job_id: str) -> Path | None:
    """Where srun's own messages go: job.sbatch's log, or submitit's batch stderr."""
    if not job_id_ok(job_id):  # "", "local", or nothing a file name may be built from
        return None
    # submitit merges the batch shell's stderr into the first task's output (stderr_to_stdout)
    for cand in (Path(bundle) / folder.LOGS / f"slurm-{job_id}.out",
                 Path(bundle) / folder.SUBMITIT / f"{job_id}_0_log.err",
                 Path(bundle) / folder.SUBMITIT / f"{job_id}_0_log.out"):
        if cand.exists():
            return cand
    return None


def gather(bundle: Path, *, state: str = "", job_runs: dict[str, list[SlurmRun]] | None = None,
           down: list[str] | None = None, output_dir: str | None = None,
           cancel_requested: bool = False) -> list[Evidence]:
    """The evidence of every attempt of the run in ``bundle``, oldest first.

    ``state`` is the run's current state (RUNNING/PENDING: the last attempt is not over)."""
    bundle = Path(bundle)
    man = folder.read_manifest(bundle)
    out_dir = Path(output_dir or man.get("output_dir") or bundle / folder.DEFAULT_OUTPUT)
    table = attempt_table(bundle)
    job_runs = job_runs or {}
    limit_s = _limit_s(man)
    signal_s = ((man.get("run") or {}).get("preemption") or {}).get("signal_seconds")
    metrics = folder.read_json(out_dir / folder.METRICS) or {}
    marker = folder.read_json(out_dir / folder.INTERRUPTED)
    if marker is None and (out_dir / folder.INTERRUPTED).exists():
        marker = {}
    events = folder.read_jsonl(bundle / folder.EVENTS)
    by_job: dict[str, int] = {}
    texts: dict[str, dict[int, str]] = {}
    result = []
    for i, att in enumerate(table):
        a, jid = att["attempt"], att["job_id"]
        last = i == len(table) - 1
        nth = by_job.get(jid, 0)
        by_job[jid] = nth + 1
        runs = job_runs.get(jid) or []
        srun = runs[nth] if nth < len(runs) else (runs[-1] if runs and last else None)
        ev = Evidence(attempt=a, job_id=jid or None, time_limit_s=limit_s, signal_seconds=signal_s,
                      started=float(att["started"]) if att.get("started") else None)
        if srun is not None:
            ev.slurm_state, ev.exit_code, ev.step_states = srun.state, srun.exit_code, list(srun.steps)
            ev.nodes = _hostlist(srun.nodes)
            ev.started = srun.start or ev.started
            ev.ended = srun.end
        ev.attempt_dir = str(folder.attempt_dir(bundle, a))
        ev.heartbeats = folder.heartbeats(bundle, a)
        ev.errors = folder.rank_errors(bundle, a)
        ev.watchdog = folder.read_json(folder.watchdog_path(bundle, a))
        if ev.watchdog:
            ev.stacks = {r: _read(p, 200_000) for r, p in folder.stacks(bundle, a).items()}
        for path in node_logs(bundle, jid):
            parts = texts.setdefault(str(path), split_attempts(_read(path)))
            if a in parts:
                ev.logs[str(path)] = parts[a]
        blog = batch_log(bundle, jid)
        if blog is not None and (last or (i + 1 < len(table) and table[i + 1]["job_id"] != jid)):
            ev.batch_log, ev.batch_log_path = _read(blog, 400_000), str(blog)
        if last:
            ev.running = state in ("RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED")
            ev.completed = metrics.get("status") == "completed"
            ev.interrupted = marker
            ev.cancel_requested = cancel_requested
            ev.down_nodes = [n for n in (down or []) if n in ev.nodes]
            if ev.running and srun is not None and srun.state.split()[0] not in ("RUNNING", "PENDING", "REQUEUED"):
                ev.running = False
        else:
            nxt = table[i + 1]
            ev.interrupted = _continued(bundle, nxt, texts, events, a)
        result.append(ev)
    return result


def _continued(bundle: Path, nxt: dict, texts: dict, events: list[dict], attempt: int) -> dict | None:
    """An earlier attempt that saved a checkpoint and stopped: the next one resumed from it
    (its marker is gone: the next attempt clears it when it starts)."""
    for ev in events:
        if ev.get("event") == "checkpointed" and ev.get("attempt") == attempt:
            return {"global_step": None, "reason": "SIGUSR2", "time": ev.get("time")}
    for path in node_logs(bundle, nxt["job_id"]):
        part = texts.get(str(path), {}).get(nxt["attempt"], "")
        m = re.search(r"resuming from checkpoint-(\d+)", part)
        if m and not folder.read_json(folder.watchdog_path(bundle, attempt)):
            beats = folder.heartbeats(bundle, attempt)
            step = max((int(hb.get("step") or 0) for hb in beats.values()), default=None)
            if step is None or step <= int(m.group(1)):
                return {"global_step": int(m.group(1)), "reason": "signal",
                        "time": max((hb.get("time") or 0 for hb in beats.values()), default=None)}
        if m or part:
            break
    return None


def _hostlist(expr: str) -> list[str]:
    if not expr or expr in ("None assigned", "(null)"):
        return []
    from hpctune.detect import expand_hostlist
    try:
        return expand_hostlist(expr)
    except Exception:  # noqa: BLE001 - an odd node list must not hide the cause
        return [expr]


def _limit_s(man: dict) -> float | None:
    text = (man.get("layout") or {}).get("time")
    if not text:
        return None
    from hpctune.timefmt import parse_minutes
    try:
        return float(parse_minutes(str(text), "manifest.json", "layout.time")) * 60.0
    except Exception:  # noqa: BLE001
        return None


def recorded(bundle: Path, *, by: str | None = None) -> dict[int, Cause]:
    """Causes recorded at the end of attempts (logs/causes.jsonl), by attempt; ``by``: only
    those one writer recorded (``after_step``: the host's verdict when the attempt ended)."""
    out = {}
    for rec in folder.read_jsonl(Path(bundle) / folder.CAUSES):
        if by is not None and rec.get("by") != by:
            continue
        try:
            out[int(rec["attempt"])] = Cause.from_dict(rec)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def causes(bundle: Path, **kw) -> list[Cause]:
    """Why each attempt ended (the last one: 'running' while it runs). The host's verdict
    recorded when an attempt ended wins over one read again now; what the login side cached
    (for `runs`) does not: logs on a shared filesystem may arrive after the first look."""
    rec = recorded(bundle, by="after_step")
    out = []
    for ev in gather(bundle, **kw):
        out.append(rec.get(ev.attempt) if ev.attempt in rec and not ev.running else classify(ev))
    return out


# --- for the commands: a run's causes, computed once and kept -------------------------------

def of_run(run, state: str = "", *, job_runs: dict | None = None) -> list[Cause]:
    """Why each attempt of a registered run ended (``run``: the registry's record)."""
    bundle = Path(run.bundle)
    jobs = list(run.job_ids()) if run.scheduler == "slurm" else []
    if job_runs is None:
        job_runs = job_runs_of(run)
    cancel = any(ev.get("event") == "cancel_requested" for ev in folder.read_jsonl(bundle / folder.EVENTS))
    down = None
    last_runs = job_runs.get(jobs[-1], []) if jobs else []
    if any("NODE_FAIL" in (r.state + " ".join(r.steps)) for r in last_runs):
        down = down_nodes()
    return causes(bundle, state=state, job_runs=job_runs, down=down, output_dir=run.output_dir,
                  cancel_requested=cancel)


def job_runs_of(run) -> dict[str, list[SlurmRun]]:
    """One sacct call for every job of a registered run: the registry's and those its
    attempts ran in (an array task's own id included)."""
    if run.scheduler != "slurm":
        return {}
    jobs = list(run.job_ids())
    jobs += [a["job_id"] for a in attempt_table(Path(run.bundle)) if a["job_id"] and a["job_id"] not in jobs]
    return sacct(jobs)


def record(bundle: Path, cause: Cause, **extra) -> None:
    """Keep the verdict on an ended attempt (logs/causes.jsonl), so it is read once."""
    folder.append_jsonl(Path(bundle) / folder.CAUSES, {**cause.to_dict(), "recorded": round(time.time(), 3), **extra})


def final(run, state: str, *, job_runs: dict | None = None) -> Cause | None:
    """The cause of the run's last attempt once the run is over (recorded after the first look)."""
    rec = recorded(Path(run.bundle))
    table = attempt_table(Path(run.bundle))
    if table and table[-1]["attempt"] in rec:
        return rec[table[-1]["attempt"]]
    found = of_run(run, state, job_runs=job_runs)
    if not found or found[-1].kind == "running":
        return found[-1] if found else None
    try:
        record(Path(run.bundle), found[-1], by="status")
    except OSError:
        pass
    return found[-1]


def rank_failures(bundle: Path, attempt: int, logs: dict[str, str], batch_log: str = "") -> list[dict]:
    """The first failure of every rank in one attempt, all nodes merged, oldest first:
    recorded exceptions (exact time), then tracebacks only seen in the logs, then srun's
    lost tasks and torchrun's killed workers."""
    from hpctune.run import causes as c
    out = []
    errs = folder.rank_errors(bundle, attempt)
    for rank, rec in errs.items():
        out.append({"time": rec.get("time"), "rank": rank, "node": rec.get("node"),
                    "line": rec.get("first_line", ""), "where": str(folder.error_path(bundle, attempt, rank))})
    seen = set(errs)
    for path, text in logs.items():
        for tb in c.tracebacks(text):
            if tb["rank"] is not None and tb["rank"] in seen:
                continue
            if tb["rank"] is not None:
                seen.add(tb["rank"])
            out.append({"time": None, "rank": tb["rank"], "node": None, "line": tb["first_line"],
                        "where": f"{path}:{tb['line_no']}"})
        for f in c.torchrun_failures(text):
            if f["rank"] not in seen and f["signal"]:
                seen.add(f["rank"])
                out.append({"time": None, "rank": f["rank"], "node": f["host"], "line": f"killed by {f['signal']}",
                            "where": path})
    for t in c.lost_tasks(batch_log):
        out.append({"time": None, "rank": None, "node": t["node"], "line": f"srun: the task on {t['node']}: {t['how']}",
                    "where": "batch log"})
    return sorted(out, key=lambda r: (r["time"] is None, r["time"] or 0))
