"""Tiny ONNX models with closed-form Jacobians, built with onnx.helper, and their float64 references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR = 8
OPSET = 17


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = IR
    onnx.save(model, str(path))
    return path


def _model(nodes, inputs, outputs, inits, opset: int = OPSET, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits, **kw)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def fisher_factor(j: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A = M^{1/2} J with M = diag(p) - p p^T, so that F = A^T A (dense, float64)."""
    m = np.diag(p) - np.outer(p, p)
    w, v = np.linalg.eigh(m)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return root @ j


def fisher_from_jacobian(j: np.ndarray, p: np.ndarray) -> np.ndarray:
    """F = J^T (diag(p) - p p^T) J in float64."""
    m = np.diag(p) - np.outer(p, p)
    return j.T @ m @ j


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


# ----------------------------------------------------------------------- linear softmax
def linear_model(w: np.ndarray, b: np.ndarray, sample_shape=None, softmax_out: bool = False, batch="N") -> onnx.ModelProto:
    """z = flatten(x) W^T + b (W: K x d); optionally followed by Softmax."""
    k, d = w.shape
    sample_shape = tuple(sample_shape or (d,))
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], axis=1),
        helper.make_node("Gemm", ["xf", "W", "b"], ["z"], transB=1),
    ]
    out = "z"
    if softmax_out:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1))
        out = "p"
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b")]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *sample_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, k])],
        inits,
    )


def linear_reference(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    w64 = w.astype(np.float32).astype(np.float64)
    b64 = b.astype(np.float32).astype(np.float64)
    p = softmax(w64 @ x.reshape(-1).astype(np.float32).astype(np.float64) + b64)
    return fisher_from_jacobian(w64, p)


# ------------------------------------------------------------------------- tanh MLP
def mlp_model(w1, b1, w2, b2, sample_shape=None, batch="N") -> onnx.ModelProto:
    h, d = w1.shape
    k = w2.shape[0]
    sample_shape = tuple(sample_shape or (d,))
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], axis=1),
        helper.make_node("Gemm", ["xf", "W1", "b1"], ["a"], transB=1),
        helper.make_node("Tanh", ["a"], ["t"]),
        helper.make_node("Gemm", ["t", "W2", "b2"], ["z"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "W1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "W2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *sample_shape])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, k])],
        inits,
    )


def mlp_reference(w1, b1, w2, b2, x, factor: bool = False) -> np.ndarray:
    f = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    w1, b1, w2, b2 = f(w1), f(b1), f(w2), f(b2)
    xv = f(x.reshape(-1))
    a = w1 @ xv + b1
    t = np.tanh(a)
    j = w2 @ (np.diag(1 - t**2) @ w1)
    p = softmax(w2 @ t + b2)
    return fisher_factor(j, p) if factor else fisher_from_jacobian(j, p)


def lam_max_factor(a: np.ndarray) -> float:
    """lambda_max(A^T A) from the small side A A^T (same nonzero spectrum)."""
    return float(np.linalg.eigvalsh(a @ a.T)[-1])


def random_mlp(rng: np.random.Generator, d: int, hidden: int, k: int, gain: float = 1.0):
    w1 = rng.standard_normal((hidden, d)) * gain / np.sqrt(d)
    b1 = rng.standard_normal(hidden) * 0.1
    w2 = rng.standard_normal((k, hidden)) * 2.0 / np.sqrt(hidden)
    b2 = rng.standard_normal(k) * 0.1
    return w1, b1, w2, b2


