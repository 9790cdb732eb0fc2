"""Certified local Fisher and Lipschitz bounds (fimaudit/verify/jacobian.py, fimaudit/verify/local.py).

Soundness: sampled, corner and PGD-maximised points of the ball never exceed the bounds (float64
references from tests/nets.py, and fimaudit's float32 gradient graph for ONNX models); at eps = 0 the
bound is above the exact lambda_max. Each broken variant of the method (no ReLU [0, 1] case, midpoint-only
linear ops, p instead of its upper bound, no rounding) is caught by the same checks (``test_broken_*``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fimaudit.verify import BoundGraph, InputSet
from fimaudit import ops
from fimaudit.ops import common as ops_common
from fimaudit.verify import adjoint as adj_mod
from fimaudit.verify import local as local_mod

from . import builders as B
from . import nets as N
from .local_harness import fisher_top, net_oracle, onnx_oracle, search

ZOO = Path(__file__).resolve().parent.parent / "sample_models"


def _graph(path, shape):
    proto = onnx.load(str(path))
    return BoundGraph(proto, proto.graph.input[0].name, proto.graph.output[0].name, tuple(shape))


def _nets(tmp_path):
    rng = np.random.default_rng(7)
    return [("relu", N.relu_mlp(rng, 6, (12, 10), 4)),
            ("sigmoid", N.sigmoid_mlp(rng, 6, 10, 4)),
            ("tanh", N.Net((5,), [("dense", rng.standard_normal((8, 5)), rng.standard_normal(8)), ("tanh",),
                                  ("dense", rng.standard_normal((3, 8)) * 2, rng.standard_normal(3))])),
            ("conv_pool", N.conv_net(rng, c=1, side=4, c_out=2, k=3, pool=True))]


def _violations(tmp_path, eps_list=(0.0, 0.05, 0.3), points=2, seed=0) -> list[str]:
    """Every check of the soundness suite on the small nets; the failures, named."""
    bad = []
    rng = np.random.default_rng(seed)
    for name, net in _nets(tmp_path):
        path = net.onnx(tmp_path / f"{name}.onnx")
        g = _graph(path, net.in_shape)
        oracle = net_oracle(net)
        for p in range(points):
            x0 = rng.standard_normal(net.in_shape) * 0.7
            for eps in eps_list:
                lb = local_mod.local_bounds(g, InputSet.of(x0, eps))
                f, lip, _ = search(oracle, x0, eps, rng, random=24, starts=3, steps=12)
                if f > lb.fisher_upper:
                    bad.append(f"{name} eps={eps} fisher {f:.6g} > {lb.fisher_upper:.6g}")
                if lip > lb.lipschitz:
                    bad.append(f"{name} eps={eps} lipschitz {lip:.6g} > {lb.lipschitz:.6g}")
    return bad


def test_small_nets_sound(tmp_path):
    assert _violations(tmp_path) == []


def test_eps_zero_above_exact_float64(tmp_path):
    rng = np.random.default_rng(3)
    for name, net in _nets(tmp_path):
        g = _graph(net.onnx(tmp_path / f"{name}.onnx"), net.in_shape)
        for _ in range(3):
            x0 = rng.standard_normal(net.in_shape)
            lam, _, _ = net.fisher_reference(x0)
            z, j = net.forward_jacobian(x0)
            lb = local_mod.local_bounds(g, InputSet.of(x0, 0.0))
            assert lb.fisher_upper >= lam, name
            assert lb.lipschitz >= np.linalg.norm(j, 2), name
            # at a point with a decided activation pattern the Lipschitz bound is the norm itself (up to rounding)
            assert lb.lipschitz <= np.linalg.norm(j, 2) * (1 + 1e-3), name


def test_linear_softmax_closed_form(tmp_path):
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((5, 12)), rng.standard_normal(5)
    path = B.save(B.linear_model(w.astype(np.float32), b.astype(np.float32), softmax_out=True), tmp_path / "lin.onnx")
    g = _graph(path, (12,))
    assert g.logit_name != g.output_name  # the bounds read the logits before the Softmax
    w32 = w.astype(np.float32).astype(np.float64)
    norm = np.linalg.norm(w32, 2)
    for eps in (0.0, 0.1, 1.0):
        x0 = rng.standard_normal(12)
        lb = local_mod.local_bounds(g, InputSet.of(x0, eps))
        assert norm <= lb.lipschitz <= norm * (1 + 1e-5)  # J = W everywhere
        for x in [x0] + list(x0 + rng.uniform(-eps, eps, (50, 12))):
            z = w32 @ x.astype(np.float32).astype(np.float64) + b.astype(np.float32)
            lam, *_ = fisher_top(z[None], w32[None])[0]
            assert lam <= lb.fisher_upper
        assert lb.fisher_upper <= 0.5 * lb.lipschitz ** 2 * (1 + 1e-12)


def test_maxpool_ties_route_to_every_candidate(tmp_path):
    """An exact tie in a max-pool window: the bound must cover both one-sided Jacobians."""
    rng = np.random.default_rng(5)
    net = N.conv_net(rng, c=1, side=4, c_out=1, k=2, pool=True)
    path = net.onnx(tmp_path / "tie.onnx")
    g = _graph(path, net.in_shape)
    x0 = np.zeros(net.in_shape)  # constant input: every window of the conv output is tied
    lb = local_mod.local_bounds(g, InputSet.of(x0, 0.0))
    oracle = net_oracle(net)
    f, lip, _ = search(oracle, x0, 1e-3, rng, random=64, starts=2, steps=5)  # both sides of the ties
    assert f <= lb.fisher_upper and lip <= lb.lipschitz


def test_unsupported_operator_refused_with_name(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from fimaudit.errors import UnsupportedModelError
    from fimaudit.model import load_model

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "v")]
    nodes = [helper.make_node("MatMul", ["x", "wt"], ["a"]), helper.make_node("Exp", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "vt"], ["z"]),
             helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("Transpose", ["v"], ["vt"])]
    graph = helper.make_graph(nodes, "exp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])], inits)
    path = B.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "exp.onnx")
    model = load_model(str(path))
    g = BoundGraph.from_model(model)
    with pytest.raises(UnsupportedModelError, match="operator Exp"):
        local_mod.local_bounds(g, InputSet.of(np.zeros(model.sample_shape), 0.0))
    per, summary, notes = local_mod.scan_local_bounds(model, np.zeros((2,) + model.sample_shape), 0.0)
    assert all(d["fisher_upper"] is None and "Exp" in d["reason"] for d in per)
    assert summary["certified"] == 0 and notes


@pytest.mark.parametrize("name", ["mlp_small", "vgg_small"])
def test_sample_models_sound(name):
    """Against fimaudit's float32 gradient graph (what the scan measures) at dithered data points."""
    from fimaudit.model import load_model

    entry = next(e for e in json.loads((ZOO / "manifest.json").read_text())["models"] if e["name"] == name)
    model = load_model(str(ZOO / entry["file"]))
    g = BoundGraph.from_model(model)
    pp = entry["preprocess"]
    data = np.load(ZOO / entry["data"])
    rng = np.random.default_rng(0)
    u = ((data["x"][:2].astype(np.float64) * pp["scale"] - pp["mean"]) / pp["std"]).reshape((-1,) + model.sample_shape)
    u = u + 0.03 * rng.standard_normal(u.shape)  # off the exact ties of the constant background
    oracle = onnx_oracle(ZOO / entry["file"], model.sample_shape, logit_name=g.logit_name)
    for x0 in u:
        for eps in (0.0, 0.003):
            lb = local_mod.local_bounds(g, InputSet.of(x0, eps))
            f, lip, count = search(oracle, x0, eps, rng, random=8, starts=2, steps=4)
            assert f <= lb.fisher_upper and lip <= lb.lipschitz, (name, eps, f, lb.fisher_upper, lip, lb.lipschitz)


