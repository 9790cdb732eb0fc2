"""INT8 versions of float ONNX models made with onnxruntime's own quantizer, at test time (never committed).

``quantize(src, dst, rows, fmt)`` calibrates ``quantize_static`` on a few model-input rows;
``fmt`` is "qdq" (QuantizeLinear/DequantizeLinear pairs) or "qoperator" (QLinearConv, QGemm ...).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from .builders import IR


def quantize(src: Path, dst: Path, rows: np.ndarray, fmt: str) -> Path:
    """Quantize ``src`` (float ONNX) to ``dst``, calibrated on ``rows`` (model-input layout, batch first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    name = model.graph.input[0].name
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    batch = [rows[i : i + 1] for i in range(rows.shape[0])] if fixed else [rows]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{name: b.astype(np.float32)} for b in batch])

        def get_next(self):
            return next(self._it, None)

    qdq = fmt == "qdq"
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings
    try:
        quantize_static(
            str(src), str(dst), Reader(),
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().setLevel(level)
    out = onnx.load(str(dst))
    if out.ir_version > IR + 2:  # onnxruntime refuses IR > 10
        out.ir_version = IR
        onnx.save(out, str(dst))
    return dst


def sign_mlp(rng: np.random.Generator, d: int = 12, hidden: int = 16, k: int = 4) -> onnx.ModelProto:
    """A binarized net: x -> Gemm -> Sign -> Gemm -> logits (weights binarized too); piecewise constant in x."""
    from onnx import TensorProto, helper, numpy_helper

    from .builders import _model

    w1 = np.sign(rng.standard_normal((hidden, d))).astype(np.float32)
    w2 = np.sign(rng.standard_normal((k, hidden))).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1),
        helper.make_node("Sign", ["a"], ["s"]),
        helper.make_node("Gemm", ["s", "W2", "b2"], ["z"], transB=1, alpha=0.25),
    ]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
             numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros(k, np.float32), "b2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)


def gate_model(constant_branches: bool) -> onnx.ModelProto:
    """Where(x > 0, x, 0) (a ReLU gate: piecewise smooth) or Where(x > 0, 1, -1) (piecewise constant), then Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    from .builders import _model

    d, k = 6, 3
    w = np.arange(d * k, dtype=np.float32).reshape(k, d) / 10
    a, b = ("one", "minus") if constant_branches else ("x", "zero")
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["c"]),
        helper.make_node("Where", ["c", a, b], ["g"]),
        helper.make_node("Gemm", ["g", "W", "bias"], ["z"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(1), "one"),
             numpy_helper.from_array(np.float32(-1), "minus"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.zeros(k, np.float32), "bias")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)


def weight_only_qdq(rng: np.random.Generator, d: int = 8, k: int = 3) -> onnx.ModelProto:
    """A float model whose weights are stored as INT8 with a DequantizeLinear: smooth in x (not piecewise)."""
    from onnx import TensorProto, helper, numpy_helper

    from .builders import _model

    wq = rng.integers(-100, 100, size=(k, d)).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"]),
        helper.make_node("Gemm", ["x", "W", "bias"], ["a"], transB=1),
        helper.make_node("Tanh", ["a"], ["z"]),
    ]
    inits = [numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(np.float32(0.01), "ws"),
             numpy_helper.from_array(np.int8(0), "wz"), numpy_helper.from_array(np.zeros(k, np.float32), "bias")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)


def with_scale(model: onnx.ModelProto, value: float) -> onnx.ModelProto:
    """A copy of a quantized model whose first QuantizeLinear scale is ``value`` (0 or NaN: an invalid model)."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = next(n.input[1] for n in out.graph.node if n.op_type == "QuantizeLinear")
    for t in out.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(t).shape, value, np.float32), name))
    return out


def integer_mlp(rng: np.random.Generator, d: int = 10, k: int = 4) -> tuple[onnx.ModelProto, np.ndarray, float, float]:
    """QuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale): a static integer matmul.

    Returns the model, the float weights the INT8 ones stand for (d, k), and the two scales.
    """
    from onnx import TensorProto, helper, numpy_helper

    from .builders import _model

    xs, ws = 0.02, 0.01
    wq = rng.integers(-120, 120, size=(d, k)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("MatMulInteger", ["xq", "Wq", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "s"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.float32(xs), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(np.float32(xs * ws), "s")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)
    return model, wq.astype(np.float64) * ws, xs, ws


def index_model(d: int = 5, k: int = 3) -> onnx.ModelProto:
    """x -> ArgMax -> OneHot -> Gemm: the position of the largest input feeds a layer (piecewise constant)."""
    from onnx import TensorProto, helper, numpy_helper

    from .builders import _model

    nodes = [
        helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
        helper.make_node("OneHot", ["i", "depth", "values"], ["h"], axis=-1),
        helper.make_node("Gemm", ["h", "W", "b"], ["z"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.int64(d), "depth"), numpy_helper.from_array(np.array([0, 1], np.float32), "values"),
             numpy_helper.from_array(np.ones((k, d), np.float32), "W"), numpy_helper.from_array(np.zeros(k, np.float32), "b")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)


def tree_model(d: int = 3) -> onnx.ModelProto:
    """One ai.onnx.ml regression tree (a stump on feature 0) followed by a float Add."""
    from onnx import TensorProto, helper, numpy_helper

    tree = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["t"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0], nodes_values=[0.5, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[-1.0, 1.0])
    add = helper.make_node("Add", ["t", "c"], ["z"])
    graph = helper.make_graph([tree, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(np.zeros(1, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
