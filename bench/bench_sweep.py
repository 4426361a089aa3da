"""Wall time of checking and rendering a 100-combination sweep (what `hpctune sweep` does
before it submits): 10 learning rates x 10 LoRA ranks of the Llama-2-70B recipe on the
example-h100 profile, every combination resolved, checked (memory plan included) and
rendered into its own bundle, plus the array's sbatch script.

    python bench/bench_sweep.py [--repeat N]

The first repeat runs in a fresh interpreter state (cold Jinja template cache); prints
each repeat and the median. Target: <= 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpctune import sweep  # noqa: E402

GRID = ["training.learning_rate=" + ",".join(f"{k}e-5" for k in range(1, 11)),
        "method.lora_r=" + ",".join(str(r) for r in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128))]


def once(tmp: Path) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    sw = sweep.plan("example-h100", str(REPO / "recipes" / "llama2-70b-lora-zero3.yaml"), GRID)
    t1 = time.perf_counter()
    sweep.render(sw, tmp / sw.id)
    sweep.array_script(sw, 10)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0, len(sw.combinations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    totals = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeat):
            check_s, total_s, n = once(Path(d) / str(i))
            totals.append(total_s)
            print(f"repeat {i + 1}: {n} combinations checked in {check_s:.3f} s, checked + rendered in {total_s:.3f} s")
    first, med = totals[0], statistics.median(totals)
    print(f"100-combination sweep: first {first:.3f} s, median {med:.3f} s (target <= 2 s): "
          + ("OK" if max(first, med) <= 2.0 else "SLOW"))


if __name__ == "__main__":
    main()