def test_scan_reports_sandwich(tmp_path):
    import fimaudit
    from fimaudit.results import ScanResult

    res = fimaudit.scan(str(ZOO / "mlp_small.onnx"), str(ZOO / "fmnist_test_1000_28.npz"), samples=3, scale=1 / 255,
                        local_bound=0.0)
    loc = res.summary.local_upper
    assert loc["certified"] == 3 and loc["violations"] == 0
    for s in res.samples:
        assert s.lower_bound <= s.lambda_max <= s.local_upper["fisher_upper"]
    d = res.to_dict()
    import jsonschema

    jsonschema.validate(d, json.loads((Path(fimaudit.__file__).parent / "report" / "scan.schema.json").read_text()))
    assert ScanResult.from_dict(d).samples[0].local_upper == d["samples"][0]["local_upper"]


# ----------------------------------------------------------------------------- broken variants
def _patched(monkeypatch, op, **fields):
    monkeypatch.setitem(ops.table(), op, dataclasses.replace(ops.table()[op], **fields))


def test_broken_relu_without_unstable_case(tmp_path, monkeypatch):
    _patched(monkeypatch, "Relu", jacobian=ops_common.derivative_rule(
        lambda node, lo, hi: ((lo > 0).astype(float), (lo > 0).astype(float))))
    assert _violations(tmp_path)


