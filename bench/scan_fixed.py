"""Wall time of a 2-sample default ``fimaudit scan`` at 224x224, and where it goes (the fixed costs).

    python bench/scan_fixed.py [--models mobilenet224 resnet50_224] [--samples 2] [--repeat 1] [--baseline DIR]

Each model (bench/large_models.py, built at run time) is scanned in fresh processes: plain (``fimaudit scan MODEL --data D --samples 2``, wall time from the outside,
imports included), and with the stages timed from inside by wrapping their functions:
imports, model loading, building the gradient graphs (``build_graphs``: probe runs, rules,
serialisation), the self-check (``check_graph``) and within it the float64 second opinion,
the finite-difference step choice of the calibration (``choose_step``), the exact Jacobians
(``GraphEngine.jacobians``) and the closed-form bound (``_bound_summary``; ``--no-bounds``
skips it). ``--baseline DIR`` also runs another checkout's fimaudit (e.g. an older commit
unpacked with ``git archive``), back to back with this one in every round, since the
machine may be shared. Prints a table and writes bench/results/scan_fixed.json. Goal
(issue 13): <= 4 s for the plain 2-sample scan on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "scan_fixed.json"

STAGES = (
    ("load", "fimaudit.scan", "load"),
    ("build_graphs", "fimaudit.autodiff.select", "build_graphs"),
    ("check_graph", "fimaudit.autodiff.select", "check_graph"),
    ("float64_opinion", "fimaudit.autodiff.check", "_float64_opinion"),
    ("choose_step", "fimaudit.scan", "choose_step"),
    ("jacobians", "fimaudit.autodiff.source", "GraphEngine.jacobians"),
    ("bounds", "fimaudit.scan", "_bound_summary"),
)

CHILD = """
import importlib, json, sys, time
t0 = time.perf_counter()
import fimaudit.cli
imports = time.perf_counter() - t0
stages, spent = json.loads(sys.argv[1]), {}
for label, module, qual in stages:
    owner = importlib.import_module(module)
    parts = qual.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p)
    if not hasattr(owner, parts[-1]):
        continue
    fn = getattr(owner, parts[-1])
    def timed(*a, _fn=fn, _label=label, **k):
        t = time.perf_counter()
        try:
            return _fn(*a, **k)
        finally:
            spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - t
    setattr(owner, parts[-1], timed)
sys.argv = ["fimaudit"] + sys.argv[2:]
t1 = time.perf_counter()
try:
    fimaudit.cli.main()
except SystemExit:
    pass
spent["imports"] = imports
spent["scan"] = time.perf_counter() - t1
spent["package"] = fimaudit.__file__
print("FIXED " + json.dumps(spent))
"""


def plain(model: Path, data: Path, samples: int, package: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fimaudit", "scan", str(model), "--data", str(data), "--samples", str(samples)],
                   check=True, capture_output=True, env=_env(package), cwd=model.parent)
    return time.perf_counter() - t0


def staged(model: Path, data: Path, samples: int, package: Path) -> dict:
    args = ["scan", str(model), "--data", str(data), "--samples", str(samples)]
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(STAGES), *args], check=True, capture_output=True,
                         text=True, env=_env(package), cwd=model.parent)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("FIXED ")][-1]
    return json.loads(line[6:])


def _env(package: Path) -> dict:
    # The package's checkout first on the path. The children run in the models' folder, so that
    # sys.path[0] (the working directory) cannot shadow it with this checkout.
    return dict(os.environ, PYTHONPATH=str(package) + os.pathsep + os.environ.get("PYTHONPATH", ""))


COLS = ["imports", "load", "build_graphs", "check_graph", "float64_opinion", "choose_step", "jacobians", "bounds"]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.large_models import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["mobilenet224", "resnet50_224"])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1,
                    help="Rounds per model (the fastest plain and staged runs are reported: the machine is shared).")
    ap.add_argument("--baseline", type=Path,
                    help="Another checkout's root: each round runs it and this one back to back, for a fair comparison.")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    versions = [("after", ROOT)] if args.baseline is None else [("before", args.baseline), ("after", ROOT)]
    header = f"{'model':18s} {'':6s} {'wall s':>7s} " + " ".join(f"{c[:11]:>11s}" for c in COLS)
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, data = build(name, Path(tmp))
            walls: dict[str, list[float]] = {v: [] for v, _ in versions}
            parts: dict[str, list[dict]] = {v: [] for v, _ in versions}
            for _ in range(args.repeat):
                for version, package in versions:  # back to back: the same load on the shared machine
                    walls[version].append(plain(model, data, args.samples, package))
                    parts[version].append(staged(model, data, args.samples, package))
            for version, _ in versions:
                best = min(parts[version], key=lambda p: p["scan"])
                rows.append({"model": name, "version": version, "samples": args.samples,
                             "wall_seconds": min(walls[version]), "stages": best})
                print(f"{name:18s} {version:6s} {min(walls[version]):7.2f} " + " ".join(f"{best.get(c, 0.0):11.2f}" for c in COLS),
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "baseline": str(args.baseline) if args.baseline else None, "repeat": args.repeat}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
