"""The float64 second opinion in onnxruntime against onnx's numpy reference evaluator (both double precision).

``Float64Logp`` runs the self-check's float64 copy in onnxruntime after rewriting the
operators onnxruntime has no double kernel for (``reference.float64_model``); the reference
evaluator computes every operator in double itself and is the independent answer here. The
two agree to rounding (1e-12 relative) on every rewrite and on the sample models, or the
onnxruntime path says why it does not run (and the check uses the reference evaluator).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fimaudit.autodiff import GraphEngine, build_graphs, check_graph
from fimaudit.autodiff.reference import Float64Logp, float64_model
from fimaudit.model import load_model

from .builders import linear_model, mobile_model, mobile_weights, save

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=6, deadline=None, derandomize=True)
F32 = TensorProto.FLOAT


def single(nodes, inits, in_shape, opset=17, batch="N"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [batch] + list(in_shape))],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 13 else 8
    return m


def init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def graphs_of(model: onnx.ModelProto, sample_shape, kind="logits", fixed_batch=None):
    return build_graphs(model, input_name=model.graph.input[0].name, output_name=model.graph.output[0].name,
                        sample_shape=tuple(sample_shape), fixed_batch=fixed_batch, kind=kind)


def agree(model: onnx.ModelProto, sample_shape, *, kind="logits", rows=3, seed=0, scale=2.0, fixed_batch=None) -> Float64Logp:
    """Both evaluators on the graph's log p at random rows: onnxruntime ran, and agrees to 1e-12."""
    graphs = graphs_of(model, sample_shape, kind, fixed_batch)
    x = np.random.default_rng(seed).standard_normal((rows,) + tuple(sample_shape)) * scale
    ours = Float64Logp(graphs.logp_model, graphs.input_name, graphs.shapes, weights=graphs.weights)
    assert ours.evaluator == "onnxruntime", ours.fallback
    ref = Float64Logp(graphs.complete(graphs.logp_model), graphs.input_name, prefer="reference")
    assert ref.evaluator == "reference evaluator"
    a, b = ours(x), ref(x)
    assert a.shape == b.shape == (rows, graphs.n_classes)
    assert np.max(np.abs(a - b)) <= 1e-12 * (np.max(np.abs(b)) + 1.0), np.max(np.abs(a - b))
    # Central differences with a tiny step resolve the same derivative in both (float32 could not).
    v = np.random.default_rng(seed + 1).standard_normal(x.shape)
    h = 1e-7
    fa = (ours(x + h * v) - ours(x - h * v)) / (2 * h)
    fb = (ref(x + h * v) - ref(x - h * v)) / (2 * h)
    assert np.linalg.norm(fa - fb) <= 1e-6 * (np.linalg.norm(fb) + 1e-3)
    return ours


# ------------------------------------------------------------------------- the rewrites
@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.sampled_from([1, 2]),
       st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), st.booleans(), st.integers(0, 10**6))
def test_conv_rewrite(dims, stride, k, pad, dil, group, auto, bias, seed):
    rng = np.random.default_rng(seed)
    size = {1: 13, 2: 9, 3: 5}[dims]
    c, m = 2, 4
    if auto.startswith("SAME"):
        dil = 1  # onnxruntime has no dilated SAME convolution
    attrs = {"strides": [stride] * dims, "dilations": [dil] * dims, "group": group}
    if auto == "NOTSET":
        attrs["pads"] = [pad] * (2 * dims)
    else:
        attrs["auto_pad"] = auto
    inits = [init("W", rng.standard_normal((m, c // group) + (k,) * dims))]
    if bias:
        inits.append(init("B", rng.standard_normal(m)))
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], **attrs)
    agree(single([node], inits, [c] + [size] * dims), [c] + [size] * dims, seed=seed)


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (2, 0)])
def test_depthwise_conv_rewrite(stride, pad):
    rng = np.random.default_rng(4)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], group=3, strides=[stride, stride], pads=[pad] * 4)
    model = single([node], [init("W", rng.standard_normal((3, 1, 3, 3))), init("B", rng.standard_normal(3))], [3, 8, 8])
    agree(model, [3, 8, 8])