def test_broken_midpoint_only_linear(tmp_path, monkeypatch):
    orig = ops_common.affine_jacobian

    def centre_only(ctx, node, adj, ins, out):
        return [None if a is None else adj_mod.Adj(a.mid, np.zeros_like(a.rad)) for a in orig(ctx, node, adj, ins, out)]

    for op in ("Gemm", "Conv"):
        _patched(monkeypatch, op, jacobian=centre_only)
    assert _violations(tmp_path)


def test_broken_p_instead_of_upper(tmp_path, monkeypatch):
    def centre_p(z_lo, z_hi, margins, y):
        p = B.softmax(0.5 * (z_lo + z_hi))
        p[y] = 1.0
        return p

    monkeypatch.setattr(local_mod, "probability_upper", centre_p)
    assert _violations(tmp_path)


def test_broken_no_rounding(tmp_path, monkeypatch):
    """Without the float32 widening of the backward pass the eps = 0 bound of a ReLU net falls below the
    float32 gradient graph's |J|_2 at some points (the bound is otherwise tight there)."""

    def check():
        rng = np.random.default_rng(11)
        net = N.relu_mlp(rng, 30, (40, 40, 40), 6)
        path = net.onnx(tmp_path / "deep.onnx")
        g = _graph(path, net.in_shape)
        oracle = onnx_oracle(path, net.in_shape)
        below = 0
        for _ in range(12):
            x0 = rng.standard_normal(net.in_shape)
            lb = local_mod.local_bounds(g, InputSet.of(x0, 0.0))
            _, lip, _ = search(oracle, x0, 0.0, rng)
            below += lip > lb.lipschitz
        return below

    assert check() == 0
    from fimaudit.ops import elementwise, linear, norm, pool

    for mod in (adj_mod, ops_common, elementwise, linear, norm, pool):  # every interval VJP's float32 widening
        monkeypatch.setattr(mod, "gamma", lambda n: 0.0)
        if hasattr(mod, "ABS_FLOOR"):
            monkeypatch.setattr(mod, "ABS_FLOOR", 0.0)
    assert check() > 0


def test_audit_policy_key_and_dossier_section(tmp_path):
    from fimaudit.audit import AuditConfig, run_audit
    from fimaudit.policy import evaluate, parse_check, policy_from_dict
    from fimaudit.report.audit import render_audit_html, render_audit_markdown

    pol = policy_from_dict({"policy": {"checks": ["fisher.local_upper.median <= 1e6"]},
                            "audit": {"samples": 2, "sections": ["scan"]}})
    from fimaudit.policy import apply_to_config

    fields = apply_to_config(pol, {"model": str(ZOO / "mlp_small.onnx"), "data": str(ZOO / "fmnist_test_1000_28.npz"),
                                   "scale": 1 / 255})
    assert fields["local_bound"] == 0.0  # named by a check: computed at the points
    res = run_audit(AuditConfig(**fields))
    (check,) = evaluate(pol, res)
    loc = res.section("scan").data["summary"]["local_upper"]
    assert check.passed and check.value == loc["fisher_upper"]["median"]
    assert "Local Fisher sandwich" in render_audit_html(res) and "certified local upper" in render_audit_markdown(res)
    # without a local bound the key is missing, with the reason
    res2 = run_audit(AuditConfig(**(fields | {"local_bound": None})))
    (c2,) = evaluate(policy_from_dict({"policy": {"checks": ["fisher.local_upper.max <= 1"]}}), res2)
    assert not c2.passed and "local_bound" in c2.reason
    assert parse_check("fisher.local_upper.p90 < 3").key == "fisher.local_upper.p90"


