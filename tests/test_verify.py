"""fimaudit verify and its bound engine (fimaudit.verify): closed forms, soundness against onnxruntime's float32
outputs on random nets of every supported operator, L2 sets, attacks on verified samples, CLI contract."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fimaudit.verify import BoundGraph, BoxSet, InputSet, domain_bounds
from fimaudit.verify.sets import _l2_dual

OPSET = 17
IR = 8


def _model(nodes, inits, in_shape, out="z", k=None, opset=OPSET):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v) if np.asarray(v).dtype == np.int64 else
                                                   np.asarray(v, np.float32), n) for n, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = IR
    return m


def _t(a):
    return np.asarray(a, np.float32)


def _head(rng, name, width, k=4):
    """Flatten + Gemm to k logits."""
    return ([helper.make_node("Flatten", [name], ["hf"], axis=1), helper.make_node("Gemm", ["hf", "Wz", "bz"], ["z"], transB=1)],
            {"Wz": rng.standard_normal((k, width)), "bz": rng.standard_normal(k)})


def net(kind: str, rng: np.random.Generator):
    """(model, sample shape): a small random net around one operator kind."""
    d = 6
    W1, b1 = rng.standard_normal((8, d)), rng.standard_normal(8) * 0.5
    lin = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1)]
    inits = {"W1": W1, "b1": b1}
    unary = {"relu": ("Relu", {}), "leaky": ("LeakyRelu", {"alpha": 0.1}), "sigmoid": ("Sigmoid", {}),
             "tanh": ("Tanh", {}), "hardsigmoid": ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
             "hardswish": ("HardSwish", {}), "sign": ("Sign", {}), "floor": ("Floor", {}), "round": ("Round", {}),
             "erf": ("Erf", {})}
    if kind in unary:
        op, at = unary[kind]
        nodes = lin + [helper.make_node(op, ["h"], ["a"], **at)]
        head, hi = _head(rng, "a", 8)
        return _model(nodes + head, inits | hi, (d,)), (d,)
    if kind == "clip":
        nodes = lin + [helper.make_node("Clip", ["h", "cmin", "cmax"], ["a"])]
        head, hi = _head(rng, "a", 8)
        return _model(nodes + head, inits | hi | {"cmin": np.float32(-0.5), "cmax": np.float32(0.7)}, (d,)), (d,)
    if kind == "mul2":  # product of two activations, with Sub/Div by constants
        nodes = lin + [helper.make_node("Gemm", ["x", "W2", "b2"], ["g"], transB=1), helper.make_node("Tanh", ["g"], ["t"]),
                       helper.make_node("Mul", ["h", "t"], ["p"]), helper.make_node("Sub", ["p", "c"], ["q"]),
                       helper.make_node("Div", ["q", "c2"], ["a"])]
        head, hi = _head(rng, "a", 8)
        return _model(nodes + head, inits | hi | {"W2": rng.standard_normal((8, d)), "b2": rng.standard_normal(8),
                                                  "c": rng.standard_normal(8), "c2": np.float32(1.7)}, (d,)), (d,)
    if kind == "attention":  # (T, D) tokens: scores = Q K^T, softmax, times V; LayerNorm; mean pool
        t_, dd = 3, 4
        nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("MatMul", ["x", "Wk"], ["kk"]),
                 helper.make_node("MatMul", ["x", "Wv"], ["v"]), helper.make_node("Transpose", ["kk"], ["kt"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["pr"], axis=-1),
                 helper.make_node("MatMul", ["pr", "v"], ["o"]), helper.make_node("Add", ["o", "x"], ["r"]),
                 helper.make_node("LayerNormalization", ["r", "ln_g", "ln_b"], ["ln"], axis=-1, epsilon=1e-5),
                 helper.make_node("ReduceMean", ["ln"], ["a"], axes=[1], keepdims=0)]
        head, hi = _head(rng, "a", dd)
        return _model(nodes + head, {"Wq": rng.standard_normal((dd, dd)), "Wk": rng.standard_normal((dd, dd)),
                                     "Wv": rng.standard_normal((dd, dd)), "ln_g": rng.standard_normal(dd),
                                     "ln_b": rng.standard_normal(dd)} | hi,
                      (t_, dd)), (t_, dd)
    if kind == "conv":  # Conv, BatchNorm, Relu, MaxPool, Pad, AveragePool, GlobalAveragePool, Concat, Slice
        c, s = 2, 6
        nodes = [helper.make_node("Conv", ["x", "Wc", "bc"], ["c1"], pads=[1, 1, 1, 1], strides=[1, 1]),
                 helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], epsilon=1e-3),
                 helper.make_node("Relu", ["bn"], ["r1"]),
                 helper.make_node("MaxPool", ["r1"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Pad", ["mp", "pads"], ["pd"], mode="constant"),
                 helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[2, 2], strides=[1, 1]),
                 helper.make_node("GlobalAveragePool", ["r1"], ["gp"]),
                 helper.make_node("Flatten", ["ap"], ["apf"], axis=1), helper.make_node("Flatten", ["gp"], ["gpf"], axis=1),
                 helper.make_node("Concat", ["apf", "gpf"], ["cat"], axis=1),
                 helper.make_node("Slice", ["cat", "st", "en", "axs"], ["a"])]
        width = 3 * 4 * 4 + 3 - 1
        head, hi = _head(rng, "a", width)
        return _model(nodes + head, {"Wc": rng.standard_normal((3, c, 3, 3)), "bc": rng.standard_normal(3),
                                     "g": rng.uniform(0.5, 1.5, 3), "be": rng.standard_normal(3),
                                     "mu": rng.standard_normal(3), "var": rng.uniform(0.5, 2, 3),
                                     "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                                     "st": np.array([1], np.int64), "en": np.array([100], np.int64),
                                     "axs": np.array([1], np.int64)} | hi, (c, s, s)), (c, s, s)
    if kind == "convt":  # ConvTranspose with stride and pads, LeakyRelu
        c, s = 2, 3
        nodes = [helper.make_node("ConvTranspose", ["x", "Wt", "bt"], ["ct"], strides=[2, 2], pads=[1, 1, 0, 0]),
                 helper.make_node("LeakyRelu", ["ct"], ["a"], alpha=0.2)]
        head, hi = _head(rng, "a", 3 * 6 * 6)
        return _model(nodes + head, {"Wt": rng.standard_normal((c, 3, 3, 3)), "bt": rng.standard_normal(3)} | hi,
                      (c, s, s)), (c, s, s)
    if kind == "shapes":  # a Shape/Gather/Unsqueeze/Concat chain folded into a Reshape; Transpose, Gather, Pad, Squeeze
        nodes = lin + [helper.make_node("Shape", ["h"], ["sh"]),
                       helper.make_node("Gather", ["sh", "i0"], ["s0"], axis=0),
                       helper.make_node("Unsqueeze", ["s0", "ax0"], ["s1"]),
                       helper.make_node("Concat", ["s1", "two", "four"], ["shp"], axis=0),
                       helper.make_node("Reshape", ["h", "shp"], ["r3"]),
                       helper.make_node("Transpose", ["r3"], ["t3"], perm=[0, 2, 1]),
                       helper.make_node("Gather", ["t3", "idx"], ["g3"], axis=1),
                       helper.make_node("Pad", ["g3", "pads"], ["p3"], mode="reflect"),
                       helper.make_node("Unsqueeze", ["p3", "ax0"], ["u4"]),
                       helper.make_node("Squeeze", ["u4", "ax0"], ["a"])]
        head, hi = _head(rng, "a", 3 * 4)
        return _model(nodes + head, inits | hi | {"i0": np.array(0, np.int64), "ax0": np.array([0], np.int64),
                                                  "two": np.array([2], np.int64), "four": np.array([4], np.int64),
                                                  "idx": np.array([3, 0, 3], np.int64),
                                                  "pads": np.array([0, 0, 1, 0, 0, 1], np.int64)}, (d,)), (d,)
    if kind == "sum":  # Sum of activations and a constant, Max/Min of an activation and a constant
        nodes = lin + [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Sum", ["h", "r", "c"], ["s"]),
                       helper.make_node("Max", ["s", "c"], ["mx"]), helper.make_node("Min", ["mx", "c2"], ["a"])]
        head, hi = _head(rng, "a", 8)
        return _model(nodes + head, inits | hi | {"c": rng.standard_normal(8), "c2": rng.standard_normal(8) + 1}, (d,)), (d,)
    if kind == "quant":  # QuantizeLinear/DequantizeLinear (uint8) between two layers
        nodes = lin + [helper.make_node("QuantizeLinear", ["h", "qs", "qz"], ["q"]),
                       helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["a"])]
        head, hi = _head(rng, "a", 8)
        m = _model(nodes + head, inits | hi | {"qs": np.float32(0.05)}, (d,))
        m.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), "qz"))
        return m, (d,)
    raise KeyError(kind)


KINDS = ("relu", "leaky", "sigmoid", "tanh", "hardsigmoid", "hardswish", "clip", "sign", "floor", "round", "erf",
         "mul2", "attention", "conv", "convt", "shapes", "quant", "sum")


def _session(m):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _all_outputs(m):
    """The model with every node output exposed (to check every intermediate interval)."""
    full = onnx.ModelProto()
    full.CopyFrom(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    names = [o for n in m.graph.node for o in n.output if o != "z" and o in types]
    full.graph.output.extend(helper.make_tensor_value_info(o, types[o], None) for o in names)
    return _session(full), ["z"] + names


def _pgd_points(sess, x0, eps, lo, hi, k, rng, steps=8):
    """Points maximising (and minimising) logit k by signed finite-difference ascent: a cheap 'PGD' in the box."""
    pts = []
    for sign in (1.0, -1.0):
        x = np.clip(x0 + rng.uniform(-eps, eps, x0.shape), lo, hi)
        for _ in range(steps):
            g = np.zeros_like(x)
            h = 1e-3 * max(eps, 1e-3)
            for i in np.ndindex(x.shape):
                e = np.zeros_like(x)
                e[i] = h
                f = lambda v: float(sess.run(None, {"x": _t(v)[None]})[0].reshape(-1)[k])  # noqa: E731
                g[i] = f(x + e) - f(x - e)
            x = np.clip(np.clip(x + sign * 0.25 * eps * np.sign(g), x0 - eps, x0 + eps), lo, hi)
            pts.append(x.copy())
    return pts


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), eps=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_bounds_contain_float32_outputs(kind, seed, eps):
    """No sampled point, corner or ascent point of the set has an onnxruntime output outside IBP's interval or a
    margin below CROWN's lower bound (float32 outputs: the rounding margins must cover them)."""
    rng = np.random.default_rng(seed)
    m, shape = net(kind, rng)
    sess = _session(m)
    g = BoundGraph(m, "x", "z", shape)
    x0 = _t(rng.uniform(-1, 1, shape)).astype(np.float64)
    s = InputSet.of(x0, eps, "linf", (-1.5, 1.5))
    b = g.intervals(s, refine=True)
    z = b["z"]
    box = s.attack_box()
    pts = [x0] + [rng.uniform(box.lo, box.hi) for _ in range(40)]
    pts += [np.where(rng.integers(0, 2, shape) == 1, box.hi, box.lo) for _ in range(20)]
    pts += _pgd_points(sess, x0, eps, -1.5, 1.5, int(rng.integers(0, 4)), rng, steps=2) if eps > 0 and kind != "conv" else []
    y = int(np.argmax(sess.run(None, {"x": _t(x0)[None]})[0]))
    margins = g.margins(b, s, y, "crown")
    every, names = _all_outputs(m)
    for p in pts:
        for name, val in zip(names, every.run(None, {"x": _t(p)[None]})):
            if name not in b:  # a static (shape) tensor
                continue
            box = b[name]
            val = np.asarray(val, np.float64).reshape(box.shape)
            assert np.all(val >= box.lo) and np.all(val <= box.hi), (kind, name)
        out = sess.run(None, {"x": _t(p)[None]})[0].astype(np.float64).reshape(z.shape)
        assert np.all(out >= z.lo) and np.all(out <= z.hi), (kind, (z.lo - out).max(), (out - z.hi).max())
        flat = out.reshape(-1)
        real = flat[y] - flat
        assert np.all(real[np.arange(flat.size) != y] >= margins[np.arange(flat.size) != y]), kind


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}),
                                      ("Erf", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Clip", {})])
def test_relaxation_lines_enclose_the_function(op, attrs):
    """Every unary relaxation: lower line <= f <= upper line on a dense grid of [l, u], for intervals on either
    side of and across each kink/inflection; and the lines touch f somewhere (not vacuous)."""
    from fimaudit.ops import table
    from fimaudit.verify.intervals import Box, OpContext

    OPS = table()

    rng = np.random.default_rng(5)
    node = type("N", (), {"attrs": attrs, "op": op, "name": op, "inputs": ("h", "", ""), "index": 0})()
    ctx = OpContext(OPSET, {})
    ends = rng.uniform(-4, 4, (400, 2))
    lo, hi = ends.min(1), ends.max(1) + 1e-3
    ins = [Box(lo, hi)] + ([np.float64(-0.5), np.float64(0.7)] if op == "Clip" else [])
    f = lambda v: OPS[op].point(ctx, node, [v] + ins[1:])[0]  # noqa: E731
    # one spec row per element: +e_i picks the lower line of element i, -e_i the upper one
    res_lo, b_lo = OPS[op].linear(ctx, node, np.eye(lo.size), ins, None)
    res_up, b_up = OPS[op].linear(ctx, node, -np.eye(lo.size), ins, None)
    s_lo, s_up = np.diag(res_lo[0]), -np.diag(res_up[0])
    t_lo, t_up = b_lo, -b_up
    grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 201)[None]
    fx = f(grid)
    assert np.all(s_lo[:, None] * grid + t_lo[:, None] <= fx + 1e-12)
    assert np.all(s_up[:, None] * grid + t_up[:, None] >= fx - 1e-12)


