"""The operator table (fimaudit/ops/): complete entries, one per operator, and every reader takes its supported
set from it (autodiff, closed-form bounds, the bound engine, BatchNorm folding, parsing, layout, weight measures).

Each "reads the table" test edits one entry (monkeypatch, undone after the test) and checks the reader follows:
a reader that kept its own operator list, or its own copy of a rule, fails it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fimaudit import ops
from fimaudit.autodiff import GradientUnsupported, build_graphs
from fimaudit.errors import UnsupportedModelError
from fimaudit.graph.bounds import bounds_from_proto
from fimaudit.graph.fold import fold_batchnorm
from fimaudit.graph.parse import parse
from fimaudit.metrics.weights import layers
from fimaudit.model.layout import first_convs
from fimaudit.ops.registry import HOOKS, TABLE, Op, Reason, register
from fimaudit.verify import BoundGraph, relaxed_ops, supported_ops

from .builders import OPSET, _model

ROOT = Path(__file__).resolve().parents[1]
F32 = TensorProto.FLOAT


def _init(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _unary_net(op: str) -> onnx.ModelProto:
    """z = W2 op(W1 x): one activation between two Gemms (4 -> 3 -> 2)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1), helper.make_node(op, ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2"], ["z"], transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 4])],
                  [helper.make_tensor_value_info("z", F32, ["N", 2])],
                  [_init("W1", rng.standard_normal((3, 4))), _init("W2", rng.standard_normal((2, 3)))])


def _patch(monkeypatch, name: str, **fields) -> None:
    monkeypatch.setitem(ops.table(), name, dataclasses.replace(ops.table()[name], **fields))


# ------------------------------------------------------------------------------------------- the entries
def test_every_entry_is_complete():
    """Each hook holds a rule or a stated reason; plain fields hold what their readers expect."""
    table = ops.table()
    assert len(table) > 90
    for name, op in table.items():
        assert op.name == name and op.family, name
        for hook in HOOKS:
            v = getattr(op, hook)
            assert callable(v) or (isinstance(v, Reason) and v.strip()), (name, hook, v)
            assert op.has(hook) == (op.reason(hook) == ""), (name, hook)
        if op.nondiff:  # no derivative flows: the derivative hooks say why instead of holding a rule
            assert not op.has("vjp") and not op.has("jvp"), name
        assert all(isinstance(i, int) for i in op.weight_inputs), name
        for field in ("outputs", "fan", "undecided", "bn_fold"):
            assert getattr(op, field) is None or callable(getattr(op, field)), (name, field)


def test_register_refuses_an_incomplete_or_repeated_entry(monkeypatch):
    monkeypatch.setattr("fimaudit.ops.registry.TABLE", dict(TABLE))
    with pytest.raises(TypeError, match="Foo.vjp must be a rule or a Reason"):
        register("test", Op("Foo", vjp=None))
    with pytest.raises(TypeError, match="Foo.ibp"):
        register("test", Op("Foo", ibp=Reason("")))
    with pytest.raises(ValueError, match="registered twice"):
        register("test", Op("Relu"))
    with pytest.raises(ValueError, match="layout role"):
        register("test", Op("Foo", layout="sideways"))


def test_families_register_each_operator_once_in_its_own_module():
    families = {op.family for op in ops.table().values()}
    assert families == {"elementwise", "linear", "pool", "shape", "norm", "quant", "other"}
    for fam in families:
        text = (ROOT / "fimaudit" / "ops" / f"{fam}.py").read_text()
        for name, op in ops.table().items():
            if op.family == fam and f'"{name}"' not in text:
                raise AssertionError(f"{name} is registered by {fam} but not named there")