def test_data_space_is_the_input_space_bound_rescaled():
    """--space data: the ball in stored-data units maps to a ball of radius eps scale/std in model-input units,
    and F_data = (scale/std)^2 F_input (MATH §1): the two bounds agree up to rounding."""
    from fimaudit.data import Preprocess
    from fimaudit.model import load_model

    model = load_model(str(ZOO / "mlp_small.onnx"))
    pre = Preprocess(scale=1 / 255, mean=(0.2,), std=(0.5,))
    x = np.load(ZOO / "fmnist_test_1000_28.npz")["x"][:2].astype(np.float64).reshape((2,) + model.sample_shape)
    x = x + np.random.default_rng(0).standard_normal(x.shape)  # off the ties
    u = pre.apply(x, model.sample_shape)
    k = pre.scale / pre.std[0]
    for eps in (0.0, 2.0):
        data, _, _ = local_mod.scan_local_bounds(model, x, eps, pre=pre, data_space=True)
        inp, _, _ = local_mod.scan_local_bounds(model, u, eps * k, pre=pre, data_space=False)
        for a, b in zip(data, inp):
            assert a["fisher_upper"] == pytest.approx(k * k * b["fisher_upper"], rel=1e-6)
            assert a["lipschitz"] == pytest.approx(k * b["lipschitz"], rel=1e-6)


