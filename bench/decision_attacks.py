"""Gradient-free attacks on piecewise-constant classifiers: robust accuracy per attack and the worst case over
Square, RayS and transfer at the default budget against 10x that budget.

The models are built here: the binarized (Sign) MLP of tests/test_decision_attacks.py and a binarized
conv net (onnx.helper, tests/decision_nets.py), each with labels from its own predictions and a Tanh twin
as the transfer surrogate; and INT8 versions of sample_models/vgg_small.onnx made with onnxruntime's
quantizer (QDQ and QOperator, calibrated on 8 shipped images), on Fashion-MNIST test images with their
labels, the transfer surrogate being fimaudit's own float surrogate of the quantized graph
(fimaudit.piecewise.float_surrogate). White-box APGD on the real model runs beside them (zero gradients
on the Sign nets; on the INT8 nets it sees only the rounding steps).

Usage: python bench/decision_attacks.py [--budget 2000] [--factor 10] [--samples 30] [--int8-samples 20]
Prints a table and writes bench/results/decision_attacks.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fimaudit.errors import FimauditError  # noqa: E402
from fimaudit.evidence import AttackConfig, run_attack  # noqa: E402
from tests import decision_nets as D  # noqa: E402


def fixtures(tmp: Path, samples: int) -> list[dict]:
    out = []
    rng = np.random.default_rng(5)  # the test fixture's draws, in the same order
    d, h, k = 20, 16, 3
    w1, b1 = rng.standard_normal((h, d)), rng.standard_normal(h) * 0.5
    w2, b2 = rng.standard_normal((k, h)), np.zeros(k)
    x = rng.uniform(0, 1, size=(max(samples, 30), d)).astype(np.float32)[:samples]
    out.append({"name": "binarized_mlp_d20", "real": D.binarized_mlp(w1, b1, w2, b2, tmp / "mlp.onnx"),
                "twin": D.binarized_mlp(w1, b1, w2, b2, tmp / "mlp_twin.onnx", smooth=1.0), "x": x,
                "eps": (0.05, 0.1)})
    rng = np.random.default_rng(9)
    c, side, k = 2, 8, 4
    kern, kb = rng.standard_normal((3, c, 3, 3)), rng.standard_normal(3) * 0.1
    wd, bd = rng.standard_normal((k, 3 * side * side)) * 0.3, np.zeros(k)
    x = rng.uniform(0, 1, size=(samples, c, side, side)).astype(np.float32)
    real = D.binarized_conv(kern, kb, wd, bd, (c, side, side), tmp / "conv.onnx")
    twin = tmp / "conv_twin.onnx"
    import onnx
    from onnx import helper

    proto = onnx.load(str(real))  # the float twin: Sign -> Tanh(x)
    for node in proto.graph.node:
        if node.op_type == "Sign":
            node.CopyFrom(helper.make_node("Tanh", list(node.input), list(node.output)))
    onnx.save(proto, str(twin))
    out.append({"name": "binarized_conv_2x8x8", "real": real, "twin": twin, "x": x, "eps": (0.02, 0.05)})
    for f in out:
        sess = ort.InferenceSession(str(f["real"]), providers=["CPUExecutionProvider"])
        f["y"] = np.argmax(sess.run(None, {"x": f["x"]})[0], axis=1)
        np.savez(tmp / f"{f['name']}.npz", x=f["x"], y=f["y"])
        f["data"] = tmp / f"{f['name']}.npz"
        f["pre"] = {}
    return out


def int8_fixtures(tmp: Path, samples: int) -> list[dict]:
    """INT8 vgg_small (QDQ and QOperator) on Fashion-MNIST, with the float surrogate as the transfer source."""
    import onnx

    from fimaudit.piecewise import float_surrogate
    from tests.quantized import quantize

    zoo = ROOT / "sample_models"
    with np.load(zoo / "fmnist_test_1000_28.npz") as d:
        x, y = d["x"][:samples], d["y"][:samples]
    np.savez(tmp / "fmnist.npz", x=x, y=y)
    calib = ((np.load(zoo / "fmnist_test_1000_28.npz")["x"][500:508].astype(np.float32) / 255 - 0.286) / 0.353)
    out = []
    for fmt in ("qdq", "qoperator"):
        real = quantize(zoo / "vgg_small.onnx", tmp / f"vgg_small_{fmt}.onnx", calib.reshape(8, 1, 28, 28), fmt)
        proto = onnx.load(str(real))
        sur = float_surrogate(proto, proto.graph.input[0].name, proto.graph.output[0].name)
        twin = tmp / f"vgg_small_{fmt}_surrogate.onnx"
        onnx.save(sur.model, str(twin))
        out.append({"name": f"vgg_small_int8_{fmt}", "real": real, "twin": twin, "data": tmp / "fmnist.npz",
                    "eps": (0.03,), "pre": {"scale": 1 / 255, "mean": (0.286,), "std": (0.353,)}})
    return out


def _ra(value) -> str:
    return "refused" if value is None else f"{value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--int8-samples", type=int, default=20)
    ap.add_argument("--only", choices=("all", "binarized", "int8"), default="all",
                    help="run these fixtures; the results file keeps the other fixtures' rows")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        chosen = (fixtures(Path(tmpdir), args.samples) if args.only in ("all", "binarized") else []) + \
                 (int8_fixtures(Path(tmpdir), args.int8_samples) if args.only in ("all", "int8") else [])
        for f in chosen:
            for eps in f["eps"]:
                for mult in (1, args.factor):
                    budget = args.budget * mult
                    base = dict(model=str(f["real"]), data=str(f["data"]), eps=(eps,), budget=budget, seed=0,
                                **f["pre"])
                    row = {"model": f["name"], "eps": eps, "budget": budget}
                    success = None
                    for attack, extra in (("square", {}), ("rays", {}),
                                          ("transfer", {"surrogate": str(f["twin"]), "restarts": mult}),
                                          ("apgd", {})):
                        t0 = time.perf_counter()
                        try:
                            rep = run_attack(AttackConfig(**base, attack=attack, **extra)).to_dict()["results"][0]
                        except FimauditError as exc:  # APGD refuses a graph it cannot verify (INT8: no gradient)
                            row[f"ra_{attack}"], row[f"refused_{attack}"] = None, str(exc)
                            continue
                        row[f"ra_{attack}"] = rep["robust_accuracy"]
                        row[f"queries_max_{attack}"] = rep["queries_max_per_sample"]
                        row[f"seconds_{attack}"] = round(time.perf_counter() - t0, 2)
                        if attack != "apgd":  # the worst case over the gradient-free attacks, per sample
                            s = np.array([smp["success"] for smp in rep["samples"]])
                            success = s if success is None else success | s
                            correct = np.array([smp["correct"] for smp in rep["samples"]])
                    row["ra_worst"] = float(np.mean(correct & ~success))
                    rows.append(row)
                    print(f"{row['model']:<22} eps {eps:<5g} budget {budget:>6}: RA square {row['ra_square']:.3f} "
                          f"rays {row['ra_rays']:.3f} transfer {row['ra_transfer']:.3f} apgd {_ra(row['ra_apgd'])} "
                          f"worst {row['ra_worst']:.3f}", flush=True)
    print()
    print(f"{'model':<22} {'eps':>5} {'RA worst @B':>12} {'@' + str(args.factor) + 'B':>8} {'gap':>6}")
    pairs = []
    for lo_row, hi_row in zip(rows[::2], rows[1::2]):
        gap = lo_row["ra_worst"] - hi_row["ra_worst"]
        pairs.append({"model": lo_row["model"], "eps": lo_row["eps"], "ra_worst_default": lo_row["ra_worst"],
                      "ra_worst_10x": hi_row["ra_worst"], "gap": gap, "within_0.05": bool(gap <= 0.05)})
        print(f"{lo_row['model']:<22} {lo_row['eps']:>5g} {lo_row['ra_worst']:>12.3f} {hi_row['ra_worst']:>8.3f} "
              f"{gap:>6.3f}")
    out = ROOT / "bench/results/decision_attacks.json"
    if args.only != "all" and out.exists():  # keep the rows of the fixtures not run now
        old = json.loads(out.read_text())
        ran = {r["model"] for r in rows}
        rows = [r for r in old["rows"] if r["model"] not in ran] + rows
        pairs = [p for p in old["convergence"] if p["model"] not in ran] + pairs
    out.write_text(json.dumps({"config": vars(args), "rows": rows, "convergence": pairs}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
