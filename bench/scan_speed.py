"""Scan speed per sample model and method: seconds per sample, queries per second, onnxruntime share.

    python bench/scan_speed.py [--samples 4] [--models vgg_small vgg96] [--budget 2000]

Prints a table and writes bench/results/scan_speed.json. The onnxruntime share is the
wall time inside ``InferenceSession.run`` over the scan's whole wall time (goal >= 85%); the
closed-form bound (a one-off graph analysis) is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import fimaudit

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"
OUT = Path(__file__).resolve().parent / "results" / "scan_speed.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"]
    rows = []
    header = f"{'model':24s} {'d':>5s} {'method':18s} {'s/sample':>9s} {'queries/s':>10s} {'in ort':>7s} {'queries/sample':>15s}"
    print(header)
    print("-" * len(header))
    for entry in manifest:
        if args.models and entry["name"] not in args.models:
            continue
        pp = entry["preprocess"]
        d = 1
        for s in entry["input_shape"]:
            d *= s
        methods = [("exact", "orthogonal"), ("sketch", "orthogonal"), ("sketch", "gaussian")]
        for method, probes in methods:
            budget = 2 * d + 3 if method == "exact" else args.budget
            t0 = time.perf_counter()
            res = fimaudit.scan(
                ZOO / entry["file"], ZOO / entry["data"], samples=args.samples, method=method, probes=probes,
                budget=budget, scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],), seed=0, bounds=False,
            )
            wall = time.perf_counter() - t0
            n = len(res.samples)
            q = res.summary.queries_total
            row = {
                "model": entry["name"],
                "d": d,
                "method": res.samples[0].method,
                "samples": n,
                "seconds_per_sample": wall / n,
                "queries_per_second": q / wall,
                "runtime_fraction": res.summary.runtime_fraction,
                "queries_per_sample": q / n,
                "provider": res.runtime["provider"],
            }
            rows.append(row)
            print(
                f"{row['model']:24s} {d:5d} {row['method']:18s} {row['seconds_per_sample']:9.3f} "
                f"{row['queries_per_second']:10.0f} {100 * (row['runtime_fraction'] or 0):6.1f}% {row['queries_per_sample']:15.0f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "fimaudit": fimaudit.__version__, "samples": args.samples, "budget": args.budget}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
