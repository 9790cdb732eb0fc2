"""Peak resident memory of ``fimaudit scan`` per large model and method, each in its own child process.

    python bench/memory.py [--models mobilenet224 vgg320] [--budget 2000]

The models are built at run time into a temporary folder (bench/large_models.py). Each scan
runs in a fresh child process that reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after the scan (the peak over the child's whole life: imports, model load, the scan).
Goals (issue 10): <= 1.0 GB at 3x224x224 with 2 samples, <= 1.5 GB at 3x320x320 with 1
sample, <= 1.5 GB for the ResNet-50-style 224x224 model with 1 sample. Prints a table and writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "memory.json"
SAMPLES = {"mobilenet224": 2, "vgg320": 1, "resnet50_224": 1}
GOAL_GB = {"mobilenet224": 1.0, "vgg320": 1.5, "resnet50_224": 1.5}
METHODS = (("sketch", "orthogonal"), ("sketch", "gaussian"))

CHILD = """
import json, resource, sys, time
import fimaudit
model, data, method, probes, samples, budget = sys.argv[1:7]
t0 = time.perf_counter()
res = fimaudit.scan(model, data, samples=int(samples), method=method, probes=probes, budget=int(budget), seed=0,
                    bounds=False)
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_gb": peak_kb / 1024**2, "seconds": wall, "runtime_fraction": res.summary.runtime_fraction,
                  "lambda_max_median": res.summary.lambda_max.median, "method": res.samples[0].method}))
"""


def measure(model: Path, data: Path, method: str, probes: str, samples: int, budget: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data), method, probes, str(samples), str(budget)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.large_models import LARGE, build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(LARGE))
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    header = f"{'model':14s} {'samples':>7s} {'method':20s} {'peak RSS GB':>11s} {'goal':>5s} {'s/sample':>9s} {'in ort':>7s}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, data = build(name, Path(tmp))
            for method, probes in METHODS:
                r = measure(model, data, method, probes, SAMPLES[name], args.budget)
                row = {"model": name, "samples": SAMPLES[name], "method": r["method"], "probes": probes,
                       "peak_rss_gb": r["peak_rss_gb"], "goal_gb": GOAL_GB[name],
                       "seconds_per_sample": r["seconds"] / SAMPLES[name], "runtime_fraction": r["runtime_fraction"],
                       "lambda_max_median": r["lambda_max_median"]}
                rows.append(row)
                print(f"{name:14s} {row['samples']:7d} {row['method']:20s} {row['peak_rss_gb']:11.2f} {row['goal_gb']:5.1f} "
                      f"{row['seconds_per_sample']:9.1f} {100 * (row['runtime_fraction'] or 0):6.1f}%", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "budget": args.budget}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
