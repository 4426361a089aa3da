#!/usr/bin/env python3
"""How long `hpctune submit` takes to return on a warm Slurm (queue wait excluded).

Runs the real command line (a fresh `python -m hpctune submit` process each time, as a
user would) against the project's test cluster (`bin/testcluster start` first): render,
checks, submitit's pickle and sbatch, registry entry. Each job is submitted held back
(`--begin=now+1hour`, through the profile's sbatch_extra) and cancelled right after, so
that no training competes with the next measurement. The target is a median of at most
1.0 s.

    python bench/bench_submit.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        print("bench_submit: no Slurm controller answers (run bin/testcluster start)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hpctune-bench-") as tmp:
        tmp = Path(tmp)
        prof = yaml.safe_load((REPO / "clusters" / "testcluster.yaml").read_text())
        prof["name"] = "bench-tc"
        prof["sbatch_extra"] = {"begin": "now+1hour"}  # held: measures submission only
        prof["network"] = {"socket_ifname": "lo"}
        (tmp / "clusters").mkdir()
        (tmp / "clusters" / "bench-tc.yaml").write_text(yaml.safe_dump(prof))
        env = dict(os.environ, HPCTUNE_HOME=str(tmp / "home"), HPCTUNE_CLUSTERS=str(tmp / "clusters"))
        cmd = [sys.executable, "-m", "hpctune", "submit", "-c", "bench-tc", "tiny-sft",
               "--set", "layout.nodes=2", "--set", "deepspeed.zero_stage=3"]
        walls, jobs = [], []
        try:
            for _ in range(args.runs + 1):  # the first one warms the file cache; not counted
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(f"bench_submit: submit failed: {proc.stderr.strip()}", file=sys.stderr)
                    return 1
                m = re.search(r"Slurm job (\d+)", proc.stdout)
                if m:
                    jobs.append(m.group(1))
                    subprocess.run(["scancel", m.group(1)], capture_output=True)
                walls.append(wall)
        finally:
            if jobs:
                subprocess.run(["scancel", *jobs], capture_output=True)
        walls = walls[1:]
        # the same process, for scale: interpreter + imports only
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import hpctune.commands.submit, hpctune.run.backends.slurm"], check=True)
        imports = time.perf_counter() - t0
    result = {
        "runs": len(walls), "median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3), "python_and_imports_s": round(imports, 3), "target_median_s": TARGET_S,
        "ok": statistics.median(walls) <= TARGET_S,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"hpctune submit (2 nodes, warm test cluster): median {result['median_s']:.3f} s over {len(walls)} runs "
              f"(min {result['min_s']:.3f}, max {result['max_s']:.3f}; python + imports alone "
              f"{result['python_and_imports_s']:.3f} s); target <= {TARGET_S} s: {'ok' if result['ok'] else 'OVER'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
