"""Gradient graphs: every derivative rule and every zoo model against float64 central differences.

The reference is independent of onnxruntime and of the rules: the same model converted to
float64 and evaluated by onnx's numpy reference evaluator, differentiated by central
differences with a small step (float64: error ~1e-9). The graphs run in float32.
"""

from __future__ import annotations

import dataclasses

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from scipy.special import erf

from fimaudit.autodiff import (
    GradientGraph,
    GraphEngine,
    build_gradient_source,
    build_graphs,
    check_graph,
    lanczos_top,
)
from fimaudit import ops
from fimaudit.autodiff.reference import float64_copy
from fimaudit.model import load_model

from .builders import linear_model, save

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=6, deadline=None, derandomize=True)
F32 = TensorProto.FLOAT


# ------------------------------------------------------------------------- references
to_float64 = float64_copy


class Erf(OpRun):
    """Erf in float64 (the reference evaluator's own Erf rounds through float32); matched by class name."""

    op_domain = ""

    def _run(self, x):
        return (erf(x).astype(x.dtype),)


def reference_logp(model: onnx.ModelProto, kind: str = "logits"):
    ev = ReferenceEvaluator(to_float64(model), new_ops=[Erf])
    name = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]

    def logp(x: np.ndarray) -> np.ndarray:
        z = np.asarray(ev.run(None, {name: np.asarray(x, np.float64)})[0], dtype=np.float64).reshape(x.shape[0], -1)
        if kind == "probabilities":
            z = np.log(z)
        return z - np.log(np.sum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1, keepdims=True)) - z.max(axis=1, keepdims=True)

    return logp


def reference_jvp(logp, x: np.ndarray, v: np.ndarray, h: float = 1e-6) -> np.ndarray:
    return (logp(x + h * v) - logp(x - h * v)) / (2 * h)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def graphs_of(model: onnx.ModelProto, sample_shape, kind: str = "logits", fixed_batch=None):
    x = model.graph.input[0]
    return build_graphs(model, input_name=x.name, output_name=model.graph.output[0].name, sample_shape=tuple(sample_shape),
                        fixed_batch=fixed_batch, kind=kind)


def assert_gradients(model: onnx.ModelProto, sample_shape, *, kind="logits", seed=0, rtol=2e-4, x=None, batch=2, reference=None):
    """S from K VJPs, S v from the forward graph and F v from the fused graph, against float64 central differences."""
    graphs = graphs_of(model, sample_shape, kind)
    engine = GraphEngine(graphs, device="cpu")
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal((batch,) + tuple(sample_shape))
    v = rng.standard_normal(x.shape)
    ref = reference_jvp(reference_logp(reference if reference is not None else model, kind), x, v)
    lp, s = engine.jacobians(x)
    from_vjp = np.einsum("nkd,nd->nk", s, v.reshape(x.shape[0], -1))
    _, from_jvp = engine.jvp(x, v)
    assert rel(from_vjp, ref) < rtol, ("reverse", rel(from_vjp, ref))
    assert rel(from_jvp, ref) < rtol, ("forward", rel(from_jvp, ref))
    _, _, fv = engine.fisher(x, v)
    p = np.exp(lp)
    want = np.einsum("nkd,nk->nd", s, p * from_vjp)
    assert rel(fv.reshape(want.shape), want) < 1e-4
    return engine