def test_point_box_contains_float32_output_deep_net():
    """eps = 0: the interval is the float64 value widened by the rounding margins; it must contain onnxruntime's
    float32 output (fails without the margins: float32 and float64 differ in the 7th digit)."""
    rng = np.random.default_rng(3)
    d, w = 64, 256
    nodes, inits, prev = [], {}, "x"
    for i in range(6):
        inits[f"W{i}"] = rng.standard_normal((w, d if i == 0 else w)) * (2 / (d if i == 0 else w)) ** 0.5
        inits[f"b{i}"] = rng.standard_normal(w) * 0.1
        nodes += [helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"h{i}"], transB=1),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        prev = f"r{i}"
    inits["Wz"], inits["bz"] = rng.standard_normal((10, w)), rng.standard_normal(10)
    nodes.append(helper.make_node("Gemm", [prev, "Wz", "bz"], ["z"], transB=1))
    m = _model(nodes, inits, (d,))
    sess = _session(m)
    g = BoundGraph(m, "x", "z", (d,))
    for j in range(5):
        x0 = _t(rng.uniform(0, 1, d)).astype(np.float64)
        out = sess.run(None, {"x": _t(x0)[None]})[0].astype(np.float64)
        s = InputSet.of(x0, 0.0, "linf", (0, 1))
        b = g.intervals(s, refine=True)
        assert np.all(out >= b["z"].lo) and np.all(out <= b["z"].hi)
        lo, hi = g.crown_box(b, s, "z")  # CROWN: the margins enter once, not amplified layer by layer as in IBP
        assert np.all(out >= lo) and np.all(out <= hi)
        assert np.all(hi - lo < 0.02 * (1 + np.abs(out).max()))  # worst-case (gamma_n) rounding: sound, not tight


