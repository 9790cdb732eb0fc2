"""Normalisations: BatchNormalization, LayerNormalization, Softmax and LogSoftmax."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import UnsupportedModelError
from ..verify.adjoint import Adj
from ..verify.intervals import Box, elementwise_margin, gamma, round_margin, sum_rows
from .common import (affine_jacobian, attrs, axis_of, const_input, const_value, input_at, mul_box, none_rest,
                      refuse)
from .registry import Op, register

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------ derivatives (gradient graphs)
def _vjp_bn(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.op("Mul", [g[0], _bn_factor(em, node)])] + [None] * (len(node.input) - 1)


def _jvp_bn(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Mul", [t[0], _bn_factor(em, node)])] + [None] * (len(node.output) - 1)


def _bn_factor(em: Emitter, node: onnx.NodeProto) -> str:
    a = attrs(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        refuse(node, "training mode (batch statistics)")
    if any(em.active(n) for n in node.input[1:]):
        refuse(node, "parameters that depend on the input")
    scale = const_value(em, node, node.input[1], "the scale")
    var = const_value(em, node, node.input[4], "the running variance")
    eps = float(a.get("epsilon", 1e-5))
    factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
    rank = len(em.shape(node.input[0]))
    return em.const(factor.reshape((-1,) + (1,) * (rank - 2)).astype(em.dtype(node.input[0])))


def _softmax_axes(em: Emitter, node: onnx.NodeProto) -> list[int]:
    rank = len(em.shape(node.input[0]))
    if em.opset >= 13:
        return [axis_of(node, rank, -1)]
    # Before opset 13 the input is coerced to 2-D at ``axis``: normalised over every later axis.
    return list(range(axis_of(node, rank, 1), rank))


def _softmax_product(em: Emitter, node: onnx.NodeProto, d: list) -> list:
    """y ⊙ (d − Σ d ⊙ y): softmax's Jacobian diag(y) − y yᵀ is symmetric, so one rule serves both modes."""
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(em.op("Mul", [d[0], y]), axes, keepdims=True)
    return [em.op("Mul", [y, em.op("Sub", [d[0], s])])]


