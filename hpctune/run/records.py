"""What a registry record, and the job ids a run folder lists, may hold.

The registry folder may be shared with a team (``HPCTUNE_HOME``) and run folders live on a
shared filesystem: a record can be cut short, corrupted, or written by someone else. Each
record is checked when it is read, field by field; a bad one is named (file and field) and
skipped by ``hpctune runs``, and refused by ``status``/``cancel``/``logs``. Job ids become
arguments of ``scancel``/``squeue``/``sacct``/``scontrol`` only when they are digits with an
optional array suffix (``123``, ``123_4``): never an option such as ``--user=...``.
"""

from __future__ import annotations

import math
import re

from hpctune.errors import RunError

JOB_ID = re.compile(r"[0-9]{1,12}(?:_[0-9]{1,9})?")
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,199}")
PARTITION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,127}")
# Every state hpctune records or a backend reports (Slurm's job states, plus hpctune's own).
STATES = {
    "SUBMITTED", "PENDING", "RUNNING", "COMPLETING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "STOPPED", "SUSPENDED",
    "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "CONFIGURING", "RESV_DEL_HOLD",
    "UPDATE_DB", "POWER_UP_NODE", "LAUNCH_FAILED", "RECONFIG_FAIL", "UNKNOWN",
}
SCHEDULERS = {"slurm", "local"}


class RecordError(RunError):
    """A registry record (or run-folder file) that does not hold what it must."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = str(source), field, message
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")


def job_id_ok(value) -> bool:
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def _text(value, limit: int = 4096) -> str | None:
    """Why ``value`` is no one-line text (None if it is)."""
    from hpctune.schema import bad_char
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    if len(value) > limit:
        return f"longer than {limit} characters"
    ch = bad_char(value)
    if ch is not None:
        return f"holds the control or invisible character {ch!r}"
    return None


def _int(value, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {type(value).__name__}"
    if not lo <= value <= hi:
        return f"{value} is outside {lo}..{hi}"
    return None


def _number(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return "expected a time stamp (a non-negative number)"
    return None


def _path(value) -> str | None:
    why = _text(value)
    if why:
        return why
    if not value.startswith("/"):
        return f"{value!r} is not an absolute path"
    return None


def _pattern(rx: re.Pattern, what: str):
    def check(value):
        why = _text(value, 256)
        if why:
            return why
        return None if rx.fullmatch(value) else f"{value!r} is not {what}"
    return check


def _optional(check):
    return lambda value: None if value is None else check(value)


def _one_of(allowed: set):
    return lambda value: None if isinstance(value, str) and value in allowed else (
        f"{value!r} is not one of {', '.join(sorted(allowed))}")


def _list_of(check):
    def inner(value):
        if not isinstance(value, list):
            return f"expected a list, got {type(value).__name__}"
        for i, item in enumerate(value):
            why = check(item)
            if why:
                return f"item {i}: {why}"
        return None
    return inner


def _job_id(value) -> str | None:
    return None if job_id_ok(value) else f"{value!r} is not a Slurm job id (digits, optionally _N)"


def _local(value) -> str | None:
    if not isinstance(value, dict):
        return f"expected a mapping, got {type(value).__name__}"
    why = _text(value.get("host", ""), 256)
    if why:
        return f"host: {why}"
    pid = value.get("pid")
    if pid is not None and _int(pid, 1, 2**31 - 1):
        return f"pid: {_int(pid, 1, 2**31 - 1)}"
    return None


def _grid(value) -> str | None:
    if not isinstance(value, dict):
        return f"expected a mapping, got {type(value).__name__}"
    for k, v in value.items():
        if not isinstance(v, (str, int, float)):
            return f"{k!r}: expected a value as given on the command line, got {type(v).__name__}"
        why = _text(k, 256) or _text(v if isinstance(v, str) else str(v), 1024)
        if why:
            return f"{k!r}: {why}"
    return None


FIELDS = {
    "id": _pattern(RUN_ID, "a run id"), "cluster": lambda v: _text(v, 256), "recipe": lambda v: _text(v, 256),
    "bundle": _path, "output_dir": _path, "scheduler": _one_of(SCHEDULERS),
    "nodes": lambda v: _int(v, 1, 1 << 20), "procs_per_node": lambda v: _int(v, 1, 1 << 16), "submitted": _number,
    "cluster_file": _text, "recipe_file": _text, "partition": _optional(_pattern(PARTITION, "a partition name")),
    "time_limit": lambda v: _text(v, 64), "preemption": _one_of({"requeue", "cancel", "none"}),
    "max_attempts": lambda v: _int(v, 1, 1000), "max_steps": _optional(lambda v: _int(v, 1, 10**12)),
    "submitted_from": lambda v: _text(v, 512), "jobs": _list_of(_job_id), "local": _optional(_local),
    "state": _one_of(STATES), "state_time": _number, "sweep": _optional(_pattern(RUN_ID, "a sweep id")),
    "grid": _optional(_grid), "forced": _list_of(lambda v: _text(v, 4096)),
}
REQUIRED = ("id", "cluster", "recipe", "bundle", "output_dir", "scheduler", "nodes", "procs_per_node", "submitted")


def check(data, source: str) -> dict:
    """The record's known fields, each checked; RecordError naming the first bad field."""
    if not isinstance(data, dict):
        raise RecordError(source, "", f"not a run record (a JSON object), got {type(data).__name__}")
    for name in REQUIRED:
        if name not in data:
            raise RecordError(source, name, "is missing")
    out = {}
    for name, value in data.items():
        if name in FIELDS:
            why = FIELDS[name](value)
            if why:
                raise RecordError(source, name, why)
            out[name] = value
    return out