def test_linear_model_crown_is_exact():
    """z = W x + b: CROWN's margin bound equals min over the box of (w_y - w_k).x + b_y - b_k (closed form),
    up to the rounding margins; IBP's is looser."""
    rng = np.random.default_rng(0)
    d, k = 20, 5
    w, bias = rng.standard_normal((k, d)), rng.standard_normal(k)
    m = _model([helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1)], {"W": w, "b": bias}, (d,))
    g = BoundGraph(m, "x", "z", (d,))
    w, bias = _t(w).astype(np.float64), _t(bias).astype(np.float64)
    x0 = rng.uniform(0.2, 0.8, d)
    eps, y = 0.1, 2
    s = InputSet.of(x0, eps, "linf", (0, 1))
    marg = g.margins(g.intervals(s), s, y, "crown")
    lo, hi = np.maximum(x0 - eps, 0), np.minimum(x0 + eps, 1)
    for j in range(k):
        if j == y:
            continue
        a = w[y] - w[j]
        exact = np.sum(np.minimum(a * lo, a * hi)) + bias[y] - bias[j]
        assert exact - 1e-4 * (1 + abs(exact)) <= marg[j] <= exact
    ibp = g.margins(g.intervals(s), s, y, "ibp")
    assert np.all(np.delete(ibp, y) < np.delete(marg, y))


