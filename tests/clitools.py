"""Helpers for tests that run the real ``hpctune`` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hpctune(*args: str, cwd: str | Path | None = None, env: dict | None = None,
            timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m hpctune ARGS`` with this interpreter; capture text output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "hpctune", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpctune {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
