"""Interval VJPs: bounds on the model's Jacobian over an input set, by a backward pass through the graph.

Given cotangent rows C (R, *logit_shape) (constants: e_k for the logit Jacobian J, e_k - e_y for the
margin Jacobian D), the pass carries, for every tensor t, an enclosure of C . dlogits/dt valid at every
point of the set, in midpoint-radius form ``Adj(mid, rad)``: the true cotangent lies in
[mid - rad, mid + rad] elementwise (``fimaudit.verify.adjoint.Adj``). Each operator's rule (the ``jacobian``
hook of its entry in the operator table, ``fimaudit.ops``) maps the enclosure of its output's cotangent to its
inputs':

  * linear operators with constant weights (Conv, Gemm, MatMul, BatchNorm, pooling means, Add, Concat,
    Reshape and every data-movement op): mid -> L^T mid, rad -> |L|^T rad, reusing the CROWN rule
    (the ``linear`` hook) with the weights replaced by their absolute values for the radius;
  * elementwise nonlinearities: the cotangent times the range of the derivative over the forward
    interval of the input (ReLU: {0}, {1} or [0, 1]; Sigmoid/Tanh/Erf: the bell-shaped derivative's
    range; LeakyReLU, Clip, HardSigmoid, Softplus likewise), an interval product;
  * MaxPool: every window element that can be the maximum over the set gets [0, 1] (exactly 1 when it
    dominates its window), a sound but loose routing;
  * Mul / MatMul of two activations: the product rule with the forward intervals of the other factor.

Rounding: the enclosure is widened at every step by the float32 error bound of the same step (gamma_n of
fimaudit.verify.intervals times the magnitudes), so it holds for the Jacobian computed in float32 by a
gradient graph (what ``fimaudit scan`` measures) as well as for the exact one; the forward intervals
themselves already contain the float32 evaluation (the engine's margins). Operators without a rule
(Softmax or LayerNormalization inside the graph, Div by an activation, ...) make the pass refuse with
``UnsupportedModelError`` naming the operator.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import UnsupportedModelError
from .adjoint import Adj
from .intervals import Box


def jacobian_ops() -> tuple[str, ...]:
    """Operators with an interval Jacobian rule."""
    return ops.supported("jacobian")


def ancestors(g, name: str) -> list:
    """The varying nodes the tensor ``name`` depends on, in graph order."""
    need = {name}
    keep = []
    for node in reversed(g.var_nodes):
        if any(o in need for o in node.outputs if o):
            keep.append(node)
            need.update(i for i in node.inputs if i and g.graph.is_var(i))
    return keep[::-1]


def check_supported(g) -> None:
    """Raise ``UnsupportedModelError`` naming the first operator (on the way to the logits) without a rule."""
    for node in ancestors(g, g.logit_name):
        if not ops.TABLE[node.op].has("jacobian"):
            raise UnsupportedModelError(
                f"no interval Jacobian rule for operator {node.op} (node '{node.name}'); local bounds support: "
                + ", ".join(jacobian_ops()))


def backward_intervals(g, bounds, rows: np.ndarray) -> Adj:
    """Enclosure of rows . d(logits)/d(model input) over the set whose forward ``bounds`` are given.

    ``rows``: (R, *logit_shape) constant cotangents. Returns ``Adj`` with arrays (R, *input_shape)."""
    check_supported(g)
    rows = np.asarray(rows, dtype=np.float64)
    adj: dict[str, Adj] = {g.logit_name: Adj.exact(rows)}
    g.ctx.cache["jac_hints"] = getattr(bounds, "hints", {})  # facts certified for these bounds only
    try:
        _backward(g, bounds, adj)
    finally:
        g.ctx.cache.pop("jac_hints", None)
    got = adj.get(g.input_name)
    if got is None:
        z = np.zeros((rows.shape[0],) + g.input_shape)
        return Adj(z, z.copy())
    return got


def _backward(g, bounds, adj: dict) -> None:
    for node in reversed(ancestors(g, g.logit_name)):
        out = node.outputs[0]
        a = adj.pop(out, None)
        if a is None:
            continue
        ins = [None if not i else (bounds[i] if g.graph.is_var(i) else g.consts.get(i)) for i in node.inputs]
        rule = ops.TABLE[node.op].jacobian
        if a.gen is not None:
            if getattr(rule, "generators", False):
                biggest = max([int(np.prod(v.shape)) for v in ins if isinstance(v, Box)] + [int(np.prod(out_shape))
                              for out_shape in [bounds[out].shape]])
                a = a.capped(biggest)
            else:
                a = a.fold()
        res = rule(g.ctx, node, a, ins, bounds[out])
        for i, ai in zip(node.inputs, res):
            if ai is None or not i or not g.graph.is_var(i):
                continue
            adj[i] = adj[i] + ai if i in adj else ai


__all__ = ["Adj", "backward_intervals", "check_supported", "jacobian_ops"]