def single(nodes, inits, in_shape, out_name="y", opset=17, batch="N"):
    """A model with input x (batch, *in_shape) and output ``out_name``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, [batch] + list(in_shape))],
        [helper.make_tensor_value_info(out_name, F32, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


# ------------------------------------------------------------------------- rules
@FAST
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.sampled_from([1, 2]),
       st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), st.integers(0, 10**6))
def test_conv_rule(dims, stride, k, pad, dil, group, auto, seed):
    rng = np.random.default_rng(seed)
    size = 9 if dims == 2 else 13
    c, m = 2, 4
    if auto.startswith("SAME"):
        dil = 1  # onnxruntime has no dilated SAME convolution
    attrs = {"strides": [stride] * dims, "dilations": [dil] * dims, "group": group}
    if auto == "NOTSET":
        attrs["pads"] = [pad] * (2 * dims)
    else:
        attrs["auto_pad"] = auto
    w = rng.standard_normal((m, c // group) + (k,) * dims) * 0.5
    model = single([helper.make_node("Conv", ["x", "W", "B"], ["y"], **attrs)],
                   [init("W", w), init("B", rng.standard_normal(m))], [c] + [size] * dims)
    assert_gradients(model, [c] + [size] * dims, seed=seed)


def test_conv_stride_larger_than_kernel():
    """Stride 4, kernel 3 (the case onnx-ad 0.3.0 gets wrong): inputs no window reads get zero gradient."""
    rng = np.random.default_rng(3)
    model = single([helper.make_node("Conv", ["x", "W"], ["y"], strides=[4, 4], pads=[1, 1, 1, 1])],
                   [init("W", rng.standard_normal((3, 1, 3, 3)))], [1, 14, 14])
    assert_gradients(model, [1, 14, 14])


@FAST
@given(st.integers(1, 2), st.integers(2, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 1), st.integers(1, 2),
       st.integers(0, 10**6))
def test_maxpool_rule(dims, k, stride, pad, ceil, dil, seed):
    size = 8 if dims == 2 else 11
    model = single([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k] * dims, strides=[stride] * dims,
                                     pads=[pad] * (2 * dims), ceil_mode=ceil, dilations=[dil] * dims)], [],
                   [2] + [size] * dims)
    assert_gradients(model, [2] + [size] * dims, seed=seed)


@pytest.mark.parametrize("k, size, ceil", [(2, 8, 0), (2, 7, 1), (2, 7, 0), (3, 8, 0), (3, 8, 1)])
def test_maxpool_non_overlapping_tiles(k, size, ceil):
    """Stride = kernel, no padding: the tile path (partial tiles with ceil_mode, unread rows without)."""
    model = single([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[k, k], ceil_mode=ceil)], [],
                   [3, size, size])
    assert_gradients(model, [3, size, size])


@pytest.mark.parametrize("k, stride", [(2, 2), (3, 2)])
def test_maxpool_ties_give_each_window_one_subgradient(k, stride):
    """Exact ties (a constant image): each window's cotangent goes to exactly one of its elements."""
    model = single([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[stride, stride])], [], [1, 6, 6])
    engine = GraphEngine(graphs_of(model, [1, 6, 6]), device="cpu")
    x = np.zeros((1, 1, 6, 6))
    u = np.random.default_rng(0).standard_normal((1, engine.n_classes))
    _, g = engine.vjp(x, u)
    lp = engine.logp(x)
    # The cotangent reaching the pooled values is u - softmax * sum(u) (through the log-softmax head).
    gy = u - np.exp(lp) * u.sum()
    assert np.isclose(g.sum(), gy.sum(), atol=1e-5)
    assert np.count_nonzero(np.abs(g) > 1e-9) <= engine.n_classes
    if k == stride:
        assert np.count_nonzero(np.abs(g) > 1e-9) == engine.n_classes


@FAST
@given(st.integers(1, 2), st.integers(2, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1),
       st.integers(0, 10**6))
def test_average_pool_rule(dims, k, stride, pad, include, ceil, seed):
    size = 7 if dims == 2 else 10
    model = single([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[k] * dims, strides=[stride] * dims,
                                     pads=[pad] * (2 * dims), count_include_pad=include, ceil_mode=ceil)], [],
                   [2] + [size] * dims)
    assert_gradients(model, [2] + [size] * dims, seed=seed)


def test_global_average_pool_and_batchnorm():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Tanh", ["n"], ["t"]), helper.make_node("GlobalAveragePool", ["t"], ["y"])]
    inits = [init("s", rng.standard_normal(3)), init("b", rng.standard_normal(3)), init("m", rng.standard_normal(3)),
             init("v", rng.uniform(0.5, 2, 3))]
    assert_gradients(single(nodes, inits, [3, 5, 5]), [3, 5, 5])


@FAST
@given(st.integers(0, 1), st.integers(0, 1), st.floats(0.5, 2.0), st.floats(0.0, 1.5), st.sampled_from(["row", "full", "scalar"]),
       st.integers(0, 10**6))
def test_gemm_rule(ta, tb, alpha, beta, cshape, seed):
    rng = np.random.default_rng(seed)
    d, k = 6, 5
    w = rng.standard_normal((d, k) if not tb else (k, d))
    c = {"row": rng.standard_normal(k), "full": rng.standard_normal((1, k)), "scalar": rng.standard_normal(())}[cshape]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0])] if ta else []
    nodes.append(helper.make_node("Gemm", ["xt" if ta else "x", "W", "C"], ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta))
    if ta:
        # transA needs A as (d, batch): feed the transpose of a fixed-batch input.
        model = single(nodes, [init("W", w), init("C", c)], [d], batch=3)
        graphs_x = rng.standard_normal((3, d))
        graphs = graphs_of(model, [d], fixed_batch=3)
        engine = GraphEngine(graphs, device="cpu")
        v = rng.standard_normal(graphs_x.shape)
        ref = reference_jvp(reference_logp(model), graphs_x, v)
        assert rel(engine.jvp(graphs_x, v)[1], ref) < 2e-4
        u = rng.standard_normal(ref.shape)
        assert abs(np.sum(engine.vjp(graphs_x, u)[1] * v) - np.sum(u * ref)) < 2e-4 * np.linalg.norm(u) * np.linalg.norm(ref)
    else:
        assert_gradients(single(nodes, [init("W", w), init("C", c)], [d]), [d], seed=seed)


