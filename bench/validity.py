"""Per-sample validity on the zoo and the real-model corpus: Spearman rho of the FIM-predicted radius with the minimal adversarial L2 distance.

Usage: python bench/validity.py [--samples 20] [--only zoo|real] [--models a,b]
Prints a table, writes bench/results/validity.json (docs/validity.md quotes it).
The corpus is read from $FIMAUDIT_REALMODELS (skipped when unset).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from fimaudit.evidence import ModelSpec, model_validity

ROOT = Path(__file__).resolve().parent.parent


def specs(only: str | None, names: set[str] | None) -> list[tuple[str, ModelSpec]]:
    out = []
    if only in (None, "zoo"):
        for e in json.loads((ROOT / "sample_models/manifest.json").read_text())["models"]:
            pp = e["preprocess"]
            out.append(("zoo", ModelSpec(str(ROOT / "sample_models" / e["file"]), str(ROOT / "sample_models" / e["data"]),
                                         pp["scale"], (pp["mean"],), (pp["std"],), e["name"])))
    real = os.environ.get("FIMAUDIT_REALMODELS")
    if only in (None, "real") and real:
        for onnx_path in sorted(Path(real).glob("*.onnx")):
            data = onnx_path.with_suffix(".npz")
            x = np.load(data)["x"]
            lo, hi = float(x.min()), float(x.max())  # the corpus is in model-input units: attack inside its range
            out.append(("real", ModelSpec(str(onnx_path), str(data), name=onnx_path.stem, input_range=(lo, hi))))
    return [(g, s) for g, s in out if names is None or s.name in names]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--only", choices=("zoo", "real"), default=None)
    ap.add_argument("--models", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench/results/validity.json"))
    args = ap.parse_args()
    rows = []
    names = set(args.models.split(",")) if args.models else None
    for group, spec in specs(args.only, names):
        t0 = time.perf_counter()
        try:
            v = model_validity(spec, samples=args.samples, seed=0)
        except Exception as exc:  # a model the pipeline cannot handle is a row with its reason
            rows.append({"group": group, "model": spec.name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"{group:4s} {spec.name:24s} error: {rows[-1]['error']}", flush=True)
            continue
        v.pop("samples_detail", None)
        v.update({"group": group, "seconds": round(time.perf_counter() - t0, 1)})
        rows.append(v)
        sp = v["spearman"]
        ci = "" if not sp["ci"] else f"[{sp['ci'][0]:+.2f}, {sp['ci'][1]:+.2f}]"
        rho = "  -  " if sp["value"] is None else f"{sp['value']:+.2f}"
        print(f"{group:4s} {spec.name:24s} n {sp['n']:3d} rho {rho} {ci:16s} dist/r {v['median_distance_over_radius'] or float('nan'):.3g} "
              f"lambda {v['lambda_method']} ({v['lambda_gradients']}) dist {v['distance_gradients']} {v['seconds']} s", flush=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")



def markdown(path: str = str(ROOT / "bench/results/validity.json")) -> str:
    """The table of docs/validity.md from a saved run."""
    rows = json.loads(Path(path).read_text())["rows"]
    lines = ["| group | model | n | Spearman ρ [95% CI] | median dist / r | λ_max from | distances from | s |",
             "|---|---|---:|---|---:|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['group']} | {r['model']} | - | error: {r['error']} | | | | |")
            continue
        sp = r["spearman"]
        cell = "-" if sp["value"] is None else f"{sp['value']:+.2f}" + (
            f" [{sp['ci'][0]:+.2f}, {sp['ci'][1]:+.2f}]" if sp["ci"] else "")
        ratio = r["median_distance_over_radius"]
        lines.append(f"| {r['group']} | {r['model']} | {sp['n']} | {cell} | {'-' if ratio is None else f'{ratio:.3g}'} | "
                     f"{r['lambda_method']} ({r['lambda_gradients']}) | {r['distance_gradients']} | {r['seconds']} |")
    lines += ["", "| group | models | samples | pooled Spearman ρ [95% CI] | models with CI above 0 |", "|---|---:|---:|---|---:|"]
    for group in dict.fromkeys(r["group"] for r in rows):
        pooled = pool([r for r in rows if r["group"] == group and "error" not in r])
        if pooled:
            lines.append(f"| {group} | {pooled['models']} | {pooled['samples']} | {pooled['rho']:+.2f} "
                         f"[{pooled['ci'][0]:+.2f}, {pooled['ci'][1]:+.2f}] | {pooled['above_zero']} |")
    return "\n".join(lines) + "\n"


def pool(rows: list[dict]) -> dict | None:
    """Within-model Spearman ρ pooled over models: Fisher z weighted by n - 3, standard error sqrt(1.06 / Σ(n - 3)).

    1.06 / (n - 3) is the Fieller-Hartley-Pearson variance of atanh of Spearman's ρ; models
    are independent samples, so their z add with weights n - 3. Models with n < 4 are left out.
    """
    usable = [(r["spearman"]["value"], r["spearman"]["n"], r["spearman"]["ci"]) for r in rows
              if r["spearman"]["value"] is not None and r["spearman"]["n"] >= 4]
    if not usable:
        return None
    w = np.array([n - 3 for _, n, _ in usable], dtype=float)
    z = np.arctanh(np.clip([v for v, _, _ in usable], -0.999999, 0.999999))
    mean = float(np.sum(w * z) / np.sum(w))
    se = float(np.sqrt(1.06 / np.sum(w)))
    return {"models": len(usable), "samples": int(sum(n for _, n, _ in usable)), "rho": float(np.tanh(mean)),
            "ci": [float(np.tanh(mean - 1.96 * se)), float(np.tanh(mean + 1.96 * se))],
            "above_zero": f"{sum(1 for _, _, ci in usable if ci and ci[0] > 0)} of {len(usable)}"}


if __name__ == "__main__":
    main()
