"""Accuracy versus queries of every lambda_max estimator on the sample zoo.

    python bench/estimators.py [--samples 6] [--models vgg96 ...] [--budgets 200 500 1000 2000 5000]

For each zoo model the exact value (full finite-difference Jacobian, 2d+1 queries) is the
reference at each sample; every estimator then runs at each budget (queries per sample,
checks excluded) and its relative error |estimate - exact| / exact is summarised as median
and p90 over the samples. The baseline is the maximum of v^T F v over random unit
directions, as some public code reports: a lower bound near tr(F)/d, not an estimate.
Writes bench/results/estimators.json and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fimaudit.data import Preprocess, load_data
from fimaudit.estimators.core import exact
from fimaudit.estimators.fd import choose_step, input_scale, jvp
from fimaudit.estimators.power import fresh_probes, power_fixed, power_fresh
from fimaudit.estimators.probes import probe_directions
from fimaudit.estimators.source import FiniteDifferences
from fimaudit.estimators.subspace import LearntSubspace, dct_lowfreq_basis, deflated_sketch, sketch
from fimaudit.model import LogProbOracle, load_model

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"
RESULTS = Path(__file__).resolve().parent / "results" / "estimators.json"
DOC = ROOT / "docs" / "benchmarks.md"
ESTIMATORS = (
    "sketch-gaussian",
    "sketch-orthogonal",
    "power-fixed",
    "power-fresh",
    "deflated-dct",
    "deflated-learnt",
    "max-random-rayleigh",
)


def max_random_rayleigh(oracle, x, p, h, m, rng) -> float:
    units, _ = probe_directions(int(np.prod(oracle.sample_shape)), m, "gaussian", rng)
    sv = jvp(oracle, x, units, h)
    return float(np.max(np.sum(p[None, :] * sv * sv, axis=1)))


def run_one(name, oracle, x, p, h, budget, rng, learnt: LearntSubspace, dct_cache: dict) -> float:
    room = budget - 1
    k = room // 2
    d = int(np.prod(oracle.sample_shape))
    if name == "sketch-gaussian":
        return sketch(FiniteDifferences(oracle, x, h, logp0=np.log(p)), k, rng, probes="gaussian", check_lower_bound=False).lambda_max
    if name == "sketch-orthogonal":
        return sketch(FiniteDifferences(oracle, x, h, logp0=np.log(p)), k, rng, probes="orthogonal", check_lower_bound=False).lambda_max
    if name == "power-fixed":
        return power_fixed(FiniteDifferences(oracle, x, h, logp0=np.log(p)), k, rng, probes="gaussian", check_lower_bound=False).lambda_max
    if name == "power-fresh":
        source = FiniteDifferences(oracle, x, h, logp0=np.log(p), rng=rng, vjp_probes=fresh_probes(room))
        return power_fresh(source, room, rng).lambda_max
    if name in ("deflated-dct", "deflated-learnt"):
        r = min(d, room // 4)
        if name == "deflated-dct":
            q = dct_cache.setdefault(r, dct_lowfreq_basis(oracle.sample_shape, r))
        else:
            q = learnt.basis(r)
        kk = (room - 2 * q.shape[0]) // 2
        return deflated_sketch(FiniteDifferences(oracle, x, h, logp0=np.log(p)), q, kk, rng, probes="orthogonal", check_lower_bound=False).lambda_max
    if name == "max-random-rayleigh":
        return max_random_rayleigh(oracle, x, p, h, k, rng)
    raise ValueError(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--budgets", type=int, nargs="*", default=[200, 500, 1000, 2000, 5000])
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--estimators", nargs="*", default=list(ESTIMATORS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--dither", type=float, default=0.0,
                    help="evaluate at x + dither * N(0, I) (model-input units), where ReLU/max-pool ties are broken")
    args = ap.parse_args()
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"]
    rows = []
    for entry in manifest:
        if args.models and entry["name"] not in args.models:
            continue
        shape = tuple(entry["input_shape"])
        d = int(np.prod(shape))
        model = load_model(ZOO / entry["file"])
        oracle = LogProbOracle(model, entry["output_kind"])
        ds = load_data(ZOO / entry["data"], shape, args.samples)
        pp = entry["preprocess"]
        pts = Preprocess(pp["scale"], (pp["mean"],), (pp["std"],)).apply(ds.x, shape)
        if args.dither > 0:
            pts = pts + args.dither * np.random.default_rng(4).standard_normal(pts.shape)
        probs = np.exp(oracle.logp(pts))
        step = choose_step(oracle, pts[0], input_scale(pts), np.random.default_rng(0),
                           max_step=args.dither / 3 if args.dither > 0 else None)
        t0 = time.perf_counter()
        refs = [exact(FiniteDifferences(oracle, pts[i], step.h, logp0=np.log(probs[i]))) for i in range(len(pts))]
        exact_s = (time.perf_counter() - t0) / len(pts)
        lam_ref = np.array([r.lambda_max for r in refs])
        ratio_tr_d = float(np.median([r.trace / d / r.lambda_max for r in refs if r.lambda_max > 0]))
        print(f"{entry['name']} d={d} exact {exact_s:.2f}s/sample, median lambda {np.median(lam_ref):.4g}, "
              f"median tr/(d*lambda) {ratio_tr_d:.2e}", flush=True)
        dct_cache: dict = {}
        for est in args.estimators:
            for budget in args.budgets:
                learnt = LearntSubspace(d)
                errs, secs = [], []
                for i in range(len(pts)):
                    rng = np.random.default_rng([1, i, budget])
                    t0 = time.perf_counter()
                    val = run_one(est, oracle, pts[i], probs[i], step.h, budget, rng, learnt, dct_cache)
                    secs.append(time.perf_counter() - t0)
                    if est == "deflated-learnt":
                        learnt.add(refs[i].direction)  # what a scan learns: earlier samples' top directions
                    if lam_ref[i] > 0:
                        errs.append(abs(val - lam_ref[i]) / lam_ref[i])
                row = {
                    "model": entry["name"], "family": entry["family"], "d": d, "estimator": est, "budget": budget,
                    "median_rel_error": float(np.median(errs)), "p90_rel_error": float(np.percentile(errs, 90)),
                    "seconds_per_sample": float(np.mean(secs)), "samples": len(errs),
                }
                rows.append(row)
                print(f"  {est:20s} {budget:5d}  median {100 * row['median_rel_error']:6.2f}%  "
                      f"p90 {100 * row['p90_rel_error']:6.2f}%  {row['seconds_per_sample']:.3f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"samples": args.samples, "budgets": args.budgets, "rows": rows}, indent=2) + "\n")
    write_doc(rows, args)


def write_doc(rows, args) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    ests = list(dict.fromkeys(r["estimator"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    lines = [
        "# Estimator benchmark: accuracy versus queries",
        "",
        "Generated by `python bench/estimators.py` (results in `bench/results/estimators.json`).",
        f"Relative error of lambda_max against the exact finite-difference value, over the first {args.samples} "
        "shipped samples of each model; cells are median / p90 in percent; budget = queries per sample."
        + (f" Inputs dithered with N(0, {args.dither:g}^2) noise (model-input units)." if args.dither > 0 else ""),
        "",
    ]
    for model in models:
        d = next(r["d"] for r in rows if r["model"] == model)
        lines += [f"## {model} (d = {d})", "", "| estimator | " + " | ".join(str(b) for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for est in ests:
            cells = []
            for b in budgets:
                r = next((r for r in rows if r["model"] == model and r["estimator"] == est and r["budget"] == b), None)
                cells.append("-" if r is None else f"{100 * r['median_rel_error']:.1f} / {100 * r['p90_rel_error']:.1f}")
            lines.append(f"| {est} | " + " | ".join(cells) + " |")
        lines.append("")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