def test_matmul_both_operands_active_and_broadcast():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]),  # (B, 3, 4) @ (4, 4)
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["a", "xt"], ["s"]),  # both active
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    assert_gradients(single(nodes, [init("W", rng.standard_normal((4, 4)))], [3, 4]), [3, 4])


UNARY = ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign", "Erf", "Exp", "Abs", "Neg",
         "HardSigmoid", "HardSwish", "Sin", "Cos"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_rules(op):
    model = single([helper.make_node("Gemm", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"])],
                   [init("W", np.random.default_rng(0).standard_normal((5, 6)) * 2)], [5])
    assert_gradients(model, [5], x=np.random.default_rng(1).standard_normal((3, 5)))


def test_prelu_rule():
    rng = np.random.default_rng(3)
    model = single([helper.make_node("Gemm", ["x", "W"], ["h"]), helper.make_node("PRelu", ["h", "slope"], ["y"])],
                   [init("W", rng.standard_normal((5, 6))), init("slope", rng.uniform(0.05, 0.5, 6))], [5])
    assert_gradients(model, [5])


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_positive_domain_rules(op):
    model = single([helper.make_node("Exp", ["x"], ["e"]), helper.make_node(op, ["e"], ["y"])], [], [6])
    assert_gradients(model, [6])


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_rule(opset):
    if opset >= 11:
        node, inits = helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), [init("lo", -0.5), init("hi", 0.7)]
    else:
        node, inits = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.7), []
    assert_gradients(single([node], inits, [8], opset=opset), [8])