def test_stable_relu_net_crown_is_exact():
    """One hidden ReLU layer with every neuron stable over the set: the net is affine there and CROWN is exact."""
    rng = np.random.default_rng(1)
    d, h, k = 10, 16, 3
    w1, b1 = rng.standard_normal((h, d)), rng.standard_normal(h) * 3
    w2, b2 = rng.standard_normal((k, h)), rng.standard_normal(k)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1)]
    m = _model(nodes, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, (d,))
    g = BoundGraph(m, "x", "z", (d,))
    w1, b1, w2, b2 = (_t(v).astype(np.float64) for v in (w1, b1, w2, b2))
    x0 = rng.uniform(0.3, 0.7, d)
    eps = 0.005
    pre = w1 @ x0 + b1
    assert np.all(np.abs(pre) > np.abs(w1).sum(1) * eps * 1.5)  # every neuron stable
    active = (pre > 0).astype(float)
    weff = w2 @ (active[:, None] * w1)
    beff = w2 @ (active * b1) + b2
    s = InputSet.of(x0, eps, "linf", (0, 1))
    y = 0
    marg = g.margins(g.intervals(s), s, y, "crown")
    for j in range(1, k):
        a = weff[y] - weff[j]
        exact = a @ x0 - eps * np.abs(a).sum() + beff[y] - beff[j]
        assert exact - 1e-4 * (1 + abs(exact)) <= marg[j] <= exact