# -------------------------------------------------------------------------- conv net
def conv_model(kernel, cbias, w2, b2, in_shape, pads=(1, 1, 1, 1), stride=1, batch="N") -> onnx.ModelProto:
    """Conv -> Tanh -> Flatten -> Gemm."""
    c_out = kernel.shape[0]
    k = w2.shape[0]
    nodes = [
        helper.make_node("Conv", ["x", "K", "cb"], ["c"], pads=list(pads), strides=[stride, stride]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("Flatten", ["t"], ["tf"], axis=1),
        helper.make_node("Gemm", ["tf", "W2", "b2"], ["z"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(kernel.astype(np.float32), "K"),
        numpy_helper.from_array(cbias.astype(np.float32), "cb"),
        numpy_helper.from_array(w2.astype(np.float32), "W2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    del c_out
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, k])],
        inits,
    )


def conv_matrix(kernel: np.ndarray, in_shape, pads=(1, 1, 1, 1), stride: int = 1) -> np.ndarray:
    """Dense matrix of a 2-D cross-correlation (ONNX Conv, no dilation/groups), by explicit loops."""
    c_out, c_in, kh, kw = kernel.shape
    _, hgt, wid = in_shape
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    oh = (hgt + top + bottom - kh) // stride + 1
    ow = (wid + left + right - kw) // stride + 1
    m = np.zeros((c_out * oh * ow, c_in * hgt * wid))
    for o in range(c_out):
        for i in range(oh):
            for j in range(ow):
                row = (o * oh + i) * ow + j
                for c in range(c_in):
                    for a in range(kh):
                        for bb in range(kw):
                            y = i * stride + a - top
                            x = j * stride + bb - left
                            if 0 <= y < hgt and 0 <= x < wid:
                                m[row, (c * hgt + y) * wid + x] += kernel[o, c, a, bb]
    return m


def conv_reference(kernel, cbias, w2, b2, in_shape, x, pads=(1, 1, 1, 1), stride=1) -> np.ndarray:
    f = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    kernel, cbias, w2, b2 = f(kernel), f(cbias), f(w2), f(b2)
    c = conv_matrix(kernel, in_shape, pads, stride)
    per_channel = c.shape[0] // kernel.shape[0]
    pre = c @ f(x.reshape(-1)) + np.repeat(cbias, per_channel)
    t = np.tanh(pre)
    j = w2 @ (np.diag(1 - t**2) @ c)
    p = softmax(w2 @ t + b2)
    return fisher_from_jacobian(j, p)


def lam_max(f: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(f)[-1])


# ---------------------------------------------------------------- MobileNetV3-style block
MOBILE_WEIGHT_SHAPES = {"K1": (8, 3, 3, 3), "S1": (2, 8, 1, 1), "S2": (8, 2, 1, 1), "W": (5, 8)}


def mobile_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    scale = {"K1": 0.3, "S1": 1.0, "S2": 1.0, "W": 1.0}
    return {k: (rng.standard_normal(s) * scale[k]).astype(np.float32) for k, s in MOBILE_WEIGHT_SHAPES.items()}


def mobile_nodes(gated: bool = True) -> list:
    """Conv(stride 2) -> HardSwish -> [squeeze-and-excitation gate] -> GlobalAveragePool -> Gemm."""
    head = [
        helper.make_node("Conv", ["x", "K1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("HardSwish", ["c1"], ["h1"]),
    ]
    tail = [helper.make_node("Flatten", ["gp"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["z"], transB=1)]
    if not gated:
        return head + [helper.make_node("GlobalAveragePool", ["h1"], ["gp"])] + tail
    gate = [
        helper.make_node("GlobalAveragePool", ["h1"], ["sq"]),
        helper.make_node("Conv", ["sq", "S1"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["s1r"]),
        helper.make_node("Conv", ["s1r", "S2"], ["s2"]),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h1", "gate"], ["se"]),
        helper.make_node("GlobalAveragePool", ["se"], ["gp"]),
    ]
    return head + gate + tail


def mobile_model(weights: dict[str, np.ndarray], gated: bool = True, constant_nodes: bool = False,
                 spatial=(16, 16)) -> onnx.ModelProto:
    """The block as an ONNX model; weights as initializers or as Constant nodes (as some exporters write)."""
    nodes = mobile_nodes(gated)
    used = {i for n in nodes for i in n.input}
    arrays = {k: v for k, v in weights.items() if k in used}
    if constant_nodes:
        consts = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k + "_v")) for k, v in arrays.items()]
        nodes, inits = consts + nodes, []
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    g = helper.make_graph(nodes, "mobile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *spatial])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR
    return m
