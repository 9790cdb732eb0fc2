"""Seconds for the closed-form bounds on the large random-weight models (built at run time).

    python bench/bounds_large.py [--models mobilenet224 vgg320 resnet50_224]

Prints a table (model, parameters, seconds, L, how many convolutions took each norm path) and
writes bench/results/bounds_large.json. Models go to a temporary folder and are never kept.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx

from fimaudit.graph import compute_bounds

from large_models import LARGE, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(LARGE), choices=LARGE)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bounds_large.json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':14s} {'params':>10s} {'seconds':>8s} {'L':>10s}  conv norm paths")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path, _ = build(name, Path(tmp))
            params = sum(int(onnx.numpy_helper.to_array(t).size) for t in onnx.load(str(path)).graph.initializer)
            t0 = time.perf_counter()
            b = compute_bounds(str(path))
            secs = time.perf_counter() - t0
            paths = Counter(op.how.split(" (")[0].split(",")[0] for op in b.ops if op.op == "Conv")
            row = {"model": name, "params": params, "seconds": secs, "lipschitz": b.lipschitz,
                   "conv_paths": dict(paths), "cpus": os.cpu_count()}
            rows.append(row)
            print(f"{name:14s} {params:10d} {secs:8.1f} {b.lipschitz or float('nan'):10.3g}  "
                  + "; ".join(f"{v}x {k}" for k, v in paths.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