def test_l2_set_dual_norm():
    """L2 ball (no active box): the bound is a.x0 - eps |a|_2, attained at x0 - eps a/|a|: a dual norm other than
    L2 fails one side. With a box: never above the minimum of sampled feasible points."""
    rng = np.random.default_rng(2)
    d = 30
    a = rng.standard_normal((4, d))
    x0 = rng.uniform(0.4, 0.6, d)
    eps = 0.05
    got = _l2_dual(a, x0, eps, np.full(d, -10.0), np.full(d, 10.0))
    exact = a @ x0 - eps * np.linalg.norm(a, axis=1)
    assert np.allclose(got, exact, rtol=1e-6, atol=1e-8) and np.all(got <= exact + 1e-9)
    s = InputSet.of(x0, 0.3, "l2", (0.3, 0.7))
    val, _ = s.lower(a)
    for _ in range(200):
        v = rng.standard_normal(d)
        p = np.clip(x0 + 0.3 * rng.uniform() * v / np.linalg.norm(v), 0.3, 0.7)
        if np.linalg.norm(p - x0) <= 0.3:
            assert np.all(a @ p >= val - 1e-9)
    for r in range(4):  # the minimiser of the ball alone, clipped: feasible, and at or above the bound
        p = np.clip(x0 - 0.3 * a[r] / np.linalg.norm(a[r]), 0.3, 0.7)
        assert a[r] @ p >= val[r] - 1e-9


def test_domain_bounds_attention_finite():
    """Over the whole input box, attention + LayerNorm logits have finite bounds (sampled outputs inside)."""
    rng = np.random.default_rng(4)
    m, shape = net("attention", rng)
    g = BoundGraph(m, "x", "z", shape)
    z = domain_bounds(g, (-1.0, 1.0))
    assert np.all(np.isfinite(z.lo)) and np.all(np.isfinite(z.hi))
    sess = _session(m)
    for _ in range(50):
        out = sess.run(None, {"x": _t(rng.uniform(-1, 1, shape))[None]})[0].reshape(z.shape)
        assert np.all(out >= z.lo) and np.all(out <= z.hi)


def _save(m, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def _robust_mlp(tmp_path: Path):
    """A small ReLU MLP with large-margin data: some samples verify at a modest eps."""
    rng = np.random.default_rng(7)
    d, h, k, n = 8, 12, 3, 12
    w1, b1 = rng.standard_normal((h, d)), rng.standard_normal(h) * 0.1
    w2, b2 = rng.standard_normal((k, h)), np.zeros(k)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1)]
    m = _model(nodes, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, (d,))
    model = _save(m, tmp_path / "mlp.onnx")
    x = rng.uniform(0, 1, (n, d)).astype(np.float32)
    y = np.argmax(_session(m).run(None, {"x": x})[0], axis=1)
    np.savez(tmp_path / "d.npz", x=x, y=y, eps=np.full(n, 0.02))
    return model, tmp_path / "d.npz"


