"""Certify throughput in one process and on 1 and 2 local Dask workers: samples/s and queries/s.

    flock /tmp/fimaudit-heavy.lock python bench/scale.py [--n 10000 100000] [--models mlp rand224]

Models: ``mlp`` is sample_models/mlp_tanh_noise.onnx (d = 784); ``rand224`` is a random-weight
3x224x224 convolutional classifier built here at run time in a temporary folder (never
committed). Clusters (1 and 2 worker processes, one thread each) are started before the
timed runs; their start-up is reported apart. Prints a table and writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from distributed import LocalCluster
from onnx import TensorProto, helper, numpy_helper

import fimaudit
from fimaudit.certify import CertifyConfig, certify
from fimaudit.distributed import Execution

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"
OUT = Path(__file__).resolve().parent / "results" / "scale.json"


def random_224(folder: Path) -> tuple[Path, Path]:
    """A seeded random-weight classifier on 3x224x224: 8x8 patches (stride-8 conv), ReLU, average pool, linear."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 3, 8, 8)) / np.sqrt(192)).astype(np.float32)
    w2 = (rng.standard_normal((10, 32)) * 3 / np.sqrt(32)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["z"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (np.zeros(10, np.float32), "b2"))]
    graph = helper.make_graph(nodes, "rand224", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "rand224.onnx"
    onnx.save(model, str(path))
    x = rng.uniform(0, 1, size=(8, 3, 224, 224)).astype(np.float32)
    np.save(folder / "rand224.npy", x)
    return path, folder / "rand224.npy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--models", nargs="*", default=["mlp", "rand224"])
    ap.add_argument("--samples", type=int, default=4, help="samples per run for the 784-d model")
    ap.add_argument("--samples-224", type=int, default=2, help="samples per run for the 224x224 model")
    ap.add_argument("--runs", nargs="*", default=["1 process", "1 worker", "2 workers"],
                    help="which of: '1 process', '1 worker', '2 workers'")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fimaudit-scale-"))
    models = {
        "mlp": (ZOO / "mlp_tanh_noise.onnx", ZOO / "fmnist_test_1000_28.npz", args.samples, 1 / 255),
    }
    if "rand224" in args.models:
        path, data = random_224(tmp)
        models["rand224"] = (path, data, args.samples_224, 1.0)
    header = (f"{'model':8s} {'d':>6s} {'n':>7s} {'samples':>7s} {'run':10s} {'wall s':>7s} {'samples/s':>9s} "
              f"{'queries/s':>10s} {'in ort':>6s} {'speed-up':>8s}")
    print(header)
    print("-" * len(header))
    rows = []
    load_before = os.getloadavg()
    cpus = os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        # Clusters are started once, outside the timed runs; their start-up time is reported apart.
        runs: list[tuple[str, Execution | None, int]] = [("1 process", None, 0)]
        startup = {}
        for workers in [w for w in (1, 2) if f"{w} worker" + ("s" if w > 1 else "") in args.runs]:
            t0 = time.perf_counter()
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None, silence_logs=logging.ERROR))
            startup[workers] = time.perf_counter() - t0
            label = f"{workers} worker" + ("s" if workers > 1 else "")
            runs.append((label, Execution(scheduler=cluster.scheduler_address), max(1, cpus // workers)))
        for name in args.models:
            path, data, samples, scale = models[name]
            for n in args.n:
                base = reference = None
                for label, execution, threads in runs:
                    if label not in args.runs:
                        continue
                    cfg = CertifyConfig(model=str(path), data=str(data), samples=samples, sigma=0.25, n0=100, n=n,
                                        scale=scale, seed=0, threads=threads)
                    t0 = time.perf_counter()
                    res = certify(cfg, execution=execution)
                    wall = time.perf_counter() - t0
                    radii = [s.radius for s in res.samples]
                    reference = reference or radii
                    assert radii == reference, "a distributed run certified different radii"
                    base = base or wall
                    row = {
                        "model": name, "d": res.model["input"]["d"], "n": n, "samples": samples, "run": label,
                        "wall_seconds": wall, "samples_per_second": samples / wall,
                        "queries_per_second": res.summary.queries_total / wall,
                        "runtime_fraction": res.summary.runtime_fraction, "speedup": base / wall,
                        "onnxruntime_threads": threads, "per_worker": res.execution.get("per_worker"),
                    }
                    rows.append(row)
                    print(f"{name:8s} {row['d']:6d} {n:7d} {samples:7d} {label:10s} {wall:7.1f} "
                          f"{row['samples_per_second']:9.3f} {row['queries_per_second']:10.0f} "
                          f"{100 * (row['runtime_fraction'] or 0):5.0f}% {row['speedup']:7.2f}x", flush=True)
    print("cluster start-up (not in the runs): " + ", ".join(f"{w} worker(s) {s:.1f} s" for w, s in startup.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "fimaudit": fimaudit.__version__, "sigma": 0.25, "n0": 100, "cluster_startup_seconds": startup,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "note": "clusters started before the timed runs; 1 process uses onnxruntime's default threads"}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