def test_gelu_forms_and_pow():
    s2 = 1 / np.sqrt(2)
    erf_form = [helper.make_node("Mul", ["x", "c"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
                helper.make_node("Add", ["e", "one"], ["f"]), helper.make_node("Mul", ["x", "f"], ["g"]),
                helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [init("c", s2), init("one", 1.0), init("half", 0.5)]
    assert_gradients(single(erf_form, inits, [7]), [7])
    tanh_form = [helper.make_node("Pow", ["x", "three"], ["x3"]), helper.make_node("Mul", ["x3", "k"], ["a"]),
                 helper.make_node("Add", ["x", "a"], ["b"]), helper.make_node("Mul", ["b", "r"], ["c2"]),
                 helper.make_node("Tanh", ["c2"], ["t"]), helper.make_node("Add", ["t", "one"], ["f"]),
                 helper.make_node("Mul", ["x", "f"], ["g"]), helper.make_node("Mul", ["g", "half"], ["y"])]
    inits = [init("three", 3.0), init("k", 0.044715), init("r", np.sqrt(2 / np.pi)), init("one", 1.0), init("half", 0.5)]
    assert_gradients(single(tanh_form, inits, [7]), [7])


BROADCAST_SHAPES = [(3, 4, 5), (1, 4, 1), (5,), (4, 1), (1, 1, 5), ()]


@FAST
@given(st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Min"]), st.sampled_from(BROADCAST_SHAPES), st.booleans(),
       st.lists(st.integers(1, 3), max_size=3, unique=True), st.integers(0, 10**6))
def test_broadcasting_binary_rules(op, shape, swap, reduce_axes, seed):
    """x (B, 3, 4, 5) against a constant of a broadcastable shape, or against an active operand with size-1 axes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if reduce_axes:
        # The smaller operand depends on x too: its cotangent must be summed back to its shape.
        nodes.append(helper.make_node("ReduceMean", ["x"], ["r"], axes=sorted(reduce_axes), keepdims=1))
        nodes.append(helper.make_node("Sin", ["r"], ["small"]))
    else:
        inits.append(init("small", rng.uniform(0.5, 1.5, shape)))
    a, b = ("small", "x") if swap else ("x", "small")
    if op == "Div":
        nodes.append(helper.make_node("Exp", [b], [b + "_p"]))
        b = b + "_p"
    nodes.append(helper.make_node(op, [a, b], ["y"]))
    assert_gradients(single(nodes, inits, [3, 4, 5]), [3, 4, 5], seed=seed)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [9, 13])
def test_pad_rule(mode, opset):
    pads = [0, 0, 2, 1, 0, 0, 1, 3]
    if opset >= 11:
        node, inits = helper.make_node("Pad", ["x", "p", "cv"], ["y"], mode=mode), [init("p", pads, np.int64), init("cv", 0.5)]
    else:
        node, inits = helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=0.5), []
    assert_gradients(single([node], inits, [2, 5, 6], opset=opset), [2, 5, 6])


def test_shape_operators():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Split", ["t", "sp"], ["a", "b"], axis=1),
        helper.make_node("Slice", ["a", "st", "en", "ax", "stp"], ["s"]),
        helper.make_node("Gather", ["b", "gi"], ["g"], axis=3),
        helper.make_node("Flatten", ["s"], ["sf"], axis=1),
        helper.make_node("Reshape", ["g", "rs"], ["gf"]),
        helper.make_node("Unsqueeze", ["gf", "ua"], ["gu"]),
        helper.make_node("Squeeze", ["gu", "ua"], ["gs"]),
        helper.make_node("Concat", ["sf", "gs", "sf"], ["c"], axis=1),
        helper.make_node("Expand", ["c", "ex"], ["e"]),
        helper.make_node("ReduceSum", ["e", "rax"], ["y"], keepdims=0),
        helper.make_node("Identity", ["x"], ["unused"]),
    ]
    inits = [init("sp", [2, 3], np.int64), init("st", [0, 5], np.int64), init("en", [2, 0], np.int64),
             init("ax", [1, 3], np.int64), init("stp", [1, -2], np.int64), init("gi", [[0, 3], [3, 1]], np.int64),
             init("rs", [0, -1], np.int64), init("ua", [2], np.int64), init("ex", [2, 1, 1], np.int64),
             init("rax", [0], np.int64)]
    del rng
    assert_gradients(single(nodes, inits, [4, 5, 6]), [4, 5, 6])


def test_where_dropout_cast_sum_and_scalar_gather():
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["c"]),
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Where", ["c", "sq", "x"], ["w"]),
        helper.make_node("Dropout", ["w"], ["d"]),
        helper.make_node("Cast", ["d"], ["cd"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["cd", "i0"], ["g0"], axis=1),
        helper.make_node("Unsqueeze", ["g0", "one"], ["g1"]),
        helper.make_node("Sum", ["cd", "g1", "x"], ["y"]),
    ]
    inits = [init("zero", 0.0), init("i0", 2, np.int64), init("one", [1], np.int64)]
    assert_gradients(single(nodes, inits, [6]), [6])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1, 2])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_rules(op, axis, opset):
    model = single([helper.make_node(op, ["x"], ["y"], axis=axis)], [], [3, 4], opset=opset)
    reference = None
    if opset < 13 and axis == 1:
        # Before opset 13 the input is coerced to 2-D at the axis (normalised over axes 1 and 2);
        # the reference evaluator implements only the per-axis form, so the reference says it
        # explicitly: flatten, normalise, reshape back.
        nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node(op, ["f"], ["s"], axis=-1),
                 helper.make_node("Reshape", ["s", "shape"], ["y"])]
        reference = single(nodes, [init("shape", [0, 3, 4], np.int64)], [3, 4], opset=13)
    assert_gradients(model, [3, 4], kind="probabilities" if op == "Softmax" else "logits", reference=reference)


@FAST
# axes drawn non-empty: reducing every axis (batch included) leaves no per-sample score to check, and an example
# that asserts nothing used to pass silently
@given(st.sampled_from(["ReduceMean", "ReduceSum"]), st.lists(st.integers(1, 3), min_size=1, max_size=2, unique=True),
       st.integers(0, 1), st.sampled_from([11, 17]))
def test_reduce_rules(op, axes, keep, opset):
    if op == "ReduceSum" and opset >= 13:
        node = helper.make_node(op, ["x", "ax"], ["y"], keepdims=keep)
        inits = [init("ax", axes, np.int64)]
    else:
        node = helper.make_node(op, ["x"], ["y"], keepdims=keep, axes=axes)
        inits = []
    model = single([helper.make_node("Tanh", ["x"], ["tx"])] + [node], inits, [3, 4, 5], opset=opset)
    model.graph.node[1].input[0] = "tx"
    assert_gradients(model, [3, 4, 5])


@pytest.mark.parametrize("axis", [-1, -2])
def test_layernorm_rule_and_decomposed(axis):
    rng = np.random.default_rng(5)
    shp = [4, 6] if axis == -1 else [4 * 6]
    g = rng.standard_normal(6 if axis == -1 else (4, 6))
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=1e-3)]
    model = single(nodes, [init("g", g), init("b", rng.standard_normal(np.shape(g)))], [4, 6])
    assert_gradients(model, [4, 6])
    del shp
    dec = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]), helper.make_node("Sub", ["x", "m"], ["c"]),
           helper.make_node("Pow", ["c", "two"], ["c2"]), helper.make_node("ReduceMean", ["c2"], ["v"], axes=[-1]),
           helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
           helper.make_node("Div", ["c", "s"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
           helper.make_node("Add", ["ng", "b"], ["y"])]
    inits = [init("two", 2.0), init("eps", 1e-3), init("g", rng.standard_normal(6)), init("b", rng.standard_normal(6))]
    assert_gradients(single(dec, inits, [4, 6]), [4, 6])


def test_probability_outputs_and_opset9_gemm():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W", "b"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    model = single(nodes, [init("W", rng.standard_normal((4, 6))), init("b", rng.standard_normal(4))], [2, 3], opset=9)
    assert_gradients(model, [2, 3], kind="probabilities")


@pytest.mark.parametrize("mode, ctm", [("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners"),
                                       ("cubic", "pytorch_half_pixel"), ("nearest", "half_pixel")])
@pytest.mark.parametrize("by", ["scales", "sizes"])
def test_resize_rule(mode, ctm, by):
    if by == "scales" and ctm == "align_corners":
        pytest.skip("onnxruntime and onnx's reference evaluator disagree on align_corners with a fractional scale")
    if by == "scales":
        node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
        inits = [init("sc", [1.0, 1.0, 2.0, 1.5])]
    else:
        node = helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
        inits = [init("sz", [2, 2, 7, 3], np.int64)]
    model = single([node], inits, [2, 4, 5], batch=2)
    assert_gradients(model, [2, 4, 5], batch=2)


def test_upsample_opset9():
    model = single([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="nearest")],
                   [init("sc", [1.0, 1.0, 2.0, 3.0])], [2, 3, 4], opset=9)
    assert_gradients(model, [2, 3, 4])


# ------------------------------------------------------------------------- sources, checks
def test_linear_model_exact_against_closed_form(tmp_path):
    rng = np.random.default_rng(7)
    k, d = 5, 12
    w, b = rng.standard_normal((k, d)), rng.standard_normal(k)
    model = load_model(save(linear_model(w, b), tmp_path / "lin.onnx"), device="cpu")
    x = rng.standard_normal((2, d))
    choice = build_gradient_source(model, "logits", "auto", x, np.random.default_rng(0))
    assert choice.source == "graph" and choice.check.passed
    src = choice.at(x[0])
    z = w @ x[0] + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    s_ref = (np.eye(k) - p[None, :].T @ np.ones((1, k))).T @ w if False else w - p @ w
    assert rel(src.full_jacobian(), s_ref) < 1e-4
    g = np.sqrt(p)[:, None] * (s_ref @ s_ref.T) * np.sqrt(p)[None, :]
    lam = np.linalg.eigvalsh(g)[-1]
    lr = lanczos_top(choice.at(x[0]), np.random.default_rng(1), tol=1e-10)
    assert abs(lr.eigenvalues[0] - lam) <= 1e-4 * lam
    # Preprocessing u = 2x - 1: S_x = 2 S_u.
    pre = choice.at((x[0] + 1) / 2, to_input=lambda r: 2 * r - 1, input_scale=2.0)
    assert rel(pre.full_jacobian(), 2 * s_ref) < 1e-4
    v, u = rng.standard_normal((3, d)), rng.standard_normal((2, k))
    assert rel(pre.jvp(v), v @ (2 * s_ref).T) < 1e-4 and rel(choice.at(x[0]).vjp(u), u @ s_ref) < 1e-4


def _conv_net():
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["m1", "W2"], ["c2"], strides=[2, 2]), helper.make_node("Tanh", ["c2"], ["t2"]),
             helper.make_node("Flatten", ["t2"], ["f"]), helper.make_node("Gemm", ["f", "W3"], ["y"], transB=1)]
    inits = [init("W1", rng.standard_normal((4, 1, 3, 3))), init("W2", rng.standard_normal((4, 4, 3, 3)) * 0.3),
             init("W3", rng.standard_normal((5, 16)))]
    return single(nodes, inits, [1, 10, 10])


@pytest.mark.parametrize("op, mode", [("Relu", "reverse"), ("Conv", "forward"), ("MaxPool", "reverse")])
def test_self_check_refuses_a_broken_rule_and_names_it(monkeypatch, op, mode):
    hook = "vjp" if mode == "reverse" else "jvp"
    good = getattr(ops.table()[op], hook)
    calls = []

    def broken(em, node, g):
        # A sign flipped at the first node of this type only (two flips along a chain would cancel).
        out = good(em, node, g)
        calls.append(node.name)
        if len(calls) > 1:
            return out
        return [em.op("Neg", [o]) if o is not None and i == 0 else o for i, o in enumerate(out)]

    monkeypatch.setitem(ops.table(), op, dataclasses.replace(ops.table()[op], **{hook: broken}))
    model = _conv_net()
    engine = GraphEngine(graphs_of(model, [1, 10, 10]), device="cpu")
    x = np.random.default_rng(9).standard_normal((2, 1, 10, 10))
    check = check_graph(engine, x, np.random.default_rng(0))
    assert not check.passed
    assert check.suspect is not None and check.suspect.startswith(op), check.suspect
    assert op in check.reason


@pytest.mark.parametrize("op, mode", [("LayerNormalization", "reverse"), ("Softmax", "forward")])
def test_self_check_names_the_broken_rule_in_a_transformer(monkeypatch, op, mode):
    hook = "vjp" if mode == "reverse" else "jvp"
    good = getattr(ops.table()[op], hook)

    def broken(em, node, g):
        out = good(em, node, g)
        return [em.op("Neg", [out[0]])] + list(out[1:])

    monkeypatch.setitem(ops.table(), op, dataclasses.replace(ops.table()[op], **{hook: broken}))
    model = load_model(ROOT / "sample_models" / "vit_tiny.onnx", device="cpu")
    graphs = build_graphs(model.proto, input_name=model.info.input.name, output_name=model.info.output.name,
                          sample_shape=model.info.sample_shape, fixed_batch=None, kind="logits")
    check = check_graph(GraphEngine(graphs, device="cpu"), np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)),
                        np.random.default_rng(0))
    assert not check.passed and check.suspect is not None and check.suspect.startswith(op), check.suspect


def _relu_net_at_kinks():
    """A ReLU MLP whose samples each sit 2^-17 from one hidden unit's kink, with every value exact in float32.

    Integer inputs and first-layer weights make each pre-activation an exact float32 number, so
    the kink's distance does not depend on any CPU's rounding: 2^-17 is far below the float32
    check's smallest step (1e-4 of the input RMS, times |w.v| ~ 1: every one of its steps
    crosses the kink, and central differences average the two slopes, off by O(1)) and far
    above the float64 check's smallest step (1e-7 of the RMS): float64 settles it.
    """
    rng = np.random.default_rng(5)
    d, hidden, k = 6, 6, 3
    x = rng.integers(-2, 3, size=(2, d)).astype(np.float64)
    w1 = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(hidden, d))
    pre = x @ w1.T  # exact integers
    b1 = 0.5 - pre[0]  # pre-activations at sample 0: 0.5; the other sample's differ by integers
    kink = 2.0**-17
    b1[0], b1[1] = kink - pre[0, 0], kink - pre[1, 1]  # unit 0 at sample 0's kink, unit 1 at sample 1's
    at = x @ w1.T + b1
    assert abs(at[0, 0] - kink) == 0 and abs(at[1, 1] - kink) == 0
    far = np.abs(at) > 0.25
    far[0, 0] = far[1, 1] = True
    assert far.all()  # every other unit is a quarter away from its kink
    w2 = 2.0 * rng.standard_normal((k, hidden))
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1)]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "W1"), numpy_helper.from_array(b1.astype(np.float32), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "W2"), numpy_helper.from_array(np.zeros(k, np.float32), "b2")]
    assert np.array_equal(b1.astype(np.float32).astype(np.float64), b1)  # the kink distance survives float32
    model = helper.make_model(
        helper.make_graph(nodes, "kinks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    return model, x


def test_self_check_second_opinion_near_kinks():
    """Samples a hair from a ReLU kink: float32 central differences refuse a correct graph, float64 settles it."""
    model, x = _relu_net_at_kinks()
    engine = GraphEngine(graphs_of(model, [6]), device="cpu")
    alone = check_graph(engine, x, np.random.default_rng(0), second_opinion=False, bisect=False)
    settled = check_graph(engine, x, np.random.default_rng(0))
    assert not alone.passed  # float32 central differences alone refuse a correct graph here
    assert settled.passed and "float64" in settled.second_opinion and "refused rows agree" in settled.second_opinion
    assert settled.verified == settled.rows


def test_self_check_passes_the_intact_graph():
    engine = GraphEngine(graphs_of(_conv_net(), [1, 10, 10]), device="cpu")
    check = check_graph(engine, np.random.default_rng(9).standard_normal((2, 1, 10, 10)), np.random.default_rng(0))
    assert check.passed and check.suspect is None and check.jvp_error < check.tolerance


def test_unsupported_operator_falls_back_with_its_name(tmp_path):
    nodes = [helper.make_node("CumSum", ["x", "ax"], ["c"]), helper.make_node("Identity", ["c"], ["y"])]
    model = single(nodes, [init("ax", 1, np.int64)], [6])
    loaded = load_model(save(model, tmp_path / "cumsum.onnx"), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 6))
    choice = build_gradient_source(loaded, "logits", "auto", x, np.random.default_rng(0))
    assert choice.source == "fd" and "CumSum" in choice.reason
    from fimaudit.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="CumSum"):
        build_gradient_source(loaded, "logits", "graph", x, np.random.default_rng(0))
    assert build_gradient_source(loaded, "logits", "fd", x, np.random.default_rng(0)).engine is None


def test_source_follows_the_protocol_shapes():
    engine = GraphEngine(graphs_of(_conv_net(), [1, 10, 10]), device="cpu")
    x0 = np.random.default_rng(1).standard_normal(100)
    src = GradientGraph(engine, x0)
    v = np.random.default_rng(2).standard_normal((3, 100))
    sv = src.jvp(v)
    assert sv.shape == (3, 5) and src.vjp(np.eye(5)).shape == (5, 100)
    before = src.queries
    s = src.full_jacobian()
    assert src.queries == before + 4 and rel(sv, v @ s.T) < 1e-5  # K - 1 VJPs: pᵀS = 0 gives the fifth row
    assert src.jacobian(np.array([3, 7])).shape == (2, 5)
    fv = src.fisher_matvec(v[:1])
    assert rel(fv, ((v[:1] @ s.T) * src.p) @ s) < 1e-4


def test_gradient_graph_is_a_jacobian_source_for_the_estimators(tmp_path):
    """The estimators take it like FiniteDifferences; exact agrees with the closed form on a linear model."""
    from fimaudit.estimators.core import exact
    from fimaudit.estimators.source import FiniteDifferences, JacobianSource
    from fimaudit.model import LogProbOracle

    rng = np.random.default_rng(12)
    k, d = 4, 10
    w, b = rng.standard_normal((k, d)), rng.standard_normal(k)
    model = load_model(save(linear_model(w, b), tmp_path / "lin.onnx"), device="cpu")
    x0 = rng.standard_normal(d)
    choice = build_gradient_source(model, "logits", "graph", x0[None], np.random.default_rng(0))
    src = choice.at(x0)
    assert isinstance(src, JacobianSource)
    z = w @ x0 + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    s_ref = w - p @ w
    lam = np.linalg.eigvalsh(np.sqrt(p)[:, None] * (s_ref @ s_ref.T) * np.sqrt(p)[None, :])[-1]
    est = exact(src)
    assert abs(est.lambda_max - lam) <= 1e-4 * lam and src.queries == (k - 1) + 1  # K - 1 VJPs, one JVP for the bound
    fd = exact(FiniteDifferences(LogProbOracle(model, "logits"), x0, 1e-2))
    assert abs(fd.lambda_max - lam) <= 1e-3 * lam


# ------------------------------------------------------------------------- the zoo and the corpus
def _zoo():
    files = sorted(glob.glob(str(ROOT / "sample_models" / "*.onnx")))
    corpus = os.environ.get("FIMAUDIT_REALMODELS")
    if corpus:
        files += sorted(glob.glob(os.path.join(corpus, "*.onnx")))
    return files


@pytest.mark.parametrize("path", _zoo(), ids=lambda p: Path(p).stem)
def test_zoo_gradient_graph_against_float64_central_differences(path):
    model = load_model(path, device="cpu")
    kind = "probabilities" if model.info.final_op == "Softmax" else "logits"
    rng = np.random.default_rng(11)
    shape = model.info.sample_shape
    # A dithered point in the model's usual input range: no exact ties, no kink within the step.
    x = rng.uniform(0.0, 1.0, (2,) + shape) + 1e-3 * rng.standard_normal((2,) + shape)
    proto = model.proto
    graphs = build_graphs(proto, input_name=model.info.input.name, output_name=model.info.output.name, sample_shape=shape,
                          fixed_batch=model.info.fixed_batch, kind=kind)
    engine = GraphEngine(graphs, device="cpu")
    v = rng.standard_normal(x.shape)
    ref_logp = reference_logp(proto, kind)
    lp, s = engine.jacobians(x)
    from_vjp = np.einsum("nkd,nd->nk", s, v.reshape(2, -1))
    from_jvp = engine.jvp(x, v)[1]
    # A ReLU unit whose pre-activation lies within the step of its kink biases central
    # differences by an amount that vanishes with the step: each row must agree at one of
    # three shrinking steps (float64 keeps the rounding error ~1e-8 even at the smallest).
    for i in range(2):
        errors = []
        for h in (1e-6, 1e-7, 1e-8):
            ref = reference_jvp(ref_logp, x[i:i + 1], v[i:i + 1], h)[0]
            scale = np.linalg.norm(ref) + 1e-4 * np.linalg.norm(s[i]) * np.linalg.norm(v[i]) + 1e-12
            errors.append(max(np.linalg.norm(from_vjp[i] - ref), np.linalg.norm(from_jvp[i] - ref)) / scale)
            if errors[-1] < 1e-4:
                break
        assert min(errors) < 1e-4, errors


def _tiny_linear(tmp_path, monkeypatch=None):
    """Logits of order 1e-6 * x: float32 central differences cancel at every step, float64 ones do not."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 30)) * 1e-6
    model = load_model(save(linear_model(w, np.zeros(4)), tmp_path / "tiny.onnx"), device="cpu")
    graphs = build_graphs(model.proto, input_name=model.info.input.name, output_name=model.info.output.name,
                          sample_shape=model.info.sample_shape, fixed_batch=None, kind="logits")
    return GraphEngine(graphs, device="cpu"), rng.uniform(0, 1, (2, 30))


def test_self_check_asks_float64_when_float32_cannot_judge_any_row(tmp_path):
    engine, x = _tiny_linear(tmp_path)
    alone = check_graph(engine, x, np.random.default_rng(0), second_opinion=False, bisect=False)
    # no evidence either way: inconclusive, never a pass (a graph of zeros would "pass" against zero differences)
    assert not alone.passed and alone.status == "inconclusive" and alone.inconclusive == alone.rows
    assert alone.verified == 0 and "could be verified" in alone.reason
    settled = check_graph(engine, x, np.random.default_rng(0))
    assert settled.passed and settled.verified == settled.rows and "could not judge agree" in settled.second_opinion
    from fimaudit.report.terminal import _gradients_text

    assert "inconclusive" in _gradients_text({"source": "graph", "check": alone.to_dict()})
    assert "passed on 6 of 6" in _gradients_text({"source": "graph", "check": settled.to_dict()})


def flip_gemm_vjp(monkeypatch) -> None:
    """A broken reverse rule: Gemm's VJP with its sign flipped (a wrong rule every check must refuse)."""
    good = ops.table()["Gemm"].vjp

    def broken(em, node, g):
        out = good(em, node, g)
        return [em.op("Neg", [out[0]])] + list(out[1:])

    monkeypatch.setitem(ops.table(), "Gemm", dataclasses.replace(ops.table()["Gemm"], vjp=broken))


def test_self_check_refuses_a_broken_graph_float32_cannot_judge(tmp_path, monkeypatch):
    flip_gemm_vjp(monkeypatch)
    engine, x = _tiny_linear(tmp_path)
    check = check_graph(engine, x, np.random.default_rng(0))
    assert not check.passed and check.verified == 0 and "reverse" in check.reason


@pytest.mark.parametrize("given", ["right", "wrong"])
def test_jacobians_from_k_minus_one_vjps_equal_all_k(given):
    """pᵀS = 0 rebuilds the most probable class's row; a p that is not the point's own falls back to its VJP."""
    engine = GraphEngine(graphs_of(_conv_net(), [1, 10, 10]), device="cpu")
    x = np.random.default_rng(12).standard_normal((3, 1, 10, 10))
    lp, full = engine.jacobians(x)
    p = np.exp(lp) if given == "right" else np.tile(np.eye(5)[np.argmin(lp[0])], (3, 1))
    rows = engine.rows
    lp2, reduced = engine.jacobians(x, p)
    assert rel(reduced, full) < 1e-5 and rel(lp2, lp) < 1e-6
    assert engine.rows - rows == (3 * 4 if given == "right" else 3 * 4 + 3)