def _verify_then_attack(model, data, eps, norm, input_range=(0.0, 1.0), samples=None, method="crown", branches=0):
    from fimaudit.evidence import AttackConfig, run_attack
    from fimaudit.verify.run import VerifyConfig, run_verify

    v = run_verify(VerifyConfig(model=str(model), data=str(data), eps=(eps,), norm=norm, method=method, bisect=False,
                                input_range=input_range, samples=samples, device="cpu", branches=branches)).to_dict()
    verified = {s["index"] for s in v["samples"] if s["bounds"][0]["verified"]}
    a = run_attack(AttackConfig(model=str(model), data=str(data), attack="apgd", eps=(eps,), norm=norm, steps=40,
                                restarts=1, input_range=input_range, samples=samples, device="cpu")).to_dict()
    broken = {s["index"] for s in a["results"][0]["samples"] if s["success"]}
    return verified, broken


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.1)])
def test_verified_samples_resist_apgd(tmp_path, norm, eps):
    """A sample verified at eps that APGD breaks at the same eps is a bug (and some samples must verify)."""
    model, data = _robust_mlp(tmp_path)
    verified, broken = _verify_then_attack(model, data, eps, norm)
    assert verified, "nothing verified: the test says nothing"
    assert not verified & broken
    # at a large radius the attack succeeds somewhere and nothing it breaks is verified
    verified, broken = _verify_then_attack(model, data, 0.4, norm)
    assert broken and not verified & broken


def test_branch_and_bound_sound_and_useful(tmp_path):
    """ReLU branch and bound verifies more than the root bound, and never a sample APGD breaks (radii around the
    model's robustness edge, where an unsound split would claim too much)."""
    model, data = _robust_mlp(tmp_path)
    more = 0
    for eps in (0.05, 0.1, 0.2):
        plain, _ = _verify_then_attack(model, data, eps, "linf")
        verified, broken = _verify_then_attack(model, data, eps, "linf", branches=40)
        assert plain <= verified and not verified & broken
        more += len(verified - plain)
    assert more > 0


REAL = os.environ.get("FIMAUDIT_REALMODELS")


@pytest.mark.skipif(not REAL, reason="FIMAUDIT_REALMODELS not set")
@pytest.mark.parametrize("name,input_range", [("mnistfc_256x2", (0.0, 1.0)), ("eran_mnist_relu_9_200", (0.0, 1.0)),
                                              ("oval21_cifar_base_kw", (-2.2, 2.7)), ("cifar10_resnet_2b", (-2.0, 2.2))])
def test_corpus_verified_resist_apgd(tmp_path, name, input_range):
    """Third-party models at the smallest radius of their properties: some samples verify, APGD breaks none of them."""
    folder = Path(REAL)
    data = folder / f"{name}.npz"
    d = np.load(data)
    eps = float(np.min(d["eps"]))
    verified, broken = _verify_then_attack(folder / f"{name}.onnx", data, eps, "linf", input_range, samples=4)
    assert verified and not verified & broken