def test_operators_doc_is_current():
    """docs/operators.md is generated from the table (regenerate: python -m fimaudit.ops --markdown > docs/operators.md)."""
    assert (ROOT / "docs" / "operators.md").read_text() == ops.markdown()
    out = subprocess.run([sys.executable, "-m", "fimaudit.ops", "--markdown"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout == ops.markdown()
    bad = subprocess.run([sys.executable, "-m", "fimaudit.ops"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_supported_sets_are_the_tables(monkeypatch):
    from fimaudit.verify.jacobian import jacobian_ops

    assert supported_ops() == ops.supported("point") and relaxed_ops() == ops.supported("linear")
    assert jacobian_ops() == ops.supported("jacobian")
    tanh = ops.table()["Tanh"]
    _patch(monkeypatch, "Softsign", point=tanh.point, linear=tanh.linear, jacobian=tanh.jacobian)
    assert {"Softsign"} <= set(supported_ops()) & set(relaxed_ops()) & set(jacobian_ops())
    monkeypatch.undo()
    # an operator with derivative rules only (Softsign): differentiable, no bound-engine rule, a stated reason
    assert "Softsign" in ops.differentiable() and "Softsign" not in ops.supported("ibp")
    assert ops.entry("Softsign").reason("ibp")


# ------------------------------------------------------------------------------------- the readers follow it
def test_verify_reports_an_autodiff_only_operator_with_the_tables_reason(monkeypatch):
    proto = _unary_net("Softsign")
    _patch(monkeypatch, "Softsign", ibp=Reason("no interval rule written for Softsign yet"))
    with pytest.raises(UnsupportedModelError) as err:
        BoundGraph(proto, "x", "z", (4,))
    msg = str(err.value)
    assert "operator Softsign" in msg and "no interval rule written for Softsign yet" in msg
    assert msg.endswith(", ".join(ops.supported("ibp")))
    # give it Tanh's rules (the same shape of function: increasing, odd, saturating) and the engine accepts it
    tanh = ops.table()["Tanh"]
    _patch(monkeypatch, "Softsign", point=tanh.point, ibp=tanh.ibp)
    b = BoundGraph(proto, "x", "z", (4,))
    assert [n.op for n in b.var_nodes] == ["Gemm", "Softsign", "Gemm"]


def test_autodiff_takes_its_rules_from_the_table(monkeypatch):
    proto = _unary_net("Relu")
    kw = dict(input_name="x", output_name="z", sample_shape=(4,), fixed_batch=None, kind="logits")
    build_graphs(proto, **kw)
    _patch(monkeypatch, "Relu", vjp=Reason("removed for the test"))
    with pytest.raises(GradientUnsupported, match="Relu"):
        build_graphs(proto, **kw)
    # an operator the table calls non-differentiable is skipped: the gradient is then that of W2 W1 x
    _patch(monkeypatch, "Relu", vjp=ops.table()["Relu"].jvp, nondiff="pretend")
    build_graphs(proto, **kw)


def test_bounds_take_their_constants_from_the_table(monkeypatch):
    proto = _unary_net("Relu")
    assert bounds_from_proto(proto, "x", "z", (4,)).lipschitz is not None
    _patch(monkeypatch, "Relu", lipschitz=lambda p, node: p.scale(node, 3.0, "three"))
    res = bounds_from_proto(proto, "x", "z", (4,))
    relu = [o for o in res.ops if o.op == "Relu"][0]
    assert relu.lipschitz == 3.0 and relu.how == "three"
    _patch(monkeypatch, "Relu", lipschitz=Reason("no constant"))
    res = bounds_from_proto(proto, "x", "z", (4,))
    assert res.lipschitz is None and "operator 'Relu'" in res.reason


def _conv_bn_net() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "K"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["z"], transB=1)]
    inits = [_init("K", rng.standard_normal((2, 3, 3, 3))), _init("g", [1.5, 0.5]), _init("b", [0.1, 0.2]),
             _init("m", [0.0, 1.0]), _init("v", [4.0, 1.0]), _init("W", rng.standard_normal((2, 2 * 5 * 5)))]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 5, 5, 3])],
                  [helper.make_tensor_value_info("z", F32, ["N", 2])], inits)


def test_fold_layout_and_weight_measures_read_the_table(monkeypatch):
    proto = _conv_bn_net()
    folded = fold_batchnorm(proto)
    assert [n.op_type for n in folded.graph.node] == ["Transpose", "Conv", "Flatten", "Gemm"]
    assert [(layer.op, layer.matrix.shape) for layer in layers(proto)] == [("Conv", (2, 27)), ("Gemm", (2, 50))]
    (conv, axes, path), = first_convs(proto.graph, "x")
    assert axes[1] == 3 and path == ["Transpose perm [0, 3, 1, 2]"]

    _patch(monkeypatch, "Conv", bn_fold=None, weights=Reason("not a layer in this test"), layout="")
    assert [n.op_type for n in fold_batchnorm(proto).graph.node] == [n.op_type for n in proto.graph.node]
    assert [layer.op for layer in layers(proto)] == ["Gemm"]
    assert first_convs(proto.graph, "x") == []
    _patch(monkeypatch, "Conv", layout="conv")
    _patch(monkeypatch, "Transpose", layout="")
    assert first_convs(proto.graph, "x") == []


