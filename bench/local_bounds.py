"""Certified local Fisher/Lipschitz bounds against what the model does, on the sample zoo and the real-model corpus.

    python bench/local_bounds.py [--samples 5] [--zoo-eps 0,0.011] [--models mlp_small,...] [--no-corpus]

For each model and radius eps (L-inf, model-input units): the median of local upper / measured
lambda_max(F) at the centre (the float32 gradient graph, as the scan measures it), the median of
the local Lipschitz bound / the largest |J|_2 found in the ball (centre, corners, random points and
a PGD ascent of lambda_max: tests/local_harness.py), the points checked, violations (a found value
above a bound: must be 0) and seconds per sample. Zoo points are dithered (3% of the sample's RMS,
as the scan does at exact ties); corpus points are the competition's samples with their own radii
(``eps`` in the npz) and eps = 0. Writes bench/results/local_bounds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fimaudit.errors import FimauditError  # noqa: E402
from fimaudit.model import load_model  # noqa: E402
from fimaudit.verify import BoundGraph, InputSet  # noqa: E402
from fimaudit.verify.local import local_bounds  # noqa: E402
from tests.local_harness import fisher_top, onnx_oracle, search  # noqa: E402

ZOO = ROOT / "sample_models"
CORPUS = Path(os.environ.get("FIMAUDIT_REALMODELS", "/work/shared/realmodels"))


def run_model(name: str, path: Path, points: np.ndarray, radii: list, rng, search_kw: dict) -> list[dict]:
    model = load_model(str(path))
    try:
        g = BoundGraph.from_model(model)
        oracle = onnx_oracle(path, model.sample_shape, logit_name=g.logit_name, input_name=model.info.input.name)
    except FimauditError as exc:
        return [{"model": name, "eps": None, "reason": str(exc)}]
    try:
        from fimaudit.graph import compute_bounds

        cap = compute_bounds(str(path)).lipschitz  # the closed-form global bound (model-input units), used when smaller
    except Exception:  # noqa: BLE001 - the cap is optional
        cap = None
    rows = []
    for label, eps_of in radii:
        ratios, lip_ratios, secs, checked, viol, reason, ups = [], [], [], 0, 0, None, []
        for i, x0 in enumerate(points):
            eps = float(eps_of(i))
            t0 = time.perf_counter()
            try:
                lb = local_bounds(g, InputSet.of(x0, eps), lipschitz_cap=cap)
            except FimauditError as exc:
                reason = str(exc)
                break
            secs.append(time.perf_counter() - t0)
            lam0, *_ = fisher_top(*oracle(x0[None]))[0]
            f, lip, n = search(oracle, x0, eps, rng, **search_kw)
            checked += n
            viol += int(f > lb.fisher_upper) + int(lip > lb.lipschitz)
            ratios.append(lb.fisher_upper / max(lam0, 1e-300))
            lip_ratios.append(lb.lipschitz / max(lip, 1e-300))
            ups.append(lb.fisher_upper)
        row = {"model": name, "eps": label, "reason": reason, "samples": len(ratios),
               "median_upper_over_measured": float(np.median(ratios)) if ratios else None,
               "max_upper_over_measured": float(np.max(ratios)) if ratios else None,
               "median_lipschitz_over_found": float(np.median(lip_ratios)) if lip_ratios else None,
               "median_upper": float(np.median(ups)) if ups else None,
               "closed_form_upper": None if cap is None else 0.5 * cap * cap,
               "median_closed_form_over_measured": None if cap is None or not ups else
               float(np.median([0.5 * cap * cap * r / u for r, u in zip(ratios, ups)])),
               "points_checked": checked, "violations": viol,
               "seconds_per_sample": float(np.mean(secs)) if secs else None}
        rows.append(row)
        print(f"{name:24s} eps={label:>10s} upper/measured={_f(row['median_upper_over_measured'])} "
              f"closed-form/measured={_f(row['median_closed_form_over_measured'])} "
              f"lip/found={_f(row['median_lipschitz_over_found'])} checked={checked} violations={viol} "
              f"{_f(row['seconds_per_sample'])}s/sample" + (f"  refused: {reason[:90]}" if reason else ""), flush=True)
    return rows


def _f(v) -> str:
    return "        -" if v is None else f"{v:9.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--zoo-eps", default="0,0.0111", help="radii for the zoo, model-input units (0.0111 = 1/255 pixel / 0.353)")
    ap.add_argument("--models", default=None, help="only these (comma-separated names)")
    ap.add_argument("--no-corpus", action="store_true")
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "local_bounds.json")
    args = ap.parse_args()
    only = None if args.models is None else set(args.models.split(","))
    rng = np.random.default_rng(0)
    kw = {"random": 16, "starts": 2, "steps": 8}
    rows = []
    if not args.no_zoo:
        for e in json.loads((ZOO / "manifest.json").read_text())["models"]:
            if only and e["name"] not in only:
                continue
            pp = e["preprocess"]
            x = np.load(ZOO / e["data"])["x"][: args.samples].astype(np.float64)
            u = (x * pp["scale"] - pp["mean"]) / pp["std"]
            u = u.reshape((u.shape[0], 1) + u.shape[1:]) if u.ndim == 3 else u
            rms = np.sqrt(np.mean(u.reshape(u.shape[0], -1) ** 2, axis=1))
            u = u + 0.03 * rms.reshape((-1,) + (1,) * (u.ndim - 1)) * rng.standard_normal(u.shape)
            radii = [(f"{float(r):g}", (lambda i, r=float(r): r)) for r in args.zoo_eps.split(",")]
            rows += [dict(r, set="zoo") for r in run_model(e["name"], ZOO / e["file"], u, radii, rng, kw)]
    if not args.no_corpus and CORPUS.is_dir():
        for f in sorted(CORPUS.glob("*.onnx")):
            if only and f.stem not in only:
                continue
            d = np.load(f.with_suffix(".npz"))
            x = d["x"][: args.samples].astype(np.float64)
            eps = d["eps"][: args.samples].astype(np.float64)
            radii = [("0", lambda i: 0.0), ("corpus", lambda i, e=eps: e[i])]
            rows += [dict(r, set="corpus") for r in run_model(f.stem, f, x.reshape((x.shape[0],) + x.shape[1:]),
                                                                radii, rng, kw)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"samples": args.samples, "search": kw, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