# ----------------------------------------------------------------------------------------------------- CLI
def test_cli_json_schema_report_and_exit_codes(tmp_path):
    import jsonschema
    from typer.testing import CliRunner

    from fimaudit.cli import app

    model, data = _robust_mlp(tmp_path)
    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["verify", str(model), "--data", str(data), "--eps", "0.01,0.05", "--eps-from", "eps",
                                 "--json", str(out), "--samples", "4"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    schema = json.loads(resources.files("fimaudit.report").joinpath("verify.schema.json").read_text())
    jsonschema.validate(rep, schema)
    assert rep["kind"] == "verify" and len(rep["samples"]) == 4 and rep["per_sample_radius"]["eps_from"] == "eps"
    for s in rep["samples"]:  # bisection's radius is consistent with the listed eps
        for b in s["bounds"]:
            if b["verified"]:
                assert s["certified_radius"] >= b["eps"]
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0
    from fimaudit.report import load_result
    from fimaudit.report.verify import render_verify_text

    assert again.output == render_verify_text(load_result(rep)[1])
    # the HTML page uses the shared shell and names the set, the units and the certified accuracy per eps
    page = tmp_path / "v.html"
    assert CliRunner().invoke(app, ["report", str(out), "--format", "html", "--out", str(page)]).exit_code == 0
    text = page.read_text()
    assert 'data-kind="verify"' in text and "Content-Security-Policy" in text
    assert "Certified robust accuracy" in text and rep["set"]["units"] in text
    for row in rep["results"]:
        assert f"{100 * row['certified_accuracy']:.1f}%" in text
    # an operator without a rule: one line, exit 2
    bad = _model([helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1), helper.make_node("Cos", ["h"], ["z"])],
                 {"W": np.ones((3, 8)), "b": np.zeros(3)}, (8,))
    _save(bad, tmp_path / "bad.onnx")
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "bad.onnx"), "--data", str(data), "--eps", "0.01"])
    assert r.exit_code == 2 and "Cos" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["verify", str(model), "--data", str(data), "--method", "magic"])
    assert r.exit_code == 2


def test_workers_give_the_single_process_result(tmp_path):
    """--workers/--scheduler: samples verified on Dask workers match the single-process run (timing aside)."""
    distributed = pytest.importorskip("distributed")
    from fimaudit.distributed import Execution
    from fimaudit.verify.run import VerifyConfig, run_verify

    model, data = _robust_mlp(tmp_path)
    cfg = VerifyConfig(model=str(model), data=str(data), eps=(0.03, 0.1), device="cpu", branches=10)

    def samples(rep):
        return [{k: v for k, v in s.items() if k != "seconds"} for s in rep.to_dict()["samples"]]

    local = run_verify(cfg)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as c, distributed.Client(c):
        remote = run_verify(cfg, execution=Execution(scheduler=c.scheduler_address, chunk=3))
    assert samples(remote) == samples(local)
    assert remote.to_dict()["runtime"]["execution"]["mode"] == "dask"