@pytest.mark.parametrize("opset", [9, 10])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 3), (3, 1), (2, 3)])
def test_conv_rewrite_before_stepped_slices(opset, kernel):
    """Opset 9 has no stepped Slice: the windows come from Gather index tables instead."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], strides=[2, 1], pads=[1, 0, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=list(kernel),
                              pads=[0, min(1, kernel[1] - 1), min(1, kernel[0] - 1), 0]),
             helper.make_node("Flatten", ["a"], ["y"])]
    agree(single(nodes, [init("W", rng.standard_normal((3, 2) + kernel))], [2, 7, 7], opset=opset), [2, 7, 7])


@FAST
@given(st.integers(1, 2), st.integers(2, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1),
       st.integers(0, 10**6))
def test_average_pool_rewrite(dims, k, stride, pad, include, ceil, seed):
    size = 7 if dims == 2 else 10
    model = single([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[k] * dims, strides=[stride] * dims,
                                     pads=[pad] * (2 * dims), count_include_pad=include, ceil_mode=ceil)], [],
                   [2] + [size] * dims)
    agree(model, [2] + [size] * dims, seed=seed)


@pytest.mark.parametrize("op, attrs, opset", [
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17), ("HardSwish", {}, 17), ("Elu", {"alpha": 0.7}, 17),
    ("Selu", {}, 17), ("Softplus", {}, 17), ("Softsign", {}, 17), ("Clip", {"min": -0.5, "max": 1.5}, 10),
])
def test_unary_rewrites(op, attrs, opset):
    nodes = [helper.make_node(op, ["x"], ["a"], **attrs), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    agree(single(nodes, [], [4, 3, 3], opset=opset), [4, 3, 3], scale=4.0)


@pytest.mark.parametrize("mode, opset", [("nearest", 17), ("linear", 17), ("nearest", 9)])
def test_resize_rewrite(mode, opset):
    rng = np.random.default_rng(6)
    if opset >= 11:
        node = helper.make_node("Resize", ["x", "", "sc"], ["u"], mode=mode)
        inits = [init("sc", [1, 1, 2, 1.5])]
    else:
        node = helper.make_node("Upsample", ["x", "sc"], ["u"], mode=mode)
        inits = [init("sc", [1, 1, 2, 2])]
    nodes = [node, helper.make_node("Flatten", ["u"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    out = 2 * 4 * (6 if opset >= 11 else 8) * 2
    inits.append(init("w", rng.standard_normal((out, 3))))
    agree(single(nodes, inits, [2, 4, 4], opset=opset), [2, 4, 4])


def test_fixed_batch_graph_is_padded():
    """A batch written into a Reshape: every run has exactly that many rows, the last one padded."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    model = single(nodes, [init("shape", [2, 5], np.int64), init("w", rng.standard_normal((5, 3)))], [5], batch=2)
    ours = agree(model, [5], rows=3, fixed_batch=2)
    assert ours.batch == 2 and ours.rows_per_run == 2


# ------------------------------------------------------------------------- whole models
@pytest.mark.parametrize("constant_nodes", [False, True])
def test_mobile_block_with_squeeze_excitation(constant_nodes):
    model = mobile_model(mobile_weights(np.random.default_rng(8)), constant_nodes=constant_nodes, spatial=(8, 8))
    agree(model, [3, 8, 8])


@pytest.mark.parametrize("path", [p for p in sorted(glob.glob(str(ROOT / "sample_models" / "*.onnx"))) if "vit" not in p],
                         ids=lambda p: Path(p).stem)
def test_sample_models(path):
    model = load_model(path, device="cpu")
    kind = "probabilities" if model.info.final_op == "Softmax" else "logits"
    agree(model.proto, model.info.sample_shape, kind=kind, rows=2, scale=1.0)


def test_erf_falls_back_to_the_reference_evaluator():
    """onnxruntime has Erf only in float32: the numpy evaluator answers, and says so."""
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = single(nodes, [init("w", np.random.default_rng(9).standard_normal((4, 3)))], [4])
    graphs = graphs_of(model, [4])
    f = Float64Logp(graphs.complete(graphs.logp_model), graphs.input_name, graphs.shapes)
    assert f.evaluator == "reference evaluator" and "Erf" in f.fallback
    x = np.random.default_rng(0).standard_normal((2, 4))
    assert np.all(np.isfinite(f(x)))


