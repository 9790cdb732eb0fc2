"""Queries and seconds per sample for each attack on the sample zoo.

    python bench/attacks.py [--samples 10] [--budget 2000] [--models ...]

Each model is attacked on its own shipped data and preprocessing (manifest) at an L-inf
eps of 0.05 and an L2 eps of 1.0 (pixel units in [0, 1]). Prints a table and writes
bench/results/attacks.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fimaudit.evidence import AttackConfig, run_attack

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"
RUNS = [("fgsm", "linf", 0.05), ("bim", "linf", 0.05), ("pgd", "linf", 0.05), ("square", "linf", 0.05),
        ("pgd", "l2", 1.0), ("square", "l2", 1.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "attacks.json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':24s} {'attack':8s} {'norm':5s} {'eps':>5s} {'RA':>6s} {'queries/sample':>15s} {'s/sample':>9s}")
    for e in json.loads((ZOO / "manifest.json").read_text())["models"]:
        if args.models and e["name"] not in args.models:
            continue
        pp = e["preprocess"]
        for attack, norm, eps in RUNS:
            t0 = time.perf_counter()
            rep = run_attack(AttackConfig(model=str(ZOO / e["file"]), data=str(ZOO / e["data"]), attack=attack,
                                          norm=norm, eps=(eps,), budget=args.budget, samples=args.samples,
                                          scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],)))
            secs = time.perf_counter() - t0
            r = rep["results"][0]
            q = np.mean([s["queries"] for s in r["samples"]])
            row = {"model": e["name"], "attack": attack, "norm": norm, "eps": eps,
                   "robust_accuracy": r["robust_accuracy"], "queries_per_sample": float(q),
                   "seconds_per_sample": secs / args.samples, "clean_accuracy": rep["clean_accuracy"]}
            rows.append(row)
            print(f"{e['name']:24s} {attack:8s} {norm:5s} {eps:5g} {100 * row['robust_accuracy']:5.1f}% "
                  f"{q:15.0f} {row['seconds_per_sample']:9.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"samples": args.samples, "budget": args.budget, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
