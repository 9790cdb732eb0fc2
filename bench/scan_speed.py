"""Scan speed per sample model and method: seconds per sample, queries per second, onnxruntime share.

    python bench/scan_speed.py [--samples 4] [--models vgg_small vgg96] [--budget 2000] [--large]

``--large`` adds the two vendor-size models that bench/large_models.py builds at run time
(3x224x224 MobileNet-style, 2 samples; 3x320x320 VGG-style, 1 sample), sketch only.

Prints a table and writes bench/results/scan_speed.json. The onnxruntime share is the
wall time inside ``InferenceSession.run`` over the scan's whole wall time (goal >= 85%); the
closed-form bound (a one-off graph analysis) is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
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
    ap.add_argument("--large", action="store_true", help="Also the 224x224 and 320x320 models built at run time.")
    ap.add_argument("--large-only", action="store_true", help="Only the two large models.")
    args = ap.parse_args()
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"]
    rows = []
    header = f"{'model':24s} {'d':>5s} {'method':18s} {'s/sample':>9s} {'queries/s':>10s} {'in ort':>7s} {'queries/sample':>15s}"
    print(header)
    print("-" * len(header))
    for entry in manifest:
        if args.large_only or (args.models and entry["name"] not in args.models):
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
                gradients="fd",  # black-box throughput (bench/whitebox.py times the gradient graph)
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
    if args.large or args.large_only:
        rows.extend(_large(args.budget))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "fimaudit": fimaudit.__version__, "samples": args.samples, "budget": args.budget}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def _large(budget: int) -> list[dict]:
    """The two vendor-size models of bench/large_models.py, sketch with orthogonal probes."""
    sys.path.insert(0, str(ROOT))
    from bench.large_models import LARGE, build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in LARGE:
            model, data = build(name, Path(tmp))
            samples = 2 if name == "mobilenet224" else 1
            t0 = time.perf_counter()
            res = fimaudit.scan(model, data, samples=samples, method="sketch", probes="orthogonal", budget=budget,
                                seed=0, bounds=False, gradients="fd")
            wall = time.perf_counter() - t0
            q = res.summary.queries_total
            d = res.model["input"]["d"]
            row = {"model": name, "d": d, "method": res.samples[0].method, "samples": samples,
                   "seconds_per_sample": wall / samples, "queries_per_second": q / wall,
                   "runtime_fraction": res.summary.runtime_fraction, "queries_per_sample": q / samples,
                   "provider": res.runtime["provider"]}
            rows.append(row)
            print(f"{name:24s} {d:5d} {row['method']:18s} {row['seconds_per_sample']:9.3f} "
                  f"{row['queries_per_second']:10.0f} {100 * (row['runtime_fraction'] or 0):6.1f}% "
                  f"{row['queries_per_sample']:15.0f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
