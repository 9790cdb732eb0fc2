"""Piecewise-constant test classifiers built with onnx.helper: binarized (Sign) linear models and MLPs, their
float twins (Sign replaced by Tanh(c x)), and a binarized conv net with an NHWC twin (a Transpose in front)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from . import builders as B


def _f32(name: str, a: np.ndarray):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _save(nodes, inits, in_shape, k: int, path: Path, inp: str = "x") -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])], inits)
    return B.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", B.OPSET)]), path)


def sign_linear(w: np.ndarray, b: float, path: Path) -> Path:
    """Two classes, logits (s, -s) with s = Sign(w.x + b): class 0 where w.x + b >= 0 (ties go to class 0)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a0"]), helper.make_node("Add", ["a0", "b"], ["a"]),
             helper.make_node("Sign", ["a"], ["s"]), helper.make_node("Mul", ["s", "pm"], ["z"])]
    inits = [_f32("w", w.reshape(-1, 1)), _f32("b", [b]), _f32("pm", [[1.0, -1.0]])]
    return _save(nodes, inits, (len(w),), 2, path)


def binarized_mlp(w1, b1, w2, b2, path: Path, smooth: float | None = None) -> Path:
    """z = W2 Sign(W1 x + b1) + b2; with ``smooth`` c the float twin z = W2 Tanh(c (W1 x + b1)) + b2."""
    act = ([helper.make_node("Sign", ["a"], ["h"])] if smooth is None else
           [helper.make_node("Mul", ["a", "c"], ["ca"]), helper.make_node("Tanh", ["ca"], ["h"])])
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1), *act,
             helper.make_node("Gemm", ["h", "W2", "b2"], ["z"], transB=1)]
    inits = [_f32("W1", w1), _f32("b1", b1), _f32("W2", w2), _f32("b2", b2)]
    if smooth is not None:
        inits.append(_f32("c", [smooth]))
    return _save(nodes, inits, (w1.shape[1],), w2.shape[0], path)


def binarized_conv(kern, kb, w, b, in_shape, path: Path, nhwc: bool = False) -> Path:
    """Conv(pad 1) -> Sign -> Flatten -> Gemm on NCHW samples ``in_shape``; ``nhwc``: the same behind a Transpose."""
    c, h, wd = in_shape
    nodes = [helper.make_node("Conv", ["xc", "K", "kb"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Sign", ["a"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W", "b"], ["z"], transB=1)]
    if nhwc:
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]))
        shape = (h, wd, c)
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["xc"]))
        shape = in_shape
    inits = [_f32("K", kern), _f32("kb", kb), _f32("W", w), _f32("b", b)]
    return _save(nodes, inits, shape, w.shape[0], path)


def quantized_mlp(w1, b1, w2, b2, path: Path, step: float | None = 1 / 16) -> Path:
    """z = W2 ReLU(W1 q(x) + b1) + b2 with the input quantized to uint8 multiples of ``step`` (QuantizeLinear then
    DequantizeLinear, as INT8 exports do); ``step`` None: the float twin (the QDQ pair removed)."""
    qdq = [] if step is None else [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                                   helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"])]
    first = "x" if step is None else "xd"
    nodes = [*qdq, helper.make_node("Gemm", [first, "W1", "b1"], ["a"], transB=1),
             helper.make_node("Relu", ["a"], ["h"]), helper.make_node("Gemm", ["h", "W2", "b2"], ["z"], transB=1)]
    inits = [_f32("W1", w1), _f32("b1", b1), _f32("W2", w2), _f32("b2", b2)]
    if step is not None:
        inits += [_f32("s", step), numpy_helper.from_array(np.array(0, dtype=np.uint8), "zp")]
    return _save(nodes, inits, (w1.shape[1],), w2.shape[0], path)