def test_float64_model_converts_every_float_tensor():
    """No float32 left in the rewritten copy: initializers (inline and handed over as arrays), graph inputs and
    outputs, Cast targets."""
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["c"], ["k"], to=F32), helper.make_node("HardSwish", ["k"], ["h"]),
             helper.make_node("Flatten", ["h"], ["y"])]
    model = single(nodes, [init("W", rng.standard_normal((8, 4, 3, 3)) * 0.3), init("B", rng.standard_normal(8))], [4, 5, 5])
    graphs = graphs_of(model, [4, 5, 5])
    f64, external, _ = float64_model(graphs.logp_model, graphs.shapes, graphs.weights)
    assert all(t.data_type != F32 for t in f64.graph.initializer)
    assert external and all(a.dtype != np.float32 for a in external.values())
    assert all(v.type.tensor_type.elem_type != F32 for v in list(f64.graph.input) + list(f64.graph.output))
    assert all(a.i != F32 for n in f64.graph.node for a in n.attribute if a.name == "to")
    assert not {n.op_type for n in f64.graph.node} & {"Conv", "HardSwish", "HardSigmoid"}
    agree(model, [4, 5, 5])


# ------------------------------------------------------------------------- the self-check
def _tiny_linear(tmp_path):
    """Logits of order 1e-6 * x: float32 central differences cancel at every step, float64 ones do not."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 30)) * 1e-6
    model = load_model(save(linear_model(w, np.zeros(4)), tmp_path / "tiny.onnx"), device="cpu")
    graphs = build_graphs(model.proto, input_name=model.info.input.name, output_name=model.info.output.name,
                          sample_shape=model.info.sample_shape, fixed_batch=None, kind="logits")
    return GraphEngine(graphs, device="cpu"), rng.uniform(0, 1, (2, 30))


def test_second_opinion_runs_in_onnxruntime(tmp_path):
    engine, x = _tiny_linear(tmp_path)
    check = check_graph(engine, x, np.random.default_rng(0))
    assert check.passed and check.verified == check.rows
    assert check.second_opinion.startswith("float64 onnxruntime:"), check.second_opinion


def test_second_opinion_in_either_evaluator_refuses_a_wrong_rule(tmp_path, monkeypatch):
    """A sign flipped in the reverse Gemm rule: float32 cannot judge, float64 refuses (onnxruntime or numpy)."""
    from fimaudit.autodiff import reference

    from .test_autodiff import flip_gemm_vjp

    flip_gemm_vjp(monkeypatch)
    engine, x = _tiny_linear(tmp_path)
    check = check_graph(engine, x, np.random.default_rng(0))
    assert not check.passed and check.verified == 0 and "reverse" in check.reason
    assert check.second_opinion.startswith("float64 onnxruntime:")
    monkeypatch.setattr(reference, "_float64_session", lambda *a: (_ for _ in ()).throw(RuntimeError("no")))
    check = check_graph(engine, x, np.random.default_rng(0))
    assert not check.passed and check.second_opinion.startswith("float64 reference evaluator:")


def test_hopeless_second_opinion_is_skipped_before_it_is_built(tmp_path, monkeypatch):
    """When even the least float64 cost (a multiple of the float32 rows just timed) exceeds the budget,
    no float64 copy is built or run."""
    from fimaudit.autodiff import check as check_mod

    engine, x = _tiny_linear(tmp_path)
    monkeypatch.setattr(check_mod, "FLOAT64_MIN_SLOWDOWN", {"onnxruntime": 1e15, "reference evaluator": 1e15})
    monkeypatch.setattr(check_mod, "Float64Logp", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    check = check_graph(engine, x, np.random.default_rng(0))
    # no row judged: inconclusive (never a pass on no evidence)
    assert check.status == "inconclusive" and check.verified == 0 and check.inconclusive == check.rows
    assert check.second_opinion.startswith("float64 onnxruntime skipped:") and "or more" in check.second_opinion
