"""Wall time of the memory planner: one estimate() and one auto-layout search.

    python bench/bench_plan.py [--repeat N]

Prints medians over N runs. estimate() is timed on fresh inputs (a new sequence length each
call) so its small per-input caches never hit; the search covers >= 500 candidates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpctune.plan import PlanInput, candidates, estimate, get_shape, search  # noqa: E402


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
    times, found = [], []
    for k in range(args.repeat):
        t = time.perf_counter()
        found = search(replace(base, seq_len=2048 + k), margin_gib=1.0, **space)
        times.append(time.perf_counter() - t)
    best = found[0][0] if found else None
    print(f"search(): {n} candidates, median {statistics.median(times) * 1e3:.1f} ms "
          f"({len(found)} fit; best: {best.nodes}x{best.gpus_per_node} GPUs, "
          f"ZeRO-{best.zero_stage}, offload {best.offload_optimizer}/{best.offload_param}, "
          f"micro batch {best.micro_batch})" if best else "nothing fits")


if __name__ == "__main__":
    main()
