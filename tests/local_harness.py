"""Search for large lambda_max(F) and |J|_2 inside an L-inf ball: the adversary of the local bounds' tests and bench.

A Jacobian oracle ``jac(x) -> (z (n, K), J (n, K, d))`` (float64 numpy nets from tests/nets.py, or the
model's float32 gradient graph via ``onnx_oracle``) is evaluated at the centre, the ball's corners
along sign directions, uniform random points and PGD iterates that ascend lambda_max(F) through p
(for piecewise-linear nets J is constant between kinks, so d lambda/dx = J^T Sigma w with
w_k = u_k^2 - 2 (p.u) u_k, u = J v, v the top eigenvector; a heuristic for smooth nets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fisher_top(z: np.ndarray, j: np.ndarray):
    """Per row: (lambda_max(F), |J|_2, top eigenvector v (d,), u = J v, p) from logits z (n, K) and J (n, K, d)."""
    p = softmax(z)
    out = []
    for pi, ji in zip(p, j):
        s = ji - pi @ ji
        sp = np.sqrt(pi)[:, None] * s
        g = sp @ sp.T
        w, vecs = np.linalg.eigh(g)
        lam = float(max(w[-1], 0.0))
        v = sp.T @ vecs[:, -1]
        nv = np.linalg.norm(v)
        v = v / nv if nv > 0 else v
        out.append((lam, float(np.linalg.norm(ji, 2)), v, ji @ v, pi))
    return out


def net_oracle(net):
    """A tests/nets.py ``Net`` in float64 arithmetic."""

    def jac(x):
        zs, js = [], []
        for xi in np.asarray(x):
            z, j = net.forward_jacobian(xi)
            zs.append(z)
            js.append(j)
        return np.array(zs), np.array(js)

    return jac


def onnx_oracle(path: str | Path, sample_shape, logit_name: str | None = None, input_name: str | None = None):
    """The logit Jacobian of an ONNX model from fimaudit's gradient graph (float32, as the scan measures it).

    The graph differentiates log-softmax of its output, so the logits get one extra constant entry C = 100:
    log p_k = z_k - C up to e^(z - C), and the rows k < K of the gradient are the logit Jacobian."""
    import onnx
    from onnx import helper, numpy_helper

    from fimaudit.autodiff import GraphEngine, build_graphs

    proto = onnx.load(str(path))
    inp = input_name or proto.graph.input[0].name
    out = logit_name or proto.graph.output[0].name
    g = proto.graph
    g.initializer.append(numpy_helper.from_array(np.full((1, 1), 100.0, np.float32), "lh_c"))
    g.node.extend([helper.make_node("Flatten", [out], ["lh_flat"], axis=1),
                   helper.make_node("Shape", ["lh_flat"], ["lh_shape"]),
                   helper.make_node("Gather", ["lh_shape", "lh_zero"], ["lh_n"], axis=0),
                   helper.make_node("Concat", ["lh_n", "lh_one"], ["lh_cshape"], axis=0),
                   helper.make_node("Expand", ["lh_c", "lh_cshape"], ["lh_col"]),
                   helper.make_node("Concat", ["lh_flat", "lh_col"], ["lh_aug"], axis=1)])
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "lh_zero"),
                          numpy_helper.from_array(np.array([1], np.int64), "lh_one")])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("lh_aug", onnx.TensorProto.FLOAT, None))
    graphs = build_graphs(proto, input_name=inp, output_name="lh_aug", sample_shape=tuple(sample_shape), fixed_batch=None,
                          kind="logits")
    engine = GraphEngine(graphs, device="cpu")

    def jac(x):
        x = np.asarray(x, np.float64).reshape((-1,) + tuple(sample_shape))
        lp, s = engine.jacobians(x)
        k = lp.shape[1] - 1
        z = lp[:, :k] + 100.0
        return z, s[:, :k, :]

    return jac


def search(jac, x0: np.ndarray, eps: float, rng: np.random.Generator, *, random: int = 32, starts: int = 4,
           steps: int = 20, lo: float = -np.inf, hi: float = np.inf):
    """Largest lambda_max(F) and |J|_2 found in {x : |x - x0|_inf <= eps} (and [lo, hi]); points evaluated."""
    shape = x0.shape
    clip = lambda x: np.clip(np.clip(x, x0 - eps, x0 + eps), lo, hi)  # noqa: E731
    pts = [x0[None]]
    if eps > 0:
        pts.append(clip(x0[None] + eps * rng.choice([-1.0, 1.0], size=(max(random // 4, 1),) + shape)))
        pts.append(clip(x0[None] + rng.uniform(-eps, eps, size=(random,) + shape)))
    best_f, best_l, count = 0.0, 0.0, 0
    for batch in pts:
        for lam, lip, *_ in fisher_top(*jac(batch)):
            best_f, best_l = max(best_f, lam), max(best_l, lip)
            count += 1
    if eps <= 0:
        return best_f, best_l, count
    x = clip(x0[None] + rng.uniform(-eps, eps, size=(starts,) + shape))
    x[0] = x0
    for _ in range(steps):
        z, j = jac(x)
        tops = fisher_top(z, j)
        grads = []
        for (lam, lip, v, u, p), ji in zip(tops, j):
            best_f, best_l = max(best_f, lam), max(best_l, lip)
            count += 1
            w = u * u - 2 * (p @ u) * u
            sw = p * w - p * (p @ w)
            grads.append((ji.T @ sw).reshape(shape))
        x = clip(x + 0.25 * eps * np.sign(np.array(grads)))
    return best_f, best_l, count
