"""Small feed-forward nets (dense, conv, max-pool, ReLU/sigmoid/tanh) as ONNX files and as float64 numpy references.

Every layer is an affine map or an elementwise/max-pool nonlinearity acting on the flattened
activation, so the logit Jacobian J is a product of dense matrices computed in float64 (or in
float32, to stand in for a float32 gradient graph). ``NumpySource`` exposes the Jacobian-source
protocol (jvp(V) -> rows S v, vjp(U) -> rows S^T u, queries, passes) at one point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from . import builders as B


@dataclass
class Net:
    """A layered classifier: ``layers`` are tuples ('dense', W, b), ('conv', K, b, pad, stride), ('relu',),
    ('sigmoid',), ('tanh',), ('maxpool', k); ``in_shape`` the per-sample shape."""

    in_shape: tuple[int, ...]
    layers: list = field(default_factory=list)

    @property
    def d(self) -> int:
        return int(np.prod(self.in_shape))

    # ------------------------------------------------------------------ ONNX
    def onnx(self, path: Path) -> Path:
        nodes, inits = [], []
        cur, shape, flat = "x", self.in_shape, len(self.in_shape) == 1
        for i, layer in enumerate(self.layers):
            out = f"h{i}"
            kind = layer[0]
            if kind == "dense":
                if not flat:
                    nodes.append(helper.make_node("Flatten", [cur], [f"f{i}"], axis=1))
                    cur, flat = f"f{i}", True
                inits += [numpy_helper.from_array(layer[1].astype(np.float32), f"W{i}"),
                          numpy_helper.from_array(layer[2].astype(np.float32), f"b{i}")]
                nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1))
            elif kind == "conv":
                _, kern, bias, pad, stride = layer
                inits += [numpy_helper.from_array(kern.astype(np.float32), f"K{i}"),
                          numpy_helper.from_array(bias.astype(np.float32), f"b{i}")]
                nodes.append(helper.make_node("Conv", [cur, f"K{i}", f"b{i}"], [out], pads=[pad] * 4,
                                              strides=[stride, stride]))
            elif kind == "maxpool":
                nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[layer[1]] * 2,
                                              strides=[layer[1]] * 2))
            else:
                nodes.append(helper.make_node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[kind], [cur], [out]))
            cur = out
        k = self.layers[-1][1].shape[0]
        graph = helper.make_graph(
            nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.in_shape])],
            [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", k])], inits)
        return B.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", B.OPSET)]), path)

    # ------------------------------------------------------------------ numpy
    def _ops(self):
        """(kind, matrix or None, bias or None, pool index map or None) per layer, on flattened vectors."""
        f = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
        ops, shape = [], self.in_shape
        for layer in self.layers:
            kind = layer[0]
            if kind == "dense":
                ops.append(("affine", f(layer[1]), f(layer[2])))
                shape = (layer[1].shape[0],)
            elif kind == "conv":
                _, kern, bias, pad, stride = layer
                m = B.conv_matrix(f(kern), shape, (pad,) * 4, stride)
                c_out = kern.shape[0]
                per = m.shape[0] // c_out
                side = int(round(np.sqrt(per)))
                ops.append(("affine", m, np.repeat(f(bias), per)))
                shape = (c_out, side, side)
            elif kind == "maxpool":
                c, hgt, wid = shape
                k = layer[1]
                oh, ow = hgt // k, wid // k
                idx = np.arange(c * hgt * wid).reshape(c, hgt, wid)
                windows = idx[:, : oh * k, : ow * k].reshape(c, oh, k, ow, k).transpose(0, 1, 3, 2, 4).reshape(-1, k * k)
                ops.append(("maxpool", windows, None))
                shape = (c, oh, ow)
            else:
                ops.append((kind, None, None))
        return ops

    def forward_jacobian(self, x: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
        """Logits z and J = dz/dx at one sample (flattened), in ``dtype`` arithmetic."""
        a = np.asarray(x, dtype=np.float32).reshape(-1).astype(dtype)
        jac = np.eye(a.size, dtype=dtype)
        for kind, m, b in self._ops():
            if kind == "affine":
                m = m.astype(dtype)
                a = m @ a + b.astype(dtype)
                jac = m @ jac
            elif kind == "relu":
                jac = jac * (a > 0)[:, None]
                a = np.maximum(a, 0)
            elif kind == "sigmoid":
                a = 1 / (1 + np.exp(-a))
                jac = jac * (a * (1 - a))[:, None]
            elif kind == "tanh":
                a = np.tanh(a)
                jac = jac * (1 - a * a)[:, None]
            elif kind == "maxpool":
                pick = m[np.arange(m.shape[0]), np.argmax(a[m], axis=1)]
                a, jac = a[pick], jac[pick]
        return a, jac

    def fisher_reference(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(lambda_max(F), S, p) in float64 at one sample."""
        z, j = self.forward_jacobian(x)
        p = B.softmax(z)
        s = j - p @ j
        g = np.sqrt(p)[:, None] * (s @ s.T) * np.sqrt(p)[None, :]
        return float(np.linalg.eigvalsh(g)[-1]), s, p


