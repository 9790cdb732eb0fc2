"""White-box attacks (exact gradients from the gradient graph) against black-box PGD and Square: robust accuracy per model.

Usage: python bench/attacks_whitebox.py [--models vgg_small,...] [--samples 20] [--eps 0.03] [--budget 16000]
Prints a table and writes bench/results/attacks_whitebox.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fimaudit.evidence import AttackConfig, run_attack

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vgg_small")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--budget", type=int, default=16000)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    manifest = {m["name"]: m for m in json.loads((ROOT / "sample_models/manifest.json").read_text())["models"]}
    rows = []
    for name in args.models.split(","):
        e = manifest[name]
        pp = e["preprocess"]
        base = dict(model=str(ROOT / "sample_models" / e["file"]), data=str(ROOT / "sample_models" / e["data"]),
                    samples=args.samples, eps=(args.eps,), scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],),
                    budget=args.budget, norm="linf", seed=0)
        row = {"model": name}
        for attack, extra in (("pgd", {"steps": None}), ("square", {}), ("pgd-wb", {"steps": args.steps}),
                              ("apgd", {"steps": args.steps, "loss": "ce"}), ("apgd-dlr", {"steps": args.steps, "loss": "dlr"})):
            t0 = time.perf_counter()
            kw = {**base, **extra, "attack": "apgd" if attack == "apgd-dlr" else attack}
            if attack == "pgd":  # as many finite-difference steps as the budget pays
                kw["steps"] = max(1, args.budget // (2 * 784 + 2))
            rep = run_attack(AttackConfig(**kw))
            r = rep["results"][0]
            row[attack] = {"robust_accuracy": r["robust_accuracy"], "queries_total": r["queries_total"],
                           "seconds": round(time.perf_counter() - t0, 2),
                           "sanity_warnings": (r.get("sanity") or {}).get("warnings")}
            print(f"{name:14s} {attack:9s} RA {100 * r['robust_accuracy']:5.1f}%  queries {r['queries_total']:8d}  "
                  f"{row[attack]['seconds']:6.1f} s  {row[attack]['sanity_warnings'] or ''}", flush=True)
        rows.append(row)
    out = ROOT / "bench/results/attacks_whitebox.json"
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