def _mixed_net(path: Path, seed: int = 0) -> Path:
    """Conv, BatchNorm, Clip (ReLU6), a residual Add, LeakyRelu, SiLU (Mul of two activations), Tanh, Erf,
    Softplus, HardSigmoid, AveragePool, overlapping MaxPool, Concat, Gemm: every kind of interval VJP rule."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.7).astype(np.float32))  # noqa: E731

    def init(name, arr):
        t = numpy_helper.from_array(np.asarray(arr, np.float32), name)
        return t

    inits = [init("k1", rng.standard_normal((3, 2, 3, 3)) * 0.5), init("c1", rng.standard_normal(3) * 0.2),
             init("bs", rng.uniform(0.5, 1.5, 3)), init("bb", rng.standard_normal(3) * 0.1),
             init("bm", rng.standard_normal(3) * 0.1), init("bv", rng.uniform(0.5, 1.5, 3)),
             init("k2", rng.standard_normal((3, 3, 3, 3)) * 0.4), init("lo", 0.0), init("hi", 6.0),
             init("w1", rng.standard_normal((8, 3 * 3 * 3 + 3 * 2 * 2)) * 0.4), init("b1", rng.standard_normal(8) * 0.1),
             init("w2", rng.standard_normal((4, 8)) * 0.8), init("b2", rng.standard_normal(4) * 0.1)]
    del w
    nodes = [
        helper.make_node("Conv", ["x", "k1", "c1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "bs", "bb", "bm", "bv"], ["b"]),
        helper.make_node("Clip", ["b", "lo", "hi"], ["c"]),
        helper.make_node("Conv", ["c", "k2"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "d"], ["e"]),
        helper.make_node("LeakyRelu", ["e"], ["f"], alpha=0.1),
        helper.make_node("Sigmoid", ["f"], ["fs"]),
        helper.make_node("Mul", ["f", "fs"], ["g"]),
        helper.make_node("Tanh", ["g"], ["h"]),
        helper.make_node("AveragePool", ["h"], ["i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["g"], ["gm"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Flatten", ["i"], ["fi"], axis=1),
        helper.make_node("Flatten", ["gm"], ["fg"], axis=1),
        helper.make_node("Concat", ["fi", "fg"], ["cat"], axis=1),
        helper.make_node("Gemm", ["cat", "w1", "b1"], ["j"], transB=1),
        helper.make_node("Softplus", ["j"], ["k"]),
        helper.make_node("Erf", ["k"], ["l"]),
        helper.make_node("HardSigmoid", ["l"], ["m"], alpha=0.4, beta=0.5),
        helper.make_node("Gemm", ["m", "w2", "b2"], ["z"], transB=1),
    ]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], inits)
    return B.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_mixed_operator_net_sound(tmp_path):
    path = _mixed_net(tmp_path / "mixed.onnx")
    g = _graph(path, (2, 6, 6))
    oracle = onnx_oracle(path, (2, 6, 6))
    rng = np.random.default_rng(2)
    for _ in range(2):
        x0 = rng.standard_normal((2, 6, 6))
        for eps in (0.0, 0.05, 0.3):
            lb = local_mod.local_bounds(g, InputSet.of(x0, eps))
            f, lip, _ = search(oracle, x0, eps, rng, random=24, starts=3, steps=10)
            assert f <= lb.fisher_upper and lip <= lb.lipschitz, (eps, f, lb.fisher_upper, lip, lb.lipschitz)
            if eps == 0.0:
                assert lb.lipschitz <= lip * 1.05  # at a generic point: tight up to the derivative kernels' margins


def test_broken_maxpool_routes_to_one_candidate(tmp_path, monkeypatch):
    """Routing each window's cotangent to the element with the largest lower bound only (as if it were always
    the max) misses the Jacobians where another element wins."""
    orig = ops.table()["MaxPool"].jacobian

    def first_only(ctx, node, adj, ins, out):
        x = ins[0]
        squeezed = Box(x.lo, np.maximum(x.lo, np.minimum(x.hi, x.lo)))  # forget the overlaps: point intervals
        return orig(ctx, node, adj, [squeezed] + list(ins[1:]), out)

    from fimaudit.verify.intervals import Box

    _patched(monkeypatch, "MaxPool", jacobian=first_only)
    assert _violations(tmp_path)


def _norm_softmax_net(path: Path, seed: int = 0) -> Path:
    """Gemm -> LayerNormalization -> Gemm -> Softmax (inside the graph) -> Gemm: the attention-style rules."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f = lambda name, *s, k=1.0: numpy_helper.from_array((rng.standard_normal(s) * k).astype(np.float32), name)  # noqa: E731
    inits = [f("w1", 8, 6, k=0.6), f("b1", 8, k=0.1), f("g", 8, k=1.0), f("be", 8, k=0.1), f("w2", 5, 8, k=0.8),
             f("b2", 5, k=0.1), f("w3", 4, 5, k=2.0), f("b3", 4, k=0.1)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], transB=1),
             helper.make_node("LayerNormalization", ["a", "g", "be"], ["b"], axis=-1, epsilon=1e-5),
             helper.make_node("Gemm", ["b", "w2", "b2"], ["c"], transB=1),
             helper.make_node("Softmax", ["c"], ["d"], axis=-1),
             helper.make_node("Gemm", ["d", "w3", "b3"], ["z"], transB=1)]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], inits)
    return B.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_layernorm_and_inner_softmax_sound(tmp_path):
    path = _norm_softmax_net(tmp_path / "ln.onnx")
    g = _graph(path, (6,))
    oracle = onnx_oracle(path, (6,))
    rng = np.random.default_rng(4)
    for _ in range(3):
        x0 = rng.standard_normal(6)
        for eps in (0.0, 0.05, 0.3):
            lb = local_mod.local_bounds(g, InputSet.of(x0, eps))
            f, lip, _ = search(oracle, x0, eps, rng, random=32, starts=3, steps=10)
            assert f <= lb.fisher_upper and lip <= lb.lipschitz, (eps, f, lb.fisher_upper, lip, lb.lipschitz)
            if eps == 0.0:
                assert lb.lipschitz <= lip * 1.05


def test_broken_softmax_rule_caught(tmp_path, monkeypatch):
    """Dropping the - sum_j g_j y_j term of the softmax VJP gives a wrong Jacobian: the eps = 0 bound falls
    below the gradient graph's |J|_2, or exceeds it by far."""
    path = _norm_softmax_net(tmp_path / "ln.onnx")

    def no_shift(ctx, node, adj, ins, out):
        return [adj.times(np.clip(out.lo, 0, 1), np.clip(out.hi, 0, 1))]

    _patched(monkeypatch, "Softmax", jacobian=no_shift)
    g = _graph(path, (6,))
    oracle = onnx_oracle(path, (6,))
    rng = np.random.default_rng(4)
    off = 0
    for _ in range(3):
        x0 = rng.standard_normal(6)
        lb = local_mod.local_bounds(g, InputSet.of(x0, 0.0))
        _, lip, _ = search(oracle, x0, 0.0, rng)
        off += not (lip <= lb.lipschitz <= lip * 1.05)
    assert off
