"""fimaudit verify on the third-party corpus: samples verified at their own radii, time, memory, soundness.

    FIMAUDIT_REALMODELS=/work/shared/realmodels python bench/verify.py [--samples 10] [--method crown]

Each model runs in its own process (peak RSS per model). For every model: verify at each sample's own
L-inf radius (the npz's ``eps``), ReLU branch and bound up to --branches splits, no bisection; then a soundness count: for each verified sample, random
points and corners of its set evaluated by onnxruntime (float32) must keep the label (margin > 0) and
stay inside the logit intervals. Prints a table and writes bench/results/verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RANGES = {"oval21_cifar_base_kw": (-2.2, 2.7), "cifar10_resnet_2b": (-2.0, 2.2)}  # normalised outside the graph
# ReLU branch and bound only where a branch costs well under a second (it recomputes CROWN intermediate bounds)
NO_BRANCHING = ("cifar10_resnet_2b", "marabou_cifar10_small")


def one(name: str, folder: Path, samples: int, method: str, points: int, branches: int) -> dict:
    from fimaudit.model import load_model
    from fimaudit.verify.run import VerifyConfig, run_verify
    from fimaudit.verify import BoundGraph, InputSet

    rng_range = RANGES.get(name, (0.0, 1.0))
    t0 = time.perf_counter()
    res = run_verify(VerifyConfig(model=str(folder / f"{name}.onnx"), data=str(folder / f"{name}.npz"), eps=(),
                                  eps_from="eps", method=method, bisect=False, input_range=rng_range, samples=samples,
                                  device="cpu", branches=branches)).to_dict()
    seconds = time.perf_counter() - t0
    d = np.load(folder / f"{name}.npz")
    x, y, eps = d["x"][:samples], d["y"][:samples], d["eps"].reshape(-1)
    eps = np.full(len(x), eps[0]) if eps.size == 1 else eps[:samples]
    model = load_model(str(folder / f"{name}.onnx"), device="cpu")
    g = BoundGraph.from_model(model)
    checked = violations = 0
    rng = np.random.default_rng(0)
    for s in res["samples"]:
        if not s["bounds"][0]["verified"]:
            continue
        i = s["index"]
        st = InputSet.of(x[i].astype(np.float64), float(eps[i]), "linf", rng_range)
        z = g.intervals(st)[g.logit_name]
        box = st.attack_box()
        pts = [rng.uniform(box.lo, box.hi) for _ in range(points // 2)]
        pts += [np.where(rng.integers(0, 2, box.lo.shape) == 1, box.hi, box.lo) for _ in range(points // 2)]
        out = model.run(np.stack(pts).astype(np.float32)).reshape(len(pts), -1).astype(np.float64)
        checked += len(pts)
        bad = (np.argmax(out, axis=1) != y[i]) | np.any(out < z.lo.reshape(1, -1), axis=1) | \
            np.any(out > z.hi.reshape(1, -1), axis=1)
        violations += int(bad.sum())
    ps = res["per_sample_radius"]
    return {"model": name, "samples": len(x), "verified": ps["verified"], "certified_accuracy": ps["certified_accuracy"],
            "clean_accuracy": res["clean_accuracy"], "seconds_per_sample": seconds / len(x),
            "intermediate_bounds": res["method"]["intermediate"], "eps_median": ps["eps_median"],
            "branches": branches, "branches_used": sum(s["bounds"][0].get("branches", 0) for s in res["samples"]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "soundness_points": checked, "soundness_violations": violations}


def large_net_seconds() -> dict:
    """IBP and CROWN-IBP margins on a synthetic 224 x 224 convnet (Conv/ReLU/MaxPool/residual Add/GAP/Gemm)."""
    from onnx import TensorProto, helper, numpy_helper

    from fimaudit.verify import BoundGraph, InputSet

    rng = np.random.default_rng(0)

    def w(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * (2 / np.prod(shape[1:])) ** 0.5).astype(np.float32),
                                       f"w{len(inits)}")

    inits: list = []
    nodes, prev = [], "x"
    for i, (cin, cout, stride) in enumerate([(3, 32, 2), (32, 64, 2), (64, 64, 1), (64, 64, 1), (64, 128, 2)]):
        inits.append(w(cout, cin, 3, 3))
        nodes += [helper.make_node("Conv", [prev, inits[-1].name], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride] * 2),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
        if i == 3:  # a residual connection
            nodes.append(helper.make_node("Add", ["r3", "r2"], ["res"]))
            nodes.append(helper.make_node("MaxPool", ["res"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]))
            prev = "mp"
    inits.append(w(10, 128))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gp"]), helper.make_node("Flatten", ["gp"], ["f"]),
              helper.make_node("Gemm", ["f", inits[-1].name], ["z"], transB=1)]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    bg = BoundGraph(model, "x", "z", (3, 224, 224))
    s = InputSet.of(rng.uniform(0, 1, (3, 224, 224)), 1 / 255, "linf", (0, 1))
    t0, c0 = time.perf_counter(), time.process_time()
    b = bg.intervals(s)
    t1, c1 = time.perf_counter(), time.process_time()
    bg.margins(b, s, 0, "crown")
    t2, c2 = time.perf_counter(), time.process_time()
    return {"ibp_seconds_224": t1 - t0, "crown_ibp_margins_seconds_224": t2 - t1,
            "ibp_cpu_seconds_224": c1 - c0, "crown_ibp_margins_cpu_seconds_224": c2 - c1,
            "load_average": os.getloadavg()[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--method", default="crown", choices=("crown", "ibp"))
    ap.add_argument("--branches", type=int, default=30, help="ReLU branch-and-bound budget per sample (crown)")
    ap.add_argument("--points", type=int, default=200, help="soundness points per verified sample")
    ap.add_argument("--models", default="mnistfc_256x2,eran_mnist_relu_9_200,oval21_cifar_base_kw,cifar10_resnet_2b,"
                    "marabou_cifar10_small")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "verify.json")
    args = ap.parse_args()
    folder = Path(os.environ.get("FIMAUDIT_REALMODELS", "/work/shared/realmodels"))
    if args.one == "large":
        print(json.dumps(large_net_seconds()))
        return
    if args.one:
        print(json.dumps(one(args.one, folder, args.samples, args.method, args.points, args.branches)))
        return
    rows = []
    for name in args.models.split(","):
        branches = 0 if name in NO_BRANCHING else args.branches
        cmd = [sys.executable, __file__, "--one", name, "--samples", str(args.samples), "--method", args.method,
               "--points", str(args.points), "--branches", str(branches)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        r = rows[-1]
        print(f"{r['model']:24s} verified {r['verified']:2d}/{r['samples']}  cert.acc {100 * r['certified_accuracy']:5.1f}%  "
              f"{r['seconds_per_sample']:6.2f} s/sample  RSS {r['peak_rss_mb']:6.0f} MB  intermediate {r['intermediate_bounds']:5s} "
              f"branches <= {r['branches']:2d} "
              f"soundness {r['soundness_violations']}/{r['soundness_points']} violations", flush=True)
    out = subprocess.run([sys.executable, __file__, "--one", "large"], capture_output=True, text=True, check=True)
    large = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"synthetic 224x224 convnet: IBP {large['ibp_seconds_224']:.2f} s ({large['ibp_cpu_seconds_224']:.2f} s CPU), "
          f"CROWN-IBP margins {large['crown_ibp_margins_seconds_224']:.2f} s "
          f"({large['crown_ibp_margins_cpu_seconds_224']:.2f} s CPU), peak RSS {large['peak_rss_mb']:.0f} MB, "
          f"load average {large['load_average']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"method": args.method, "branches": args.branches, "rows": rows,
                                    "large_224": large}, indent=2) + "\n")


if __name__ == "__main__":
    main()
