"""Command line of the GPU calibration (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_calibrate import configs, fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_calibrate")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="write the grid of points (CPU)")
    p.add_argument("--gpu-gib", type=float, required=True)
    p.add_argument("--gpu-model", default="")
    p.add_argument("-o", "--output", required=True)
    m = sub.add_parser("measure", help="run the grid on this machine's GPU")
    m.add_argument("-i", "--input", required=True)
    m.add_argument("-o", "--output", required=True)
    f = sub.add_parser("fit", help="fit the constants and write the report (CPU)")
    f.add_argument("-i", "--input", required=True)
    f.add_argument("--gpu-gib", type=float, required=True)
    f.add_argument("--gpu-name", default="GPU")
    f.add_argument("-o", "--output", required=True)
    one = sub.add_parser("_one")
    one.add_argument("row")
    a = ap.parse_args(argv)
    if a.cmd == "plan":
        rows = configs.grid(a.gpu_gib, a.gpu_model)
        configs.write(rows, a.output)
        print(f"{len(rows)} points -> {a.output}")
    elif a.cmd == "measure":
        from bench.gpu_calibrate import measure
        measure.measure(configs.read(a.input), a.output)
    elif a.cmd == "fit":
        rows = [r for r in configs.read(a.input) if "error" not in r]
        Path(a.output).write_text(fit.report(rows, a.gpu_gib, a.gpu_name))
        print(json.dumps(fit.fit(rows, a.gpu_gib)))
    else:
        from bench.gpu_calibrate import measure
        print(json.dumps(measure.run_point(json.loads(a.row))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