class NumpySource:
    """The Jacobian-source protocol for a ``Net`` at one point, from its Jacobian in ``dtype`` arithmetic."""

    exact = True
    name = "numpy"

    def __init__(self, net: Net, x0: np.ndarray, dtype=np.float32) -> None:
        z, j = net.forward_jacobian(x0, dtype)
        z = z.astype(np.float64)
        self.logp0 = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
        self.p = np.exp(self.logp0)
        p = self.p.astype(dtype)
        self._s = (j - p[None, :] @ j).astype(dtype)  # S = (I - 1 p^T) J
        self.x0 = np.asarray(x0)
        self.queries = 0
        self.passes = 0

    def jvp(self, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(v)
        self.passes += 1
        self.queries += len(v)
        return (v.astype(self._s.dtype) @ self._s.T).astype(np.float64)

    def vjp(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(u)
        self.passes += 1
        self.queries += len(u)
        return (u.astype(self._s.dtype) @ self._s).astype(np.float64)


def relu_mlp(rng: np.random.Generator, d: int, widths: tuple[int, ...], k: int, gain: float = 1.5) -> Net:
    layers, prev = [], d
    for w in widths:
        layers += [("dense", rng.standard_normal((w, prev)) * gain / np.sqrt(prev), rng.standard_normal(w) * 0.3), ("relu",)]
        prev = w
    layers.append(("dense", rng.standard_normal((k, prev)) * gain / np.sqrt(prev), rng.standard_normal(k) * 0.1))
    return Net((d,), layers)


def sigmoid_mlp(rng: np.random.Generator, d: int, width: int, k: int) -> Net:
    return Net((d,), [("dense", rng.standard_normal((width, d)) * 3 / np.sqrt(d), rng.standard_normal(width)),
                      ("sigmoid",),
                      ("dense", rng.standard_normal((k, width)) * 6 / np.sqrt(width), rng.standard_normal(k) * 0.1)])


def conv_net(rng: np.random.Generator, c: int = 2, side: int = 6, c_out: int = 3, k: int = 4, pool: bool = False) -> Net:
    layers = [("conv", rng.standard_normal((c_out, c, 3, 3)) * 0.6, rng.standard_normal(c_out) * 0.2, 1, 1), ("relu",)]
    feat = c_out * side * side
    if pool:
        layers.append(("maxpool", 2))
        feat //= 4
    layers.append(("dense", rng.standard_normal((k, feat)) * 2 / np.sqrt(feat), rng.standard_normal(k) * 0.1))
    return Net((c, side, side), layers)


def vjp_at(net: Net) -> "callable":
    """Batched exact VJPs of log-softmax for a ``Net``: (x (n, ...), u (n, K)) -> rows S(x_i)^T u_i, float64."""

    def apply(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), net.d))
        for i, (xi, ui) in enumerate(zip(x, u)):
            z, j = net.forward_jacobian(np.asarray(xi, dtype=np.float64).astype(np.float32))
            p = B.softmax(z)
            out[i] = (ui - ui.sum() * p) @ j  # u^T (I - 1 p^T) J
        return out.reshape(x.shape)

    return apply
