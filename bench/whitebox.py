"""Gradients from the graph against black-box estimation and torch.func.jacrev: seconds per sample.

    flock /tmp/fimaudit-heavy.lock python bench/whitebox.py [--samples 8] [--models vgg_small vgg96] [--no-large]

Per zoo model, and for random-weight models built here at run time (a MobileNetV3-style
3x224x224 and a VGG-style 3x320x320 classifier with 4 classes, and a 1000-class 3x224x224
MobileNet-style head for the Lanczos path), it times:

- graph exact: one forward pass for p, S from K - 1 VJPs of the reverse-mode ONNX graph (batched
  over samples; pᵀS = 0 gives the last row), then the K x K matrix G and its spectrum; the one-off build + self-check is reported separately;
- graph Lanczos (1000 classes): the top eigenvalue of F from fused F v passes (ARPACK);
- black-box exact (2d+1 queries; only where d <= --exact-max-d, default 1000) and sketch (--budget queries)
  through ``fimaudit.scan``;
- torch.func.jacrev (vmapped over samples) of log-softmax on the same weights, run by a small
  ONNX-to-torch interpreter (torch is a bench-only dependency).

Both runtimes get --threads threads (default 2). Prints a table, writes bench/results/whitebox.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import fimaudit
from fimaudit.autodiff import GraphEngine, build_gradient_source, build_graphs, lanczos_top
from fimaudit.model import load_model

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"
OUT = Path(__file__).resolve().parent / "results" / "whitebox.json"
REPEATS = 3  # timings are the best of 3 runs: the machine is shared


# ----------------------------------------------------------------------------- random large models
class _Net:
    """A tiny graph builder for the random-weight bench models (NCHW, float32, opset 17)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> None:
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0
        self.shape = shape

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def w(self, array: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        fan = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan)
        b = 0.05 * self.rng.standard_normal(cout)
        pad = k // 2
        return self.node("Conv", [x, self.w(w), self.w(b)], strides=[stride, stride], pads=[pad] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.node("BatchNormalization", [x, self.w(1 + 0.1 * r.standard_normal(c)), self.w(0.1 * r.standard_normal(c)),
                                                self.w(0.1 * r.standard_normal(c)), self.w(r.uniform(0.5, 1.5, c))])

    def model(self, x_out: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *self.shape])],
            [helper.make_tensor_value_info(x_out, TensorProto.FLOAT, ["batch", None])], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def mobilenet(classes: int, seed: int = 0, size: int = 224) -> onnx.ModelProto:
    """MobileNetV3-style: HardSwish stem, inverted residuals with depthwise convs and squeeze-excitation."""
    net = _Net(np.random.default_rng(seed), (3, size, size))
    x = net.node("HardSwish", [net.bn(net.conv("input", 3, 16, 3, 2), 16)])
    c = 16
    # (expand, out, stride, se)
    for exp, out, stride, se in [(16, 16, 2, True), (48, 24, 2, False), (64, 24, 1, False), (96, 40, 2, True),
                                 (120, 48, 1, True), (144, 96, 2, True)]:
        h = net.node("Relu", [net.bn(net.conv(x, c, exp, 1), exp)])
        h = net.node("HardSwish", [net.bn(net.conv(h, exp, exp, 3, stride, group=exp), exp)])
        if se:
            s = net.node("GlobalAveragePool", [h])
            s = net.node("Relu", [net.conv(s, exp, max(8, exp // 4), 1)])
            s = net.node("HardSigmoid", [net.conv(s, max(8, exp // 4), exp, 1)], alpha=1.0 / 6.0, beta=0.5)
            h = net.node("Mul", [h, s])
        h = net.bn(net.conv(h, exp, out, 1), out)
        x = net.node("Add", [x, h]) if stride == 1 and c == out else h
        c = out
    x = net.node("HardSwish", [net.bn(net.conv(x, c, 288, 1), 288)])
    x = net.node("Flatten", [net.node("GlobalAveragePool", [x])])
    w = net.rng.standard_normal((classes, 288)) * np.sqrt(1.0 / 288)
    return net.model(net.node("Gemm", [x, net.w(w), net.w(np.zeros(classes))], transB=1))


def vgg(classes: int, seed: int = 1, size: int = 320) -> onnx.ModelProto:
    """VGG-style: 3x3 conv-BN-ReLU pairs and max-pooling, global average pool, two dense layers."""
    net = _Net(np.random.default_rng(seed), (3, size, size))
    x, c = "input", 3
    for out, reps in [(16, 1), (32, 1), (64, 2), (96, 2), (128, 1)]:
        for _ in range(reps):
            x = net.node("Relu", [net.bn(net.conv(x, c, out, 3), out)])
            c = out
        x = net.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = net.node("Flatten", [net.node("GlobalAveragePool", [x])])
    h = net.node("Relu", [net.node("Gemm", [x, net.w(net.rng.standard_normal((64, c)) * np.sqrt(2 / c)),
                                             net.w(np.zeros(64))], transB=1)])
    return net.model(net.node("Gemm", [h, net.w(net.rng.standard_normal((classes, 64)) * 0.3), net.w(np.zeros(classes))],
                               transB=1))


# ----------------------------------------------------------------------------- ONNX -> torch (bench only)
class TorchGraph:
    """Evaluates an ONNX classifier with torch ops (the zoo's and the bench models' operators only).

    Integer and shape tensors stay numpy (computed once by onnx's reference evaluator and
    cached), so the traced function is a pure float computation that torch.func can transform.
    """

    def __init__(self, proto: onnx.ModelProto, torch_module) -> None:
        self.torch = torch_module
        self.proto = proto
        self.weights = {}
        for t in proto.graph.initializer:
            a = numpy_helper.to_array(t)
            self.weights[t.name] = torch_module.tensor(np.array(a)) if a.dtype.kind == "f" else a
        self.input = proto.graph.input[0].name
        self.output = proto.graph.output[0].name
        self.cache: dict[int, list] = {}

    def _const(self, i: int, node, env):
        if i not in self.cache:
            from onnx.reference import ReferenceEvaluator

            ins = [env[n] if n else None for n in node.input]
            g = helper.make_graph([node], "c", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                              list(v.shape))
                                               for n, v in zip(node.input, ins) if n], 
                                  [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output])
            m = helper.make_model(g, opset_imports=list(self.proto.opset_import))
            self.cache[i] = ReferenceEvaluator(m).run(None, {n: v for n, v in zip(node.input, ins) if n})
        return self.cache[i]

    def __call__(self, x):
        torch = self.torch
        F = torch.nn.functional
        env = dict(self.weights)
        env[self.input] = x
        for i, node in enumerate(self.proto.graph.node):
            a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
            ins = [env[n] if n else None for n in node.input]
            if node.op_type == "Shape":  # shapes are static: numpy, like every integer tensor
                env[node.output[0]] = np.array(ins[0].shape, dtype=np.int64)
                continue
            if all(not isinstance(v, torch.Tensor) for v in ins if v is not None):
                for o, v in zip(node.output, self._const(i, node, env)):
                    env[o] = v
                continue
            T = [torch.as_tensor(np.array(v), dtype=x.dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                 for v in ins]
            op = node.op_type
            if op == "Conv":
                k = len(T[1].shape) - 2
                pads = a.get("pads", [0] * 2 * k)
                tpad = [v for i in reversed(range(k)) for v in (pads[i], pads[k + i])]  # torch: last axis first
                h = F.pad(T[0], tpad) if any(pads) else T[0]
                conv = F.conv2d if k == 2 else F.conv1d
                y = conv(h, T[1], T[2] if len(T) > 2 else None, stride=a.get("strides", [1] * k),
                         dilation=a.get("dilations", [1] * k), groups=a.get("group", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(T[0], T[3], T[4], T[1], T[2], training=False, eps=a.get("epsilon", 1e-5))
            elif op in ("Relu", "Tanh", "Sigmoid", "Erf", "HardSwish"):
                y = {"Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Erf": torch.erf,
                     "HardSwish": F.hardswish}[op](T[0])
            elif op == "HardSigmoid":
                y = torch.clamp(a.get("alpha", 0.2) * T[0] + a.get("beta", 0.5), 0, 1)
            elif op == "MaxPool":
                y = F.max_pool2d(T[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]), a.get("pads", [0] * 4)[:2],
                                 ceil_mode=bool(a.get("ceil_mode", 0)))
            elif op == "AveragePool":
                y = F.avg_pool2d(T[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]), a.get("pads", [0] * 4)[:2],
                                 ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=bool(a.get("count_include_pad", 0)))
            elif op == "GlobalAveragePool":
                y = T[0].mean(dim=tuple(range(2, T[0].dim())), keepdim=True)
            elif op == "Flatten":
                ax = a.get("axis", 1)
                y = T[0].reshape(int(np.prod(T[0].shape[:ax])), -1)
            elif op == "Gemm":
                A = T[0].T if a.get("transA", 0) else T[0]
                B = T[1].T if a.get("transB", 0) else T[1]
                y = a.get("alpha", 1.0) * (A @ B)
                if len(T) > 2 and T[2] is not None:
                    y = y + a.get("beta", 1.0) * torch.as_tensor(T[2])
            elif op in ("Add", "Sub", "Mul", "Div", "MatMul"):
                p, q = [torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in T]
                y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "MatMul": torch.matmul}[op](p, q)
            elif op == "Concat":
                y = torch.cat([torch.as_tensor(t) for t in T], dim=a.get("axis", 0))
            elif op == "Reshape":
                shape = [int(s) if s != 0 else T[0].shape[j] for j, s in enumerate(T[1])]
                y = T[0].reshape(shape)
            elif op == "Transpose":
                y = T[0].permute(*a["perm"])
            elif op == "Gather":
                idx = np.asarray(T[1])
                ax = a.get("axis", 0)
                y = T[0].select(ax, int(idx)) if idx.ndim == 0 else T[0].index_select(ax, torch.as_tensor(idx.reshape(-1)))
            elif op == "Slice":
                y = T[0]
                axes = T[3] if len(T) > 3 and T[3] is not None else range(len(T[1]))
                for st, en, ax in zip(T[1], T[2], axes):
                    y = y.narrow(int(ax), int(st), int(min(en, y.shape[int(ax)]) - st))
            elif op == "Unsqueeze":
                y = T[0]
                for ax in sorted(int(v) for v in T[1]):
                    y = y.unsqueeze(ax)
            elif op == "Expand":
                y = torch.broadcast_to(T[0], np.broadcast_shapes(tuple(T[0].shape), tuple(int(s) for s in T[1])))
            elif op == "Where":
                y = torch.where(torch.as_tensor(T[0]), torch.as_tensor(T[1]), torch.as_tensor(T[2]))
            elif op == "LayerNormalization":
                ax = a.get("axis", -1) % T[0].dim()
                y = F.layer_norm(T[0], tuple(T[0].shape[ax:]), T[1], T[2] if len(T) > 2 else None, a.get("epsilon", 1e-5))
            elif op == "Softmax":
                y = torch.softmax(T[0], a.get("axis", -1))
            elif op == "ReduceMean":
                y = T[0].mean(dim=tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1)))
            elif op in ("Cast", "Identity", "Dropout"):
                y = T[0]
            else:
                raise NotImplementedError(op)
            env[node.output[0]] = y
        return env[self.output]


def jacrev_seconds(proto: onnx.ModelProto, x: np.ndarray, probs: bool, threads: int) -> tuple[float, np.ndarray]:
    """Seconds per sample for S (K x d per sample) by torch.func.jacrev, vmapped over the samples."""
    import torch
    from torch.func import jacrev, vmap

    torch.set_num_threads(threads)
    g = TorchGraph(proto, torch)

    def logp(xi):
        z = g(xi.unsqueeze(0)).reshape(-1)
        return torch.log(z / z.sum()) if probs else torch.log_softmax(z, dim=0)

    xt = torch.tensor(x, dtype=torch.float32)
    best = np.inf
    with torch.no_grad():
        vmap(jacrev(logp))(xt[:1])  # warm-up (and cache of constant subgraphs)
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            s = vmap(jacrev(logp))(xt)
            p = torch.exp(vmap(logp)(xt))
            for i in range(x.shape[0]):
                si = s[i].reshape(p.shape[1], -1).double()
                root = p[i].double().sqrt()
                torch.linalg.eigvalsh(root[:, None] * (si @ si.T) * root[None, :])
            best = min(best, time.perf_counter() - t0)
        return best / x.shape[0], s.reshape(x.shape[0], p.shape[1], -1).numpy()


# ----------------------------------------------------------------------------- timings
def graph_exact(model, x: np.ndarray, kind: str, threads: int):
    """(build + check seconds, seconds per sample for exact S and the spectrum of G, S, check figures)."""
    t0 = time.perf_counter()
    choice = build_gradient_source(model, kind, "auto", x[:2], np.random.default_rng(0), threads=threads)
    if choice.engine is None:  # timed anyway; the refusal is reported beside it
        info = model.info
        graphs = build_graphs(model.proto, input_name=info.input.name, output_name=info.output.name,
                              sample_shape=tuple(info.sample_shape), fixed_batch=info.fixed_batch, kind=kind, threads=threads)
        choice = dataclasses.replace(choice, engine=GraphEngine(graphs, device="cpu", threads=threads))
    setup = time.perf_counter() - t0
    engine = choice.engine
    engine.logp(x[:1])
    engine.jacobians(x[:1])  # warm-up: onnxruntime plans its memory on the first runs
    best = np.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        # p first (the scan has it from its forward pass), then K - 1 VJPs per point: pᵀS = 0 gives the last row.
        lp, s = engine.jacobians(x, np.exp(engine.logp(x)))
        p = np.exp(lp)
        lam = []
        for i in range(x.shape[0]):
            root = np.sqrt(p[i])
            lam.append(np.linalg.eigvalsh(root[:, None] * (s[i] @ s[i].T) * root[None, :])[-1])
        best = min(best, time.perf_counter() - t0)
    return setup, best / x.shape[0], s, np.array(lam), choice


def blackbox(path: Path, data, samples: int, method: str, budget: int, pre: dict, threads: int) -> float:
    t0 = time.perf_counter()
    kw = {"scale": pre["scale"], "mean": (pre["mean"],), "std": (pre["std"],)} if pre else {}
    res = fimaudit.scan(path, data, samples=samples, method=method, budget=budget, seed=0, bounds=False, threads=threads,
                        gradients="fd", **kw)  # the black-box estimators (the scan's default would use the graph)
    return (time.perf_counter() - t0) / len(res.samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--exact-max-d", type=int, default=1000, help="black-box exact only up to this input size")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"]
    cases = []
    for e in manifest:
        if not args.models or e["name"] in args.models:
            cases.append((e["name"], ZOO / e["file"], ZOO / e["data"], e["preprocess"], args.samples))
    tmp = Path(tempfile.mkdtemp(prefix="fimaudit-whitebox-"))
    if not args.no_large:
        for name, proto in [("mobilenet224", mobilenet(4)), ("vgg320", vgg(4))]:
            if not args.models or name in args.models:
                onnx.save(proto, str(tmp / f"{name}.onnx"))
                cases.append((name, tmp / f"{name}.onnx", None, None, 4))
    header = (f"{'model':22s} {'d':>7s} {'K':>4s} {'graph exact':>11s} {'setup':>6s} {'bb exact':>9s} {'sketch':>8s} "
              f"{'jacrev':>8s} {'vs jacrev':>9s} {'vs bb':>7s} {'|S-S_torch|':>11s}")
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for name, path, data, pre, n in cases:
        model = load_model(path, device="cpu", threads=args.threads)
        d = model.d
        kind = "probabilities" if model.info.final_op == "Softmax" else "logits"
        rng = np.random.default_rng(0)
        if data is not None:
            raw = np.load(data)["x"][:n].astype(np.float64)
            x = (raw * pre["scale"] - pre["mean"]) / pre["std"]
        else:
            x = rng.uniform(0, 1, (n,) + model.sample_shape)
        x = x + 1e-3 * rng.standard_normal(x.shape)  # dithered: no exact ties
        setup, t_graph, s, lam, choice = graph_exact(model, x, kind, args.threads)
        nb = min(n, 4 if d <= 1_000 else 1)  # black-box samples (a 224x224 sketch costs seconds each)
        t_exact = blackbox(path, data, nb, "exact", 2 * d + 3, pre, args.threads) if d <= args.exact_max_d else None
        t_sketch = blackbox(path, data, nb, "sketch", args.budget, pre, args.threads)
        t_jac = diff = None
        if not args.no_torch:
            try:
                t_jac, s_torch = jacrev_seconds(model.proto, x.astype(np.float32), kind == "probabilities", args.threads)
                diff = float(np.linalg.norm(s_torch - s) / np.linalg.norm(s))
            except NotImplementedError as exc:
                print(f"  (jacrev: operator {exc} not in the bench converter)")
        row = {"model": name, "d": d, "K": int(s.shape[1]), "samples": n, "graph_exact_s": t_graph, "graph_setup_s": setup,
               "blackbox_exact_s": t_exact, "sketch_s": t_sketch, "jacrev_s": t_jac, "rel_diff_vs_torch": diff,
               "speedup_vs_jacrev": (t_jac / t_graph) if t_jac else None,
               "speedup_vs_blackbox_exact": (t_exact / t_graph) if t_exact else None,
               "self_check": choice.check.to_dict() if choice.check else None, "refusal": choice.reason,
               "lambda_max_median": float(np.median(lam)),
               "provider": choice.engine.provider}
        rows.append(row)
        f = lambda v, w=8, p=3: f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}s}"  # noqa: E731
        print(f"{name:22s} {d:7d} {row['K']:4d} {f(t_graph, 11, 4)} {f(setup, 6, 2)} {f(t_exact, 9)} {f(t_sketch)} "
              f"{f(t_jac, 8, 4)} {f(row['speedup_vs_jacrev'], 8, 1)}x {f(row['speedup_vs_blackbox_exact'], 6, 0)}x "
              f"{(f'{diff:11.1e}' if diff is not None else '-'):>11s}", flush=True)
    lanczos = []
    if not args.no_large and (not args.models or "mobilenet224_1000" in args.models):
        proto = mobilenet(1000, seed=2)
        onnx.save(proto, str(tmp / "mobilenet224_1000.onnx"))
        model = load_model(tmp / "mobilenet224_1000.onnx", device="cpu", threads=args.threads)
        x = np.random.default_rng(3).uniform(0, 1, (2,) + model.sample_shape)
        t0 = time.perf_counter()
        choice = build_gradient_source(model, "logits", "graph", x, np.random.default_rng(0), threads=args.threads)
        setup = time.perf_counter() - t0
        choice.engine.fisher(x[:1], x[:1])  # warm-up
        for i in range(x.shape[0]):
            t0 = time.perf_counter()
            res = lanczos_top(choice.at(x[i]), np.random.default_rng(i), tol=1e-4)
            lanczos.append({"seconds": time.perf_counter() - t0, "products": res.products, "lambda_max": float(res.eigenvalues[0]),
                            "tol": res.tol, "converged": res.converged})
        med = float(np.median([r["seconds"] for r in lanczos]))
        print(f"\nLanczos, mobilenet224 with 1000 classes (d = {model.d}): {med:.2f} s per sample (median of {len(lanczos)}), "
              f"{lanczos[0]['products']} F v products, tol {lanczos[0]['tol']:g}, setup {setup:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
            "fimaudit": fimaudit.__version__, "budget": args.budget}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "lanczos_1000_classes": lanczos}, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