def test_parse_folds_what_the_table_folds(monkeypatch):
    """A Reshape whose target shape is computed from constants (Concat of Unsqueezed scalars) is folded."""
    nodes = [helper.make_node("Unsqueeze", ["a", "ax"], ["a1"]), helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
             helper.make_node("Concat", ["a1", "b1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["z"])]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "a"), numpy_helper.from_array(np.array(6, np.int64), "b"),
             numpy_helper.from_array(np.array([0], np.int64), "ax")]
    proto = _model(nodes, [helper.make_tensor_value_info("x", F32, [1, 2, 3])],
                   [helper.make_tensor_value_info("z", F32, [1, 6])], inits, opset=OPSET)
    assert parse(proto, "x", "z", (2, 3)).consts["shape"].tolist() == [1, 6]
    _patch(monkeypatch, "Concat", fold=Reason("not folded in this test"))
    g = parse(proto, "x", "z", (2, 3))
    assert "shape" not in g.consts and "shape" in g.static


def test_float64_copy_takes_its_rewrites_and_refusals_from_the_table(monkeypatch):
    """``float64``: a rule rewrites the node for onnxruntime, None keeps it as it is, a Reason refuses the copy."""
    from fimaudit.autodiff.reference import Float64Unsupported, float64_model, onnxruntime_can_run

    proto = _unary_net("Softsign")
    shapes = {"x": (1, 4), "h": (1, 3), "a": (1, 3), "z": (1, 2)}
    kinds = lambda: [n.op_type for n in float64_model(proto, shapes)[0].graph.node]  # noqa: E731
    assert onnxruntime_can_run(proto, shapes) is None
    assert "Softsign" not in kinds() and "Div" in kinds()  # the entry's rewrite: x / (1 + |x|)
    _patch(monkeypatch, "Softsign", float64=None)  # as if onnxruntime had a double kernel: the node stays
    assert kinds() == ["Gemm", "Softsign", "Gemm"]
    _patch(monkeypatch, "Softsign", float64=lambda em, node: em.nodes.append(
        onnx.helper.make_node("Neg", [node.input[0]], [node.output[0]])))
    assert kinds() == ["Gemm", "Neg", "Gemm"]
    _patch(monkeypatch, "Softsign", float64=Reason("no double kernel in this test"))
    assert onnxruntime_can_run(proto, shapes) == "Softsign has no double kernel in this test"
    with pytest.raises(Float64Unsupported, match="no double kernel in this test"):
        float64_model(proto, shapes)
    erf = _unary_net("Erf")
    assert onnxruntime_can_run(erf, shapes) == "Erf has no double kernel in onnxruntime"
    _patch(monkeypatch, "Erf", float64=None)
    assert onnxruntime_can_run(erf, shapes) is None
    monkeypatch.setattr("fimaudit.ops.registry.TABLE", dict(TABLE))
    with pytest.raises(TypeError, match="Foo.float64"):
        register("test", Op("Foo", float64=Reason("")))


def test_logit_walks_read_the_table(monkeypatch):
    """``logit_walk``: the loader's walk (model.spec) and the bound engine's (verify) look through what it says."""
    from fimaudit.model.spec import LogitOutput, logit_output

    made = {"out": ("Flatten", ["p"]), "p": ("LogSoftmax", ["l"]), "l": ("Relu", ["h"])}
    assert logit_output(made, "out") == LogitOutput("LogSoftmax", "l")
    _patch(monkeypatch, "Flatten", logit_walk="")
    assert logit_output(made, "out") == LogitOutput("Flatten", "out")
    _patch(monkeypatch, "Flatten", logit_walk="moves")
    _patch(monkeypatch, "LogSoftmax", logit_walk="")
    assert logit_output(made, "out") == LogitOutput("LogSoftmax", "out")
    _patch(monkeypatch, "LogSoftmax", logit_walk="moves")
    _patch(monkeypatch, "Relu", logit_walk="softmax")
    assert logit_output(made, "out") == LogitOutput("Relu", "h")

    monkeypatch.undo()
    net = _unary_net("Relu")
    net.graph.node[-1].output[0] = "l"
    net.graph.node.append(helper.make_node("Softmax", ["l"], ["z"], axis=1))
    assert BoundGraph(net, "x", "z", (4,)).logit_name == "l"
    _patch(monkeypatch, "Softmax", logit_walk="")
    assert BoundGraph(net, "x", "z", (4,)).logit_name == "z"
    _patch(monkeypatch, "Softmax", logit_walk="moves")  # the engine looks through "softmax" and "copy" only
    assert BoundGraph(net, "x", "z", (4,)).logit_name == "z"
    _patch(monkeypatch, "Softmax", logit_walk="copy")
    assert BoundGraph(net, "x", "z", (4,)).logit_name == "l"


def test_rowwise_is_the_tables(monkeypatch):
    """``rowwise``: the gradient graphs compute per point only what the table says acts row by row."""
    from fimaudit.autodiff.graph import _rowwise

    assert _rowwise("Relu") and _rowwise("Slice") and not _rowwise("MatMul") and not _rowwise("IsNaN")
    assert not _rowwise("NotAnOperator")
    _patch(monkeypatch, "Relu", rowwise=False)
    _patch(monkeypatch, "MatMul", rowwise=True)
    assert not _rowwise("Relu") and _rowwise("MatMul")


def test_piecewise_detection_reads_the_table(monkeypatch):
    """``piecewise``, ``passes_booleans``, ``scale_inputs`` and ``reads_shape_only`` as ``fimaudit.piecewise`` reads them."""
    from fimaudit.piecewise import check_scales, detect_piecewise

    from .quantized import sign_mlp

    sign = sign_mlp(np.random.default_rng(0))
    info = detect_piecewise(sign, "x", "z")
    assert dict(info.ops) == {"Sign": 1} and not info.quantized and "sign/rounding" in info.reason
    _patch(monkeypatch, "Sign", piecewise="")
    assert detect_piecewise(sign, "x", "z") is None
    _patch(monkeypatch, "Sign", piecewise="quantize")
    info = detect_piecewise(sign, "x", "z")
    assert info.quantized and info.reason.startswith("integer quantization")
    monkeypatch.undo()

    # a comparison whose boolean passes through Not into a Where between input-dependent branches: a gate
    zero = numpy_helper.from_array(np.float32(0), "zero")
    nodes = [helper.make_node("Greater", ["x", "zero"], ["c0"]), helper.make_node("Not", ["c0"], ["c"]),
             helper.make_node("Where", ["c", "x", "zero"], ["z"])]
    gate = _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 3])],
                  [helper.make_tensor_value_info("z", F32, ["N", 3])], [zero])
    assert detect_piecewise(gate, "x", "z") is None
    _patch(monkeypatch, "Not", passes_booleans=False)  # the walk stops at Not: its value reaches more than a gate
    assert dict(detect_piecewise(gate, "x", "z").ops) == {"Greater": 1}
    monkeypatch.undo()

    # Round of the input's shape: no path of values (Shape reads the shape only) until the table says otherwise
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["f"], to=F32),
             helper.make_node("Round", ["f"], ["z"])]
    shaped = _model(nodes, [helper.make_tensor_value_info("x", F32, [1, 3])],
                    [helper.make_tensor_value_info("z", F32, [2])], [])
    assert detect_piecewise(shaped, "x", "z") is None
    _patch(monkeypatch, "Shape", reads_shape_only=False)
    assert dict(detect_piecewise(shaped, "x", "z").ops) == {"Round": 1}
    monkeypatch.undo()

    inits = [_init("s", 0.0), numpy_helper.from_array(np.uint8(0), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["z"])]
    qdq = _model(nodes, [helper.make_tensor_value_info("x", F32, [1, 3])],
                 [helper.make_tensor_value_info("z", F32, [1, 3])], inits)
    with pytest.raises(UnsupportedModelError, match="scale 's' of QuantizeLinear .* is zero"):
        check_scales(qdq)
    _patch(monkeypatch, "QuantizeLinear", scale_inputs=())
    with pytest.raises(UnsupportedModelError, match="scale 's' of DequantizeLinear"):
        check_scales(qdq)
    _patch(monkeypatch, "DequantizeLinear", scale_inputs=())
    check_scales(qdq)
    monkeypatch.setattr("fimaudit.ops.registry.TABLE", dict(TABLE))
    with pytest.raises(ValueError, match="piecewise kind"):
        register("test", Op("Foo", piecewise="sometimes"))
