"""Peak resident memory of ``fimaudit scan`` per large model and method, each in its own child process.

    python bench/memory.py [--models mobilenet224 resnet50_224_nhwc] [--methods default sketch-orthogonal]
                           [--budget 2000] [--baseline OTHER_CHECKOUT]

The models are built at run time into a temporary folder (bench/large_models.py). Each scan
runs in a fresh child process that reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after the scan (the peak over the child's whole life: imports, model load, the scan).

Methods: ``default`` is a scan with no options (``--gradients auto``, no ``--method``: the
gradient graphs, their self-check with its float64 second opinion, exact F from K - 1 VJPs,
the closed-form bound); ``default-no-bounds`` the same with ``--no-bounds``; the sketch rows
are black-box (``--method sketch``, finite differences, no bound).

Goals: default scan <= 1.0 GB for the MobileNet-like 224 model (2 samples) and <= 1.5 GB for
the ResNet-50-like 224 models, NCHW and NHWC (1 sample); sketch <= 1.0 GB at 3x224x224 with
2 samples, <= 1.5 GB at 3x320x320 and for ResNet-50 with 1 sample.

``--baseline DIR`` measures the default-scan rows a second time with the fimaudit package of
another checkout (e.g. an older commit unpacked with ``git archive``) first on the child's
path, and prints both. Prints a table and writes bench/results/memory.json.

Where the memory of the default scan went at ResNet-50 size, and what was done (issue 13):
each derivative graph used to carry its own copy of the weights (five ModelProtos, each
serialised again per session), the probe kept every activation at batch 2 and 3 as numpy
arrays, four graph sessions were open at once during the self-check, the float64 second
opinion built a float64 model proto and its serialisation, and the bound's shape inference
serialised the whole model twice. Now the weights are held once and handed to each session
as external initializers, probe values stay in onnxruntime, the self-check closes the
forward and log p sessions once used, and shape inference runs on a weight-less skeleton.
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
SAMPLES = {"mobilenet224": 2, "vgg320": 1, "resnet50_224": 1, "resnet50_224_nhwc": 1}
GOAL_GB = {"mobilenet224": 1.0, "vgg320": 1.5, "resnet50_224": 1.5, "resnet50_224_nhwc": 1.5}
METHODS = ("default", "default-no-bounds", "sketch-orthogonal", "sketch-gaussian")

CHILD = """
import json, resource, sys, time
import fimaudit
model, data, method, samples, budget = sys.argv[1:6]
t0 = time.perf_counter()
if method.startswith("default"):
    res = fimaudit.scan(model, data, samples=int(samples), seed=0, bounds=method == "default")
else:
    res = fimaudit.scan(model, data, samples=int(samples), method="sketch", probes=method.split("-")[1],
                        budget=int(budget), seed=0, bounds=False)
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_gb": peak_kb / 1024**2, "seconds": wall, "runtime_fraction": res.summary.runtime_fraction,
                  "lambda_max_median": res.summary.lambda_max.median, "method": res.samples[0].method,
                  "fimaudit": fimaudit.__file__}))
"""


def measure(model: Path, data: Path, method: str, samples: int, budget: int, package_root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(package_root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # cwd: the model's folder, so that the child's sys.path[0] ("") does not shadow PYTHONPATH with this checkout.
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data), method, str(samples), str(budget)],
                         capture_output=True, text=True, env=env, check=True, cwd=model.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.large_models import LARGE, build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(LARGE))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--baseline", type=Path, help="Another checkout's root: measure each row with its fimaudit too.")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    before = f" {'before GB':>9s}" if args.baseline else ""
    header = f"{'model':18s} {'samples':>7s} {'method':22s}{before} {'peak RSS GB':>11s} {'goal':>5s} {'s/sample':>9s} {'in ort':>7s}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, data = build(name, Path(tmp))
            for method in args.methods:
                r = measure(model, data, method, SAMPLES[name], args.budget, ROOT)
                row = {"model": name, "samples": SAMPLES[name], "method": method, "method_used": r["method"],
                       "peak_rss_gb": r["peak_rss_gb"], "goal_gb": GOAL_GB[name],
                       "seconds_per_sample": r["seconds"] / SAMPLES[name], "runtime_fraction": r["runtime_fraction"],
                       "lambda_max_median": r["lambda_max_median"], "package": r["fimaudit"]}
                if args.baseline and method.startswith("default"):  # the sketch rows do not use the graph path
                    b = measure(model, data, method, SAMPLES[name], args.budget, args.baseline)
                    row["baseline"] = {"peak_rss_gb": b["peak_rss_gb"], "seconds_per_sample": b["seconds"] / SAMPLES[name],
                                       "lambda_max_median": b["lambda_max_median"], "method_used": b["method"],
                                       "package": b["fimaudit"]}
                rows.append(row)
                was = (f" {row['baseline']['peak_rss_gb']:9.2f}" if "baseline" in row else f" {'':9s}") if args.baseline else ""
                print(f"{name:18s} {row['samples']:7d} {method:22s}{was} {row['peak_rss_gb']:11.2f} {row['goal_gb']:5.1f} "
                      f"{row['seconds_per_sample']:9.1f} {100 * (row['runtime_fraction'] or 0):6.1f}%", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "budget": args.budget,
            "baseline": str(args.baseline) if args.baseline else None}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
