#!/usr/bin/env python3
"""Login-node speed: median wall time of `hpctune --help` and of rendering the Falcon
recipe, and the heavy modules `python -X importtime` sees (must be none).

    python bench/bench_cli.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "trl", "deepspeed", "accelerate", "datasets", "bitsandbytes")


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpctune", *args],
                          capture_output=True, text=True)
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    return sorted(names & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    n = ap.parse_args().runs
    exe = [sys.executable, "-m", "hpctune"]
    with tempfile.TemporaryDirectory() as tmp:
        render = exe + ["render", "-c", "example-a100-80g", "falcon-180b-lora-zero3", "-o", str(Path(tmp) / "b")]
        print(f"hpctune --help           median {wall(exe + ['--help'], n):.3f} s over {n} runs")
        print(f"hpctune render (Falcon)  median {wall(render, n):.3f} s over {n} runs")
        for name, cluster in (("llama2-70b-lora-zero3", "example-h100"), ("llama2-70b-qlora-zero3", "example-a100-40g"),
                              ("falcon-180b-lora-zero3", "example-a100-80g"),
                              ("bart-large-lora-zero3-offload", "example-a100-40g")):
            t = wall(exe + ["plan", "-c", cluster, name], n)
            print(f"hpctune plan {name:30s} median {t:.3f} s over {n} runs")
        auto = exe + ["plan", "-c", "example-h100", "llama2-70b-lora-zero3", "--set", "layout.nodes=auto"]
        print(f"hpctune plan --set layout.nodes=auto (Llama-70B, H100) median {wall(auto, n):.3f} s over {n} runs")
        print(f"heavy imports (--help):  {heavy_imports(['--help']) or 'none'}")
        print(f"heavy imports (render):  {heavy_imports(render[3:]) or 'none'}")
    try:
        acc = wall([str(Path(sys.executable).parent / "accelerate"), "launch", "--help"], 3)
        print(f"for comparison: accelerate launch --help  median {acc:.3f} s over 3 runs")
    except (FileNotFoundError, subprocess.CalledProcessError):
        pass


if __name__ == "__main__":
    main()