def test_attack_space_mapping_nhwc_per_channel(tmp_path):
    """verify's set is the attack space's: per-channel --mean/--std on an NHWC model. For an affine model the
    reported margin bounds equal the closed-form minimum over the box in attack space (so the channel axis,
    the mean and the 1/std scaling are all applied where the attacks apply them)."""
    from fimaudit.verify.run import VerifyConfig, run_verify

    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "Wc", "bc"], ["c"]),
             helper.make_node("Flatten", ["c"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "b"], ["z"], transB=1)]
    m = _model(nodes, {"Wc": rng.standard_normal((2, 3, 1, 1)), "bc": rng.standard_normal(2),
                       "W": rng.standard_normal((3, 32)), "b": rng.standard_normal(3)}, (4, 4, 3))
    model = _save(m, tmp_path / "nhwc.onnx")
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 1.0, 2.0])
    x = rng.uniform(0, 1, (3, 4, 4, 3)).astype(np.float32)
    u = (x - mean) / std
    y = np.argmax(_session(m).run(None, {"x": u.astype(np.float32)})[0], axis=1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    eps = 0.05
    rep = run_verify(VerifyConfig(model=str(model), data=str(tmp_path / "d.npz"), eps=(eps,), bisect=False,
                                  mean=tuple(mean), std=tuple(std), device="cpu")).to_dict()
    g = BoundGraph(m, "x", "z", (4, 4, 3))
    c0 = g.evaluate(np.zeros((4, 4, 3)))["z"].reshape(-1)
    jac = np.stack([g.evaluate(e.reshape(4, 4, 3))["z"].reshape(-1) - c0 for e in np.eye(48)], axis=1)  # (3, 48)
    for s, xi, yi in zip(rep["samples"], x.astype(np.float64), y):
        lo, hi = np.maximum(xi - eps, 0).reshape(-1), np.minimum(xi + eps, 1).reshape(-1)
        sd = np.broadcast_to(std, (4, 4, 3)).reshape(-1)
        mu = np.broadcast_to(mean, (4, 4, 3)).reshape(-1)
        for k in range(3):
            if k == yi:
                continue
            a = (jac[yi] - jac[k]) / sd
            exact = np.sum(np.minimum(a * lo, a * hi)) - a @ mu + c0[yi] - c0[k]
            got = s["bounds"][0]["margins"][k]
            assert exact - 1e-3 * (1 + abs(exact)) <= got <= exact + 1e-9  # rounding margins: slightly below


def test_box_set_equals_the_linf_set_without_preprocessing():
    """BoxSet (a box in model-input units, for other bound users) gives the same intervals and margins as InputSet."""
    rng = np.random.default_rng(12)
    m, shape = net("relu", rng)
    g = BoundGraph(m, "x", "z", shape)
    x0 = rng.uniform(-1, 1, shape)
    a, b = InputSet.of(x0, 0.1, "linf"), BoxSet(x0 - 0.1, x0 + 0.1)
    ba, bb = g.intervals(a, refine=True), g.intervals(b, refine=True)
    assert np.allclose(ba["z"].lo, bb["z"].lo) and np.allclose(ba["z"].hi, bb["z"].hi)
    assert np.allclose(g.margins(ba, a, 0), g.margins(bb, b, 0))


def test_bounds_command_domain_option(tmp_path):
    """`fimaudit bounds --domain LO,HI`: an attention model without a global constant gets finite logit bounds over
    the box, in the JSON, and they contain sampled onnxruntime outputs."""
    from typer.testing import CliRunner

    from fimaudit.cli import app

    rng = np.random.default_rng(4)
    m, shape = net("attention", rng)
    path = _save(m, tmp_path / "att.onnx")
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bounds", str(path), "--domain=-1,1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    lo, hi = np.array(rep["domain_bounds"]["logits_lower"]), np.array(rep["domain_bounds"]["logits_upper"])
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    sess = _session(m)
    for _ in range(30):
        z = sess.run(None, {"x": _t(rng.uniform(-1, 1, shape))[None]})[0].reshape(-1)
        assert np.all(z >= lo) and np.all(z <= hi)
    assert "bound over the input box" in r.output


def test_audit_verify_section_sits_below_the_attacks_worst_case(tmp_path):
    """The audit's verify section (turned on by a verify.* check): certified accuracy per eps, the policy key reads
    it, it never exceeds the attacks' per-sample worst case, and no verified sample is broken by an attack."""
    from typer.testing import CliRunner

    from fimaudit.cli import app

    model, data = _robust_mlp(tmp_path)
    pol = tmp_path / "p.toml"
    pol.write_text('[audit]\nsamples = 12\nbudget = 300\neps = [0.02, 0.2]\nattacks = ["square"]\nwhitebox = true\n'
                   'sections = ["attacks", "verify"]\n[policy]\nname = "t"\n'
                   'checks = ["verify.certified_accuracy[linf=0.02] >= 0.05", "verify.certified_accuracy[linf=0.2] >= 0"]\n')
    r = CliRunner().invoke(app, ["audit", str(model), "--data", str(data), "--policy", str(pol), "--json", str(tmp_path / "a.json"),
                                 "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "a.json").read_text())
    sec = {s["name"]: s for s in rep["sections"]}
    assert sec["verify"]["status"] == "ok", sec["verify"]
    v = sec["verify"]["data"]
    worst = sec["attacks"]["data"]["worst_case"]["robust_accuracy"]
    rows = v["comparison"]["rows"]
    assert [r["eps"] for r in rows] == [0.02, 0.2]
    for row, res in zip(rows, v["results"]):
        assert row["certified_accuracy"] == res["certified_accuracy"]
        assert row["attack_worst_case"] == worst[f"{row['eps']:g}"]
        assert row["certified_accuracy"] <= row["attack_worst_case"] and row["verified_but_broken"] == []
    assert rows[0]["certified_accuracy"] > 0  # something verifies at the small radius
    checks = {c["key"]: c for c in rep["checks"]}
    assert checks["verify.certified_accuracy[linf=0.02]"]["value"] == rows[0]["certified_accuracy"]
    from fimaudit.report import load_result
    from fimaudit.report.audit import render_audit_html, render_audit_text

    res = load_result(rep)[1]
    assert "certified" in render_audit_text(res) and 'id="verify"' in render_audit_html(res).replace("id=verify", 'id="verify"')