def _vjp_logsoftmax(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(g[0], axes, keepdims=True)
    return [em.op("Sub", [g[0], em.op("Mul", [em.op("Exp", [y]), s])])]


def _jvp_logsoftmax(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(em.op("Mul", [t[0], em.op("Exp", [y])]), axes, keepdims=True)
    return [em.op("Sub", [t[0], s])]


def _layernorm_parts(em: Emitter, node: onnx.NodeProto):
    x = node.input[0]
    if any(em.active(n) for n in node.input[1:] if n):
        refuse(node, "scale or bias that depend on the input")
    rank = len(em.shape(x))
    axes = list(range(axis_of(node, rank, -1), rank))
    mean, inv = node.output[1], node.output[2]
    xhat = em.op("Mul", [em.op("Sub", [x, mean]), inv])
    return axes, xhat, inv


def _layernorm_core(em: Emitter, axes: list[int], v: str, xhat: str, inv: str, x: str) -> str:
    """(v - mean(v) - xhat * mean(v * xhat)) * inv over the normalised axes."""
    n = float(np.prod([em.shape(x)[a] for a in axes]))
    m1 = em.op("Div", [em.reduce_sum(v, axes), em.scalar(n, x)])
    m2 = em.op("Div", [em.reduce_sum(em.op("Mul", [v, xhat]), axes), em.scalar(n, x)])
    return em.op("Mul", [em.op("Sub", [em.op("Sub", [v, m1]), em.op("Mul", [xhat, m2])]), inv])


def _vjp_layernorm(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    axes, xhat, inv = _layernorm_parts(em, node)
    gh = em.op("Mul", [g[0], node.input[1]])
    return [_layernorm_core(em, axes, gh, xhat, inv, node.input[0])] + [None] * (len(node.input) - 1)


def _jvp_layernorm(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    axes, xhat, inv = _layernorm_parts(em, node)
    core = _layernorm_core(em, axes, t[0], xhat, inv, node.input[0])
    return [em.op("Mul", [core, node.input[1]]), None, None]




def _bn_affine(ctx, node, ins):
    scale, bias, mean, var = (np.asarray(const_input(node, ins, k, "statistics"), np.float64) for k in range(1, 5))
    eps = float(node.attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _bn_shape(v, nd):
    return v.reshape((1, -1) + (1,) * (nd - 2))


def _bn_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    s, t = _bn_affine(c, n, i)
    return [x * _bn_shape(s, x.ndim) + _bn_shape(t, x.ndim)]


def _bn_ibp(ctx, node, ins):
    x = ins[0]
    s, t = _bn_affine(ctx, node, ins)
    s, t = _bn_shape(s, len(x.shape)), _bn_shape(t, len(x.shape))
    lo = np.minimum(x.lo * s, x.hi * s) + t
    hi = np.maximum(x.lo * s, x.hi * s) + t
    out = Box(lo, hi)
    return out, round_margin(out.mag + np.abs(t), 4)


def _bn_linear(ctx, node, a, ins, out):
    s, t = _bn_affine(ctx, node, ins)
    nd = len(out.shape)
    return [a * _bn_shape(s, nd)] + [None] * 4, sum_rows(a, np.broadcast_to(_bn_shape(t, nd), a.shape[1:]))



def _softmax_axis(ctx, node, nd):
    default = -1 if ctx.opset >= 13 else 1
    return int(node.attrs.get("axis", default)) % nd


def _softmax_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    ax = _softmax_axis(c, n, x.ndim)
    if c.opset < 13 and ax != x.ndim - 1:  # opset < 13: softmax over the flattened trailing axes
        shp = x.shape
        flat = x.reshape(int(np.prod(shp[:ax])), -1)
        e = np.exp(flat - flat.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).reshape(shp)]
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return [e / e.sum(axis=ax, keepdims=True)]


def _softmax_ibp(ctx, node, ins):
    """p_i in [1 / (1 + sum_{j!=i} e^{u_j - l_i}), 1 / (1 + sum_{j!=i} e^{l_j - u_i})]."""
    x = ins[0]
    nd = len(x.shape)
    ax = _softmax_axis(ctx, node, nd)
    lo, hi = x.lo, x.hi
    if ctx.opset < 13 and ax != nd - 1:
        lo, hi = lo.reshape(int(np.prod(x.shape[:ax])), -1), hi.reshape(int(np.prod(x.shape[:ax])), -1)
        ax = 1
    with np.errstate(over="ignore"):  # exp overflow -> inf -> a probability bound of 0 or 1: still sound
        return _softmax_box(x, lo, hi, ax, nd)


def _softmax_box(x, lo, hi, ax, nd):
    # sum over j != i of exp(u_j - l_i) = (sum_j exp(u_j - c) - exp(u_i - c)) * exp(c - l_i), c = max u
    c = hi.max(axis=ax, keepdims=True)
    eu = np.exp(hi - c)
    others_u = np.maximum(eu.sum(axis=ax, keepdims=True) - eu, 0.0)
    p_lo = 1.0 / (1.0 + others_u * np.exp(c - lo))
    c2 = lo.max(axis=ax, keepdims=True)
    el = np.exp(lo - c2)
    others_l = np.maximum(el.sum(axis=ax, keepdims=True) - el, 0.0)
    p_hi = 1.0 / (1.0 + others_l * np.exp(c2 - hi))
    p_lo, p_hi = p_lo.reshape(x.shape), p_hi.reshape(x.shape)
    n = x.shape[ax] if len(lo.shape) == nd else lo.shape[1]
    return Box(np.clip(p_lo, 0.0, 1.0), np.clip(p_hi, 0.0, 1.0)), elementwise_margin(p_hi) + gamma(n + 4) * p_hi


def _layernorm_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    ax = int(n.attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(ax, x.ndim))
    eps = float(n.attrs.get("epsilon", 1e-5))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * np.asarray(i[1], np.float64)
    if input_at(i, 2) is not None:
        y = y + np.asarray(i[2], np.float64)
    return [y]


def layernorm_parts(node, x: Box):
    """LayerNorm's centred value d = x - mean(x) (dependence kept: d_i = (1 - 1/n) x_i - sum_{j!=i} x_j / n) and
    v = mean(d^2) + eps as intervals over ``x``: (axes, n, d_lo, d_hi, v_lo, v_hi). Shared by IBP and the Jacobian rule."""
    nd = len(x.shape)
    ax = int(node.attrs.get("axis", -1)) % nd
    axes = tuple(range(ax, nd))
    n = int(np.prod(x.shape[ax:]))
    eps = float(node.attrs.get("epsilon", 1e-5))
    slo, shi = x.lo.sum(axis=axes, keepdims=True), x.hi.sum(axis=axes, keepdims=True)
    d_lo = x.lo * (1 - 1 / n) - (shi - x.hi) / n
    d_hi = x.hi * (1 - 1 / n) - (slo - x.lo) / n
    sq_lo = np.where((d_lo < 0) & (d_hi > 0), 0.0, np.minimum(d_lo ** 2, d_hi ** 2))
    sq_hi = np.maximum(d_lo ** 2, d_hi ** 2)
    v_lo = sq_lo.mean(axis=axes, keepdims=True) + eps
    v_hi = sq_hi.mean(axis=axes, keepdims=True) + eps
    return axes, n, d_lo, d_hi, v_lo, v_hi


def _layernorm_ibp(ctx, node, ins):
    """IBP of the decomposition: d = x - mean(x) (with the dependence kept: d_i = (1 - 1/n) x_i - sum_{j!=i} x_j / n),
    v = mean(d^2) + eps, y = d / sqrt(v) * gamma + beta. Finite whenever eps > 0."""
    x = ins[0]
    axes, n, d_lo, d_hi, v_lo, v_hi = layernorm_parts(node, x)
    r = Box(1.0 / np.sqrt(v_hi), 1.0 / np.sqrt(v_lo))
    # |d_i| <= sqrt(n v): the normalised value lies in [-sqrt(n), sqrt(n)] whatever the intervals say
    y = mul_box(Box(d_lo, d_hi), r)
    cap = np.sqrt(n)
    y = Box(np.clip(y.lo, -cap, cap), np.clip(y.hi, -cap, cap))
    g = np.asarray(const_input(node, ins, 1, "scale"), np.float64)
    y = mul_box(y, Box.point(g))
    b = input_at(ins, 2)
    if b is not None:
        y = Box(y.lo + np.asarray(b, np.float64), y.hi + np.asarray(b, np.float64))
    return y, gamma(2 * n + 8) * (y.mag + cap * np.abs(g)) + elementwise_margin(y.mag)



# ------------------------------------------------------------------------------ softmax, layer norm
def _sum_adj(a: Adj, axes: tuple[int, ...], scale: float = 1.0) -> Adj:
    """Enclosure of scale * sum over ``axes`` (keepdims) of a cotangent enclosure."""
    n = int(np.prod([a.mid.shape[k] for k in axes])) if axes else 1
    return Adj(scale * a.mid.sum(axis=axes, keepdims=True),
               abs(scale) * a.rad.sum(axis=axes, keepdims=True)).widen(gamma(n + 1))


def _minus(a: Adj, b: Adj) -> Adj:
    return Adj(a.mid - b.mid, a.rad + b.rad).widen(gamma(2))


def _softmax_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """y = softmax(x): dx = y * (g - sum_j g_j y_j), with y enclosed by the forward interval of the output."""
    x = ins[0]
    nd = len(x.shape)
    ax = _softmax_axis(ctx, node, nd)
    if ctx.opset < 13 and ax != nd - 1:
        raise UnsupportedModelError(f"Softmax '{node.name}': the opset < 13 form over flattened axes has no interval "
                                    "Jacobian rule")
    ylo, yhi = np.clip(out.lo, 0.0, 1.0), np.clip(out.hi, 0.0, 1.0)
    s = _sum_adj(adj.times(ylo, yhi), (1 + ax,))
    return none_rest(node, _minus(adj, s).times(ylo, yhi))


def _layernorm_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """y = xhat * gamma + beta, xhat = (x - mean) / sigma: dx = (h - mean(h) - xhat mean(h xhat)) / sigma with
    h = gamma * g; xhat and 1/sigma enclosed as in the engine's IBP rule (finite when epsilon > 0)."""
    x = ins[0]
    axes, n, d_lo, d_hi, v_lo, v_hi = layernorm_parts(node, x)
    w = 1e-6  # float32 evaluation of mean, variance and rsqrt: a generous relative margin
    r_lo, r_hi = (1 - w) / np.sqrt(v_hi), (1 + w) / np.sqrt(v_lo)
    cap = np.sqrt(n)
    c = [d_lo * r_lo, d_lo * r_hi, d_hi * r_lo, d_hi * r_hi]
    xh_lo = np.clip(np.minimum.reduce(c), -cap, cap)
    xh_hi = np.clip(np.maximum.reduce(c), -cap, cap)
    g = np.asarray(ins[1], np.float64)
    h = Adj(adj.mid * g, adj.rad * np.abs(g)).widen(gamma(1))
    radx = tuple(1 + k for k in axes)
    mh = _sum_adj(h, radx, 1.0 / n)
    mhx = _sum_adj(h.times(xh_lo, xh_hi), radx, 1.0 / n)
    shape = h.mid.shape
    term = Adj(np.broadcast_to(mhx.mid, shape), np.broadcast_to(mhx.rad, shape)).times(xh_lo, xh_hi)
    inner = _minus(_minus(h, Adj(np.broadcast_to(mh.mid, shape), np.broadcast_to(mh.rad, shape))), term)
    return none_rest(node, inner.times(r_lo, r_hi))


def _layernorm_outputs(node: onnx.NodeProto, opset: int, prefix: str) -> None:
    """Mean and inverse standard deviation (the rules reuse them rather than recomputing)."""
    while len(node.output) < 3:
        node.output.append("")
    for i, what in ((1, "mean"), (2, "invstd")):
        if not node.output[i]:
            node.output[i] = prefix + "_" + what


# ------------------------------------------------------------------------------ global Lipschitz constants
def batchnorm_scale(gamma: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray | None:
    """Per-channel slope gamma / sqrt(var + eps) of BatchNormalization in inference mode.

    None for statistics no real BatchNorm has (negative or NaN variance, non-finite gamma): such a
    layer is neither folded (``fimaudit.graph.fold``) nor bounded.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    denom = np.asarray(var, dtype=np.float64) + eps
    if not (np.all(np.isfinite(denom)) and np.all(denom > 0) and np.all(np.isfinite(gamma))):
        return None
    return gamma / np.sqrt(denom)


def _lip_batchnorm(p, node) -> None:
    c = [p.g.consts.get(i) for i in node.inputs[1:5]]
    if len(c) < 4 or any(v is None for v in c):
        return p.unbounded(node, f"BatchNormalization '{node.name}' without constant statistics")
    scale = batchnorm_scale(c[0], c[3], float(node.attrs.get("epsilon", 1e-5)))
    if scale is None:  # negative or NaN variance, non-finite gamma: no constant
        return p.unbounded(node, f"BatchNormalization '{node.name}' has negative or NaN variance")
    m = float(np.max(np.abs(scale)))
    return p.scale(node, m, "max |gamma / sqrt(var + eps)|", node.inputs[0])


def _lip_softmax(p, node) -> None:
    p.scale(node, 0.5, "|diag(p) - p p^T| <= 1/2")


def _lip_logsoftmax(p, node) -> None:
    n = p.g.shapes.get(node.inputs[0], (0, 0))[-1] or 1
    p.scale(node, 1 + math.sqrt(n), "|I - 1 p^T| <= 1 + sqrt(K)")


def _lip_layernorm(p, node) -> None:
    g = p.g
    scale = g.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    eps = float(node.attrs.get("epsilon", 1e-5))
    gmax = float(np.max(np.abs(scale))) if scale is not None else 1.0
    p.scale(
        node, gmax / math.sqrt(eps),
        f"global: max|gamma|/sqrt(eps) = {gmax:.3g}/sqrt({eps:g}); LayerNorm has no tighter global constant",
    )


# ------------------------------------------------------------------------------------------------ the entries
register(
    "norm",
    Op("BatchNormalization", vjp=_vjp_bn, jvp=_jvp_bn, lipschitz=_lip_batchnorm, checks_weights=True, point=_bn_p,
       ibp=_bn_ibp, linear=_bn_linear, jacobian=affine_jacobian, weight_inputs=(1,)),
    Op("LayerNormalization", nonlinear=True,
       vjp=_vjp_layernorm, jvp=_jvp_layernorm, outputs=_layernorm_outputs, lipschitz=_lip_layernorm, checks_weights=True,
       point=_layernorm_p, ibp=_layernorm_ibp, jacobian=_layernorm_jacobian, needs_shape=True),
    Op("Softmax", nonlinear=True,
       vjp=_softmax_product, jvp=_softmax_product, lipschitz=_lip_softmax, point=_softmax_p,
       ibp=_softmax_ibp, jacobian=_softmax_jacobian, logit_walk="softmax"),
    Op("LogSoftmax", vjp=_vjp_logsoftmax, jvp=_jvp_logsoftmax, lipschitz=_lip_logsoftmax, logit_walk="softmax"),
)
