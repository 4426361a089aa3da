"""Wall time of the planner: one estimate(), `hpctune plan` per shipped recipe, and the auto
layout search (plan.search.search, the one ranker `layout.nodes: auto` runs) over >= 500
candidates.

    python bench/bench_plan.py [--repeat N]

Prints medians over N runs. estimate() is timed on fresh inputs (a new sequence length each
call) so its small per-input caches never hit. "plan per recipe" is the whole command in one
process (profile + recipe loading, the checks, memory plan, time plan, alternatives) and as a
fresh `hpctune plan --json` process (interpreter start-up included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpctune.plan import PlanInput, candidates, estimate, get_shape, search  # noqa: E402

RECIPES = {"llama2-70b-lora-zero3": "example-h100", "llama2-70b-qlora-zero3": "example-a100-40g",
           "falcon-180b-lora-zero3": "example-a100-80g",
           "bart-large-lora-zero3-offload": "example-a100-40g"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    base = PlanInput(get_shape("meta-llama/Llama-2-70b-hf"), gpu_mem_gib=79.6,
                     cpu_ram_gib_per_node=1800)
    inputs = [replace(base, seq_len=1024 + k) for k in range(args.repeat * 50)]
    times = []
    for k in range(args.repeat):
        t = time.perf_counter()
        for inp in inputs[k * 50:(k + 1) * 50]:
            estimate(inp)
        times.append((time.perf_counter() - t) / 50)
    print(f"estimate(): median {statistics.median(times) * 1e6:.1f} us per call")

    space = dict(max_nodes=8, gpus_per_node_options=[1, 2, 4, 8])
    n = sum(1 for _ in candidates(base, **space))
    times = []
    for k in range(args.repeat):
        t = time.perf_counter()
        fits = search(replace(base, seq_len=2048 + k), micro_batches=(1, 2, 4, 8, 16), **space)
        times.append(time.perf_counter() - t)
    best = fits[0][0] if fits else None
    print(f"layout search: {n} candidates estimated and ranked, median {statistics.median(times) * 1e3:.1f} ms "
          f"({len(fits)} fit" + (f"; best: {best.nodes}x{best.gpus_per_node} GPUs, ZeRO-{best.zero_stage}, "
                                 f"offload {best.offload_optimizer}/{best.offload_param}, micro batch {best.micro_batch})"
                                 if best else ")"))

    from hpctune.plan import job_plan
    from hpctune.prepare import prepare
    for recipe, cluster in RECIPES.items():
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            job = prepare(cluster, recipe).job
            inp = job_plan.plan_input(job)
            estimate(inp)
            job_plan.time_plan(job, inp)
            job_plan.alternatives(job, limit=4)
            times.append(time.perf_counter() - t)
        cli = []
        for _ in range(max(3, args.repeat // 4)):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hpctune", "plan", "-c", cluster, recipe, "--json"],
                           cwd=ROOT, capture_output=True, check=False)
            cli.append(time.perf_counter() - t)
        print(f"plan {recipe} on {cluster}: in-process median {statistics.median(times) * 1e3:.0f} ms, "
              f"`hpctune plan --json` median {statistics.median(cli) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
