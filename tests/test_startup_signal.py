"""A stop signal before the first optimizer step ends the attempt cleanly (issue #11 item 5).

The real training process is started as launch.sh starts it (USR2 ignored until the training
installs its handler); the test waits until the process catches USR2 (``SigCgt`` in
/proc/PID/status), then sends it, as Slurm's time-limit warning would during start-up.
The attempt must end with exit 0 and a ``phase: startup`` marker, so that the host side
continues the job; nothing ends FAILED. The same on the real Slurm, with a time limit so short
that the warning comes during a DeepSpeed JIT build: tests/test_submit_slurm.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests import tiny_assets as ta


def _catches(pid: int, sig: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def test_usr2_before_the_first_step_ends_cleanly_with_a_startup_marker(tmp_path):
    recipe = ta.write_recipe(tmp_path, {"training.max_steps": 5})
    proc = subprocess.Popen(["bash", "-c", 'trap "" USR2; exec "$0" -m hpctune.train "$1"', ta.PYTHON, str(recipe)],
                            env=ta.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _catches(proc.pid, signal.SIGUSR2):
        assert proc.poll() is None and time.monotonic() < deadline, "the training never caught USR2"
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR2)  # during the preflight / model load: before any step
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    marker = json.loads((tmp_path / "output" / ".hpctune-interrupted").read_text())
    assert marker["phase"] == "startup" and marker["global_step"] == 0 and marker["checkpoint"] is None, marker
    assert "SIGUSR2" in marker["reason"]
    assert "stopped during start-up" in err and "Traceback" not in err
    assert not list((tmp_path / "output").glob("checkpoint-*"))  # nothing was trained, nothing saved
    # (the next attempt, requeued, trains from the start: tests/test_submit_slurm.py, real Slurm)
