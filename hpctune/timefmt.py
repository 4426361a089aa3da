"""Slurm time limits: parse ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""

from __future__ import annotations

import re

from hpctune.errors import ConfigError

_FORMATS = [
    (re.compile(r"(\d+)"), lambda m: int(m[1])),
    (re.compile(r"(\d+):(\d{1,2})"), lambda m: int(m[1]) + int(m[2]) / 60),
    (re.compile(r"(\d+):(\d{1,2}):(\d{1,2})"), lambda m: int(m[1]) * 60 + int(m[2]) + int(m[3]) / 60),
    (re.compile(r"(\d+)-(\d{1,2})"), lambda m: int(m[1]) * 1440 + int(m[2]) * 60),
    (re.compile(r"(\d+)-(\d{1,2}):(\d{1,2})"), lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3])),
    (re.compile(r"(\d+)-(\d{1,2}):(\d{1,2}):(\d{1,2})"),
     lambda m: int(m[1]) * 1440 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 60),
]


def parse_minutes(value: str | int, source: str = "", field: str = "") -> float:
    """Minutes in a Slurm time string; ConfigError naming source/field if malformed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    for pattern, minutes in _FORMATS:
        m = pattern.fullmatch(text)
        if m:
            return float(minutes(m))
    raise ConfigError(source, field, f"{value!r} is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)")


def format_slurm(minutes: float) -> str:
    """Minutes as D-HH:MM:SS (what #SBATCH --time gets)."""
    total = int(round(minutes * 60))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:{secs:02d}" if days else f"{hours:02d}:{mins:02d}:{secs:02d}"
