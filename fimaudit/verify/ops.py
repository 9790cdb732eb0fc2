"""The operator table of the bound engine: ONE registry keyed by ONNX op type.

Each entry (``OpRule``) holds
  * ``point(ctx, node, ins) -> list[ndarray]``: the operator in float64 (constant folding of shape
    chains, and the engine's float64 reference evaluation);
  * ``ibp(ctx, node, ins) -> (Box, margin)``: interval bound propagation (Gowal et al. 2018) given the
    input intervals (``Box``) and constants (``ndarray``), with the float32 rounding margin of the op;
  * ``linear(ctx, node, A, ins, out) -> (A_ins, bias)`` (optional): one step of CROWN's backward
    pass (Zhang et al. 2018; Xu et al. 2020). ``A`` has shape (S, *out_shape); the rule returns, for
    each input, the coefficient array (S, *in_shape) (None for constants) and a bias (S,) such that
    for every output value y in the op's image of the input intervals:  A.y >= sum_i A_i.x_i + bias.
    An op without ``linear`` is concretised by its interval in the backward pass (IBP fallback).
  * ``jacobian(ctx, node, adj, ins, out) -> [Adj | None per input]`` (optional): the interval VJP, one
    step of the backward pass that bounds the Jacobian over the set (fimaudit.verify.jacobian registers
    these with ``attach``; ``adj``: midpoint-radius cotangent rows (R, *out_shape)). An op without it
    makes the local Fisher/Lipschitz bound refuse the model, naming the op.

Rules never mutate their inputs. ``ctx`` (``OpContext``) holds the opset, the static shapes and a
per-node cache. Docs: docs/verify.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import erf, expit

from ..errors import UnsupportedModelError
from .conv import conv, conv_adjoint, out_size, window_argmax_offsets, window_reduce
from .intervals import Box, as_box, elementwise_margin, gamma, round_margin

Value = Any  # Box (depends on the input) or np.ndarray (constant)


@dataclass
class OpContext:
    opset: int
    shapes: dict[str, tuple[int, ...]]
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpRule:
    point: Callable
    ibp: Callable | None = None
    linear: Callable | None = None
    note: str = ""
    jacobian: Callable | None = None  # interval VJP (fimaudit.verify.jacobian), attached with ``attach``


OPS: dict[str, OpRule] = {}


def rule(*names: str, point=None, ibp=None, linear=None, note: str = "") -> None:
    for name in names:
        OPS[name] = OpRule(point, ibp, linear, note)


def attach(name: str, **fields) -> None:
    """Add fields (e.g. ``jacobian=...``) to the existing entry of ``name`` (rules kept in other modules)."""
    import dataclasses

    OPS[name] = dataclasses.replace(OPS[name], **fields)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _input(ins, i, default=None):
    return ins[i] if len(ins) > i and ins[i] is not None else default


def _const(node, ins, i, what: str):
    v = _input(ins, i)
    if isinstance(v, Box):
        raise UnsupportedModelError(f"{node.op} '{node.name}': its {what} depends on the input; the bound engine "
                                    "needs it constant")
    return v


def unbroadcast(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a (S, *out) over the axes broadcasting added to an input of ``shape`` -> (S, *shape)."""
    out_nd = a.ndim - 1
    lead = out_nd - len(shape)
    if lead:
        a = a.sum(axis=tuple(range(1, 1 + lead)))
    axes = tuple(1 + i for i, n in enumerate(shape) if n == 1 and a.shape[1 + i] != 1)
    if axes:
        a = a.sum(axis=axes, keepdims=True)
    return a.reshape((a.shape[0],) + tuple(shape))


def _sum_rows(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise <a[s], v> with v broadcast to a's trailing shape -> (S,)."""
    v = np.broadcast_to(np.asarray(v, dtype=np.float64), a.shape[1:])
    return a.reshape(a.shape[0], -1) @ v.reshape(-1)


def _pos_neg(a: np.ndarray):
    return np.maximum(a, 0.0), np.minimum(a, 0.0)


def concretize_lower(a: np.ndarray, box: Box) -> np.ndarray:
    """min over the box of the rows of a: sum(a+ lo + a- hi) -> (S,); a zero coefficient ignores an infinite end."""
    ap, an = _pos_neg(a)
    if np.all(np.isfinite(box.lo)) and np.all(np.isfinite(box.hi)):
        return _sum_rows(ap, box.lo) + _sum_rows(an, box.hi)
    lo = np.broadcast_to(box.lo, a.shape[1:])[None]
    hi = np.broadcast_to(box.hi, a.shape[1:])[None]
    terms = np.where(ap > 0, ap * np.where(ap > 0, lo, 0.0), 0.0) + np.where(an < 0, an * np.where(an < 0, hi, 0.0), 0.0)
    return terms.reshape(a.shape[0], -1).sum(axis=1)


# ----------------------------------------------------------------------------------------- elementwise
# Unary functions: the float64 function, the points where its monotonicity changes (None: nondecreasing),
# whether the op is exact in float32 (no margin), and the linear relaxation (None: IBP only).

LOWER_SLOPES = ("adaptive", "low", "high")  # ReLU-like lower lines tried by ``BoundGraph.margins``


def _relu_like_relax(alpha: float, mode: str = "adaptive"):
    """max(x, alpha x) for 0 <= alpha < 1: secant above, a line through the kink below: any slope in
    [alpha, 1] is sound; CROWN's adaptive choice is 1 when u > -l, else alpha ("low": alpha, "high": 1)."""

    def relax(lo, hi):
        lo = np.minimum(lo, hi)
        cross = (lo < 0) & (hi > 0)
        lo_s = np.where(hi <= 0, alpha, 1.0)
        up_s = lo_s.copy()
        up_b = np.zeros_like(lo)
        den = np.where(cross, hi - lo, 1.0)
        s = np.where(cross, (hi - alpha * lo) / den, up_s)
        up_b = np.where(cross, alpha * lo - s * lo, up_b)
        up_s = s
        pick = {"adaptive": np.where(hi > -lo, 1.0, alpha), "low": alpha, "high": 1.0}[mode]
        lo_s = np.where(cross, pick, lo_s)
        return lo_s, np.zeros_like(lo), up_s, up_b

    return relax


def _sigmoid_like_relax(f, df):
    """Sigmoid/Tanh/Erf-like (increasing, convex for x < 0, concave for x > 0). Convex part: tangent at the
    midpoint below, secant above; concave: the reverse; across 0: lines of slope k = min(f'(l), f'(u))
    through (l, f(l)) below and (u, f(u)) above (sound since f' >= k on [l, u])."""

    def relax(lo, hi):
        lo = np.minimum(lo, hi)
        flo, fhi = f(lo), f(hi)
        width = hi - lo
        thin = width < 1e-12
        sec = np.where(thin, df(lo), (fhi - flo) / np.where(thin, 1.0, width))
        mid = 0.5 * (lo + hi)
        tan_s, tan_b = df(mid), f(mid) - df(mid) * mid
        sec_b = flo - sec * lo
        k = np.minimum(df(lo), df(hi))
        convex, concave = hi <= 0, lo >= 0
        lo_s = np.where(convex, tan_s, np.where(concave, sec, k))
        lo_b = np.where(convex, tan_b, np.where(concave, sec_b, flo - k * lo))
        up_s = np.where(convex, sec, np.where(concave, tan_s, k))
        up_b = np.where(convex, sec_b, np.where(concave, tan_b, fhi - k * hi))
        return lo_s, lo_b, up_s, up_b

    return relax


def _clip_relax(a: float, b: float):
    """clip(x, a, b): exact where [l, u] stays in one piece; otherwise chords through the graph's corners
    (valid since clip is convex on (-inf, b] and concave on [a, inf))."""

    def relax(lo, hi):
        lo = np.minimum(lo, hi)
        f = lambda x: np.clip(x, a, b)  # noqa: E731
        flo, fhi = f(lo), f(hi)
        const = (hi <= a) | (lo >= b)
        ident = (lo >= a) & (hi <= b)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        sec = (fhi - flo) / span
        # lower line
        lower_kink_only = (lo < a) & (hi > a) & (hi <= b)  # convex: secant above, below y >= a or y >= x
        upper_kink_only = (lo >= a) & (lo < b) & (hi > b)  # concave: secant below, above y <= b or y <= x
        both = (lo < a) & (hi > b)
        lo_s = np.zeros_like(lo)
        lo_b = flo.copy()
        up_s = np.zeros_like(lo)
        up_b = fhi.copy()
        lo_s = np.where(ident, 1.0, lo_s)
        lo_b = np.where(ident, 0.0, lo_b)
        up_s = np.where(ident, 1.0, up_s)
        up_b = np.where(ident, 0.0, up_b)
        choose_x = (hi - a) > (a - lo)
        lo_s = np.where(lower_kink_only, np.where(choose_x, 1.0, 0.0), lo_s)
        lo_b = np.where(lower_kink_only, np.where(choose_x, 0.0, a), lo_b)
        up_s = np.where(lower_kink_only, sec, up_s)
        up_b = np.where(lower_kink_only, flo - sec * lo, up_b)
        choose_xu = (b - lo) > (hi - b)
        lo_s = np.where(upper_kink_only, sec, lo_s)
        lo_b = np.where(upper_kink_only, flo - sec * lo, lo_b)
        up_s = np.where(upper_kink_only, np.where(choose_xu, 1.0, 0.0), up_s)
        up_b = np.where(upper_kink_only, np.where(choose_xu, 0.0, b), up_b)
        # both kinks: below, the chord from (a, a) to (u, b); above, the chord from (l, a) to (b, b)
        s1 = (b - a) / np.where(hi - a > 0, hi - a, 1.0)
        s2 = (b - a) / np.where(b - lo > 0, b - lo, 1.0)
        lo_s = np.where(both, s1, lo_s)
        lo_b = np.where(both, a - s1 * a, lo_b)
        up_s = np.where(both, s2, up_s)
        up_b = np.where(both, b - s2 * b, up_b)
        lo_s = np.where(const, 0.0, lo_s)
        lo_b = np.where(const, flo, lo_b)
        up_s = np.where(const, 0.0, up_s)
        up_b = np.where(const, fhi, up_b)
        return lo_s, lo_b, up_s, up_b

    return relax


def _unary_linear(relax_of):
    def linear(ctx, node, a, ins, out):
        x = ins[0]
        lo_s, lo_b, up_s, up_b = relax_of(node)(x.lo, x.hi)
        ap, an = _pos_neg(a)
        a_in = ap * lo_s + an * up_s
        bias = _sum_rows(ap, lo_b) + _sum_rows(an, up_b)
        return [a_in], bias

    return linear


def _dsig(x):
    s = expit(x)
    return s * (1 - s)


def _dtanh(x):
    return 1.0 - np.tanh(x) ** 2


def _derf(x):
    return 2.0 / np.sqrt(np.pi) * np.exp(-x * x)


def _hardsigmoid_params(node):
    return float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))


def _clip_params(ctx, node, ins):
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    lo = _const(node, ins, 1, "min")
    hi = _const(node, ins, 2, "max")
    return (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))


def _monotone_ibp(f, exact: bool = False, crit: tuple[float, ...] = ()):
    """IBP of an elementwise function, nondecreasing between the critical points ``crit``."""

    def ibp(ctx, node, ins):
        x = ins[0]
        flo, fhi = f(ctx, node, ins, x.lo), f(ctx, node, ins, x.hi)
        lo, hi = np.minimum(flo, fhi), np.maximum(flo, fhi)
        for c in crit:
            inside = (x.lo < c) & (x.hi > c)
            if np.any(inside):
                fc = f(ctx, node, ins, np.full_like(x.lo, c))
                lo = np.where(inside, np.minimum(lo, fc), lo)
                hi = np.where(inside, np.maximum(hi, fc), hi)
        margin = 0.0 if exact else elementwise_margin(np.maximum(np.abs(lo), np.abs(hi)))
        return Box(lo, hi), margin

    return ibp


def _unary(name, f, *, exact=False, crit=(), relax=None, increasing=True):
    """Register an elementwise op; ``f(ctx, node, ins, x)``; ``increasing`` False: nonincreasing (no crit)."""

    def point(ctx, node, ins):
        return [f(ctx, node, ins, np.asarray(ins[0], dtype=np.float64))]

    rule(name, point=point, ibp=_monotone_ibp(f, exact, crit), linear=None if relax is None else _unary_linear(relax))


def _slope_mode(ctx) -> str:
    return ctx.cache.get("lower_slope", "adaptive")


_unary("Relu", lambda c, n, i, x: np.maximum(x, 0.0), exact=True)
OPS["Relu"] = OpRule(OPS["Relu"].point, OPS["Relu"].ibp,
                     lambda c, n, a, i, o: _unary_linear(lambda _n: _relu_like_relax(0.0, _slope_mode(c)))(c, n, a, i, o))


def _leaky(c, n, i, x):
    a = float(n.attrs.get("alpha", 0.01))
    return np.where(x >= 0, x, a * x)


def _leaky_linear(ctx, node, a, ins, out):
    alpha = float(node.attrs.get("alpha", 0.01))
    if not 0.0 <= alpha < 1.0:
        return None
    relax = _relu_like_relax(alpha, _slope_mode(ctx))
    return _unary_linear(lambda _n: relax)(ctx, node, a, ins, out)


OPS["LeakyRelu"] = OpRule(lambda c, n, i: [_leaky(c, n, i, np.asarray(i[0], np.float64))],
                          _monotone_ibp(_leaky, crit=(0.0,)), _leaky_linear)
_unary("Sigmoid", lambda c, n, i, x: expit(x), relax=lambda node: _sigmoid_like_relax(expit, _dsig))
_unary("Tanh", lambda c, n, i, x: np.tanh(x), relax=lambda node: _sigmoid_like_relax(np.tanh, _dtanh))
_unary("Erf", lambda c, n, i, x: erf(x), relax=lambda node: _sigmoid_like_relax(erf, _derf))
_unary("HardSigmoid", lambda c, n, i, x: np.clip(_hardsigmoid_params(n)[0] * x + _hardsigmoid_params(n)[1], 0, 1))
_unary("HardSwish", lambda c, n, i, x: x * np.clip(x / 6.0 + 0.5, 0, 1), crit=(-1.5,))
_unary("Clip", lambda c, n, i, x: np.clip(x, *_clip_params(c, n, i)), exact=True)
_unary("Exp", lambda c, n, i, x: np.exp(x))
_unary("Log", lambda c, n, i, x: np.log(np.where(x > 0, x, 0.0)))
_unary("Sqrt", lambda c, n, i, x: np.sqrt(np.maximum(x, 0.0)))
_unary("Softplus", lambda c, n, i, x: np.logaddexp(0.0, x))
_unary("Elu", lambda c, n, i, x: np.where(x > 0, x, float(n.attrs.get("alpha", 1.0)) * np.expm1(np.minimum(x, 0))))
_unary("Neg", lambda c, n, i, x: -x, exact=True)
_unary("Abs", lambda c, n, i, x: np.abs(x), exact=True, crit=(0.0,))
_unary("Reciprocal", lambda c, n, i, x: 1.0 / x)
_unary("Sign", lambda c, n, i, x: np.sign(x), exact=True)
_unary("Floor", lambda c, n, i, x: np.floor(x), exact=True)
_unary("Ceil", lambda c, n, i, x: np.ceil(x), exact=True)
_unary("Round", lambda c, n, i, x: np.round(x), exact=True)  # numpy and ONNX both round half to even
_unary("Cast", lambda c, n, i, x: x, exact=True)  # float casts only (integer casts of inputs are refused upstream)


def _affine_unary_linear(slope_of):
    """An op y = s * x + t elementwise (Neg, HardSigmoid's inner map): exact linear rule."""

    def linear(ctx, node, a, ins, out):
        s, t = slope_of(ctx, node, ins)
        return [a * s], _sum_rows(a, np.broadcast_to(t, a.shape[1:]))

    return linear


OPS["Neg"] = OpRule(OPS["Neg"].point, OPS["Neg"].ibp, _affine_unary_linear(lambda c, n, i: (-1.0, 0.0)))
OPS["Cast"] = OpRule(OPS["Cast"].point, OPS["Cast"].ibp, _affine_unary_linear(lambda c, n, i: (1.0, 0.0)))


def _hs_linear(ctx, node, a, ins, out):
    al, be = _hardsigmoid_params(node)
    x = ins[0]
    t = Box(np.minimum(al * x.lo, al * x.hi) + be, np.maximum(al * x.lo, al * x.hi) + be)
    lo_s, lo_b, up_s, up_b = _clip_relax(0.0, 1.0)(t.lo, t.hi)
    ap, an = _pos_neg(a)
    coef_t = ap * lo_s + an * up_s
    bias = _sum_rows(ap, lo_b) + _sum_rows(an, up_b) + _sum_rows(coef_t, np.full(a.shape[1:], be))
    return [coef_t * al], bias


def _clip_linear(ctx, node, a, ins, out):
    lo_c, hi_c = _clip_params(ctx, node, ins)
    x = ins[0]
    lo_s, lo_b, up_s, up_b = _clip_relax(lo_c, hi_c)(x.lo, x.hi)
    ap, an = _pos_neg(a)
    return [ap * lo_s + an * up_s] + [None] * (len(node.inputs) - 1), _sum_rows(ap, lo_b) + _sum_rows(an, up_b)


OPS["HardSigmoid"] = OpRule(OPS["HardSigmoid"].point, OPS["HardSigmoid"].ibp, _hs_linear)
OPS["Clip"] = OpRule(OPS["Clip"].point, OPS["Clip"].ibp, _clip_linear)
rule("Identity", "Dropout", point=lambda c, n, i: [np.asarray(i[0])],
     ibp=lambda c, n, i: (i[0], 0.0), linear=lambda c, n, a, i, o: ([a] + [None] * (len(n.inputs) - 1), np.zeros(a.shape[0])))


# ------------------------------------------------------------------------------------------- binary
def _bin_point(f):
    return lambda c, n, i: [f(np.asarray(i[0]), np.asarray(i[1]))]


def _add_ibp(ctx, node, ins):
    x, y = as_box(ins[0]), as_box(ins[1])
    lo, hi = x.lo + y.lo, x.hi + y.hi
    return Box(lo, hi), round_margin(np.maximum(np.abs(lo), np.abs(hi)) + 0.0)


def _sub_ibp(ctx, node, ins):
    x, y = as_box(ins[0]), as_box(ins[1])
    lo, hi = x.lo - y.hi, x.hi - y.lo
    return Box(lo, hi), round_margin(np.maximum(np.abs(lo), np.abs(hi)))


def _mul_box(x: Box, y: Box) -> Box:
    c = np.stack(np.broadcast_arrays(x.lo * y.lo, x.lo * y.hi, x.hi * y.lo, x.hi * y.hi))
    return Box(c.min(axis=0), c.max(axis=0))


def _mul_ibp(ctx, node, ins):
    out = _mul_box(as_box(ins[0]), as_box(ins[1]))
    return out, round_margin(out.mag)


def _div_ibp(ctx, node, ins):
    """x / y: x times [1/hi, 1/lo] where y keeps one sign; unbounded (-inf, inf) where y's interval holds 0."""
    x = as_box(ins[0])
    y = as_box(ins[1])
    zero = (y.lo <= 0) & (y.hi >= 0)
    safe = Box(np.where(zero, 1.0, y.lo), np.where(zero, 1.0, y.hi))
    out = _mul_box(x, Box(1.0 / safe.hi, 1.0 / safe.lo))
    zero = np.broadcast_to(zero, out.shape)
    out = Box(np.where(zero, -np.inf, out.lo), np.where(zero, np.inf, out.hi))
    return out, round_margin(np.where(zero, 0.0, out.mag), 2)


def _add_linear(sign: float):
    def linear(ctx, node, a, ins, out):
        res, bias = [], np.zeros(a.shape[0])
        for k, v in enumerate(ins[:2]):
            s = 1.0 if k == 0 else sign
            if isinstance(v, Box):
                res.append(unbroadcast(a * s, v.shape))
            else:
                res.append(None)
                bias = bias + _sum_rows(a * s, np.broadcast_to(v, a.shape[1:]))
        return res, bias

    return linear


def _mul_linear(ctx, node, a, ins, out):
    x, y = ins[0], ins[1]
    if not isinstance(x, Box) or not isinstance(y, Box):  # scaling by a constant
        k, c = (0, y) if isinstance(x, Box) else (1, x)
        var = ins[k]
        coef = unbroadcast(a * np.asarray(c, dtype=np.float64), var.shape)
        return ([coef, None] if k == 0 else [None, coef]), np.zeros(a.shape[0])
    # McCormick (1976): x y >= ly x + lx y - lx ly ; x y <= ly x + ux y - ux ly (one fixed plane each)
    shape = np.broadcast_shapes(x.shape, y.shape)
    lx, ux = np.broadcast_to(x.lo, shape), np.broadcast_to(x.hi, shape)
    ly = np.broadcast_to(y.lo, shape)
    ap, an = _pos_neg(a)
    cx = (ap + an) * ly
    cy = ap * lx + an * ux
    bias = -_sum_rows(ap, lx * ly) - _sum_rows(an, ux * ly)
    return [unbroadcast(cx, x.shape), unbroadcast(cy, y.shape)], bias


def _div_linear(ctx, node, a, ins, out):
    if isinstance(ins[1], Box):
        return None  # x / y with y varying: IBP only
    d = np.asarray(ins[1], dtype=np.float64)
    return [unbroadcast(a / d, ins[0].shape), None], np.zeros(a.shape[0])


rule("Add", "Sum", point=_bin_point(np.add), ibp=_add_ibp, linear=_add_linear(1.0))
def _sum_ibp(ctx, node, ins):
    boxes = [as_box(v) for v in ins]
    lo, hi = sum(b.lo for b in boxes), sum(b.hi for b in boxes)
    return Box(lo, hi), round_margin(sum(b.mag for b in boxes), len(boxes))


def _sum_linear(ctx, node, a, ins, out):
    res, bias = [], np.zeros(a.shape[0])
    for v in ins:
        if isinstance(v, Box):
            res.append(unbroadcast(a, v.shape))
        else:
            res.append(None)
            bias = bias + _sum_rows(a, np.broadcast_to(v, a.shape[1:]))
    return res, bias


OPS["Sum"] = OpRule(lambda c, n, i: [sum(np.asarray(v, np.float64) for v in i)], _sum_ibp, _sum_linear)
rule("Sub", point=_bin_point(np.subtract), ibp=_sub_ibp, linear=_add_linear(-1.0))
rule("Mul", point=_bin_point(np.multiply), ibp=_mul_ibp, linear=_mul_linear)
rule("Div", point=_bin_point(lambda x, y: x / y if np.issubdtype(np.result_type(x, y), np.floating)
                             else np.floor_divide(x, y)), ibp=_div_ibp, linear=_div_linear)
def _fold(f, arrays):
    out = arrays[0]
    for v in arrays[1:]:
        out = f(out, v)
    return out


rule("Max", point=lambda c, n, i: [_fold(np.maximum, [np.asarray(v) for v in i])],
     ibp=lambda c, n, i: (Box(_fold(np.maximum, [as_box(v).lo for v in i]), _fold(np.maximum, [as_box(v).hi for v in i])), 0.0))
rule("Min", point=lambda c, n, i: [_fold(np.minimum, [np.asarray(v) for v in i])],
     ibp=lambda c, n, i: (Box(_fold(np.minimum, [as_box(v).lo for v in i]), _fold(np.minimum, [as_box(v).hi for v in i])), 0.0))


def _pow_ibp(ctx, node, ins):
    x = ins[0]
    p = _const(node, ins, 1, "exponent")
    p = float(np.asarray(p).reshape(-1)[0]) if np.asarray(p).size == 1 else None
    if p is None:
        raise UnsupportedModelError(f"Pow '{node.name}': only a scalar constant exponent is supported")
    if p == 2.0:
        lo = np.where((x.lo < 0) & (x.hi > 0), 0.0, np.minimum(x.lo ** 2, x.hi ** 2))
        hi = np.maximum(x.lo ** 2, x.hi ** 2)
        return Box(lo, hi), round_margin(hi)
    if float(p).is_integer() and p > 0 and int(p) % 2 == 1:
        return x.map(lambda v: v ** p), elementwise_margin(x.map(lambda v: v ** p).mag)
    if np.any(x.lo < 0):
        raise UnsupportedModelError(f"Pow '{node.name}': exponent {p:g} of an input that can be negative")
    vals = (x.lo ** p, x.hi ** p)
    out = Box(np.minimum(*vals), np.maximum(*vals))
    return out, elementwise_margin(out.mag)


def _pow_linear(ctx, node, a, ins, out):
    p = np.asarray(ins[1]).reshape(-1)
    if p.size != 1 or float(p[0]) != 2.0:
        return None
    x = ins[0]  # x^2 is convex: the secant above, the tangent at the midpoint below
    l, u = x.lo, x.hi
    m = 0.5 * (l + u)
    ap, an = _pos_neg(a)
    lo_s, lo_b = 2 * m, -m * m
    up_s, up_b = l + u, -l * u
    return [ap * lo_s + an * up_s, None], _sum_rows(ap, lo_b) + _sum_rows(an, up_b)


rule("Pow", point=_bin_point(np.power), ibp=_pow_ibp, linear=_pow_linear)


def _static_only(name):
    def ibp(ctx, node, ins):
        raise UnsupportedModelError(f"{name} '{node.name}' depends on the input: no bound rule for it")

    return ibp


def _where_point(c, n, i):
    return [np.where(np.asarray(i[0]).astype(bool), i[1], i[2])]


def _cos_point(c, n, i):
    shape = tuple(int(v) for v in np.asarray(i[0]).reshape(-1))
    val = n.attrs.get("value")
    if val is not None:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(val).reshape(-1)
        return [np.full(shape, arr[0], dtype=arr.dtype)]
    return [np.zeros(shape, dtype=np.float32)]


rule("Equal", point=_bin_point(np.equal), ibp=_static_only("Equal"))
rule("Where", point=_where_point, ibp=_static_only("Where"))
rule("ConstantOfShape", point=_cos_point, ibp=_static_only("ConstantOfShape"))
rule("Shape", point=lambda c, n, i: [np.array(np.asarray(i[0]).shape, dtype=np.int64)],
     ibp=_static_only("Shape"))  # a Shape is static: folded from the inferred shapes
rule("Range", point=lambda c, n, i: [np.arange(np.asarray(i[0]).item(), np.asarray(i[1]).item(), np.asarray(i[2]).item())],
     ibp=_static_only("Range"))


# ----------------------------------------------------------------------------------- data movement
def _axes_arg(node, ins, i):
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    v = _input(ins, i)
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _reshape_p(c, n, i):
    x = np.asarray(i[0])
    shape = [int(s) for s in np.asarray(i[1]).reshape(-1)]
    if not int(n.attrs.get("allowzero", 0)):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten_p(c, n, i):
    x = np.asarray(i[0])
    ax = int(n.attrs.get("axis", 1))
    ax = ax + x.ndim if ax < 0 else ax
    return [x.reshape(int(np.prod(x.shape[:ax])), -1)]


def _transpose_p(c, n, i):
    x = np.asarray(i[0])
    perm = n.attrs.get("perm")
    return [np.transpose(x, None if perm is None else [int(p) for p in perm])]


def _squeeze_p(c, n, i):
    x = np.asarray(i[0])
    axes = _axes_arg(n, i, 1)
    return [np.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes))]


def _unsqueeze_p(c, n, i):
    x = np.asarray(i[0])
    axes = sorted(a % (x.ndim + len(_axes_arg(n, i, 1))) for a in _axes_arg(n, i, 1))
    for a in axes:
        x = np.expand_dims(x, a)
    return [x]


def _slice_p(c, n, i):
    x = np.asarray(i[0])
    if "starts" in n.attrs:  # opset < 10
        starts, ends = n.attrs["starts"], n.attrs["ends"]
        axes = n.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = np.asarray(i[1]).reshape(-1), np.asarray(i[2]).reshape(-1)
        axes = np.asarray(_input(i, 3, np.arange(len(starts)))).reshape(-1)
        steps = np.asarray(_input(i, 4, np.ones(len(starts), np.int64))).reshape(-1)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % x.ndim
        dim = x.shape[a]
        s, e, st = int(s), int(e), int(st)
        s = max(min(s + dim if s < 0 else s, dim), 0) if st > 0 else max(min(s + dim if s < 0 else s, dim - 1), -1)
        if e < -dim:
            e = -1 if st < 0 else 0
        else:
            e = e + dim if e < 0 else e
            e = max(min(e, dim), 0) if st > 0 else max(min(e, dim - 1), -1)
        index[a] = slice(s, None if (st < 0 and e < 0) else e, st)
    return [x[tuple(index)]]


def _gather_p(c, n, i):
    x = np.asarray(i[0])
    idx = np.asarray(i[1]).astype(np.int64)
    ax = int(n.attrs.get("axis", 0)) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[ax], idx)
    return [np.take(x, idx, axis=ax)]


def _pad_args(c, n, i):
    mode = _s(n.attrs.get("mode", "constant"))
    if "pads" in n.attrs:  # opset < 11
        pads = [int(p) for p in n.attrs["pads"]]
        value = float(n.attrs.get("value", 0.0))
        axes = None
    else:
        pads = [int(p) for p in np.asarray(i[1]).reshape(-1)]
        v = _input(i, 2)
        value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
        axes = _input(i, 3)
    return mode, pads, value, axes


def _pad_p(c, n, i, fill=None):
    x = np.asarray(i[0])
    mode, pads, value, axes = _pad_args(c, n, i)
    nd = x.ndim
    axes = list(range(nd)) if axes is None else [int(a) % nd for a in np.asarray(axes).reshape(-1)]
    k = len(axes)
    widths = [(0, 0)] * nd
    for j, a in enumerate(axes):
        widths[a] = (pads[j], pads[k + j])
    if any(b < 0 or e < 0 for b, e in widths):
        crop = tuple(slice(max(0, -b), x.shape[a] - max(0, -e)) for a, (b, e) in enumerate(widths))
        x = x[crop]
        widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        return [np.pad(x, widths, constant_values=value if fill is None else fill)]
    return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


def _expand_p(c, n, i):
    x = np.asarray(i[0])
    shape = [int(s) for s in np.asarray(i[1]).reshape(-1)]
    return [x * np.ones(shape, dtype=x.dtype)]


def _tile_p(c, n, i):
    return [np.tile(np.asarray(i[0]), [int(r) for r in np.asarray(i[1]).reshape(-1)])]


def _d2s_p(c, n, i):
    x = np.asarray(i[0])
    b, ch, h, w = x.shape
    bs = int(n.attrs["blocksize"])
    if _s(n.attrs.get("mode", "DCR")) == "DCR":
        t = x.reshape(b, bs, bs, ch // bs ** 2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, ch // bs ** 2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [t.reshape(b, ch // bs ** 2, h * bs, w * bs)]


def _s2d_p(c, n, i):
    x = np.asarray(i[0])
    b, ch, h, w = x.shape
    bs = int(n.attrs["blocksize"])
    t = x.reshape(b, ch, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return [t.reshape(b, ch * bs * bs, h // bs, w // bs)]


def index_map(ctx: OpContext, node, ins) -> tuple[sparse.csr_matrix, np.ndarray]:
    """A data-movement op as y = P x + q (x: its one varying input, flattened): P 0/1 sparse, q from padding."""
    key = ("index", node.index)
    if key in ctx.cache:
        return ctx.cache[key]
    x = ins[0]
    n_in = int(np.prod(x.shape))
    consts = [None if isinstance(v, Box) else v for v in ins]
    idx = np.arange(1, n_in + 1, dtype=np.int64).reshape(x.shape)
    if node.op == "Pad":
        mapped = _pad_p(ctx, node, [idx] + consts[1:], fill=0)[0]
        q = _pad_p(ctx, node, [np.zeros(x.shape)] + consts[1:])[0].reshape(-1)
    else:
        mapped = OPS[node.op].point(ctx, node, [idx] + consts[1:])[0]
        q = np.zeros(mapped.size)
    cols = mapped.reshape(-1)
    rows = np.flatnonzero(cols > 0)
    p = sparse.csr_matrix((np.ones(rows.size), (rows, cols[rows] - 1)), shape=(cols.size, n_in))
    ctx.cache[key] = (p, np.asarray(q, dtype=np.float64), mapped.shape)
    return ctx.cache[key]


def _move_ibp(ctx, node, ins):
    consts = ins[1:]
    point = OPS[node.op].point
    lo = point(ctx, node, [ins[0].lo] + list(consts))[0]
    hi = point(ctx, node, [ins[0].hi] + list(consts))[0]
    return Box(np.asarray(lo, np.float64), np.asarray(hi, np.float64)), 0.0


def _move_linear(ctx, node, a, ins, out):
    p, q, _ = index_map(ctx, node, ins)
    a2 = a.reshape(a.shape[0], -1)
    a_in = np.asarray((p.T @ a2.T).T).reshape((a.shape[0],) + ins[0].shape)
    bias = a2 @ q if np.any(q) else np.zeros(a.shape[0])
    return [a_in] + [None] * (len(node.inputs) - 1), bias


for _name, _p in {"Reshape": _reshape_p, "Flatten": _flatten_p, "Transpose": _transpose_p, "Squeeze": _squeeze_p,
                  "Unsqueeze": _unsqueeze_p, "Slice": _slice_p, "Gather": _gather_p, "Pad": _pad_p,
                  "Expand": _expand_p, "Tile": _tile_p, "DepthToSpace": _d2s_p, "SpaceToDepth": _s2d_p}.items():
    rule(_name, point=_p, ibp=_move_ibp, linear=_move_linear)


def _concat_p(c, n, i):
    arrs = [np.asarray(v) for v in i]
    return [np.concatenate(arrs, axis=int(n.attrs.get("axis", 0)))]


def _concat_ibp(ctx, node, ins):
    ax = int(node.attrs.get("axis", 0))
    boxes = [as_box(v) for v in ins]
    return Box(np.concatenate([b.lo for b in boxes], axis=ax), np.concatenate([b.hi for b in boxes], axis=ax)), 0.0


def _concat_linear(ctx, node, a, ins, out):
    nd = len(out.shape)
    ax = int(node.attrs.get("axis", 0)) % nd
    res, bias = [], np.zeros(a.shape[0])
    start = 0
    for v in ins:
        size = as_box(v).shape[ax]
        part = a[(slice(None),) * (ax + 1) + (slice(start, start + size),)]
        start += size
        if isinstance(v, Box):
            res.append(part)
        else:
            res.append(None)
            bias = bias + _sum_rows(part, v)
    return res, bias


rule("Concat", point=_concat_p, ibp=_concat_ibp, linear=_concat_linear)


# ------------------------------------------------------------------------------------- linear layers
def _gemm_parts(node, ins):
    al = float(node.attrs.get("alpha", 1.0))
    be = float(node.attrs.get("beta", 1.0))
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    return al, be, ta, tb


def _gemm_p(c, n, i):
    al, be, ta, tb = _gemm_parts(n, i)
    a = np.asarray(i[0], np.float64)
    b = np.asarray(i[1], np.float64)
    y = al * ((a.T if ta else a) @ (b.T if tb else b))
    if _input(i, 2) is not None:
        y = y + be * np.asarray(i[2], np.float64)
    return [y]


def _matmul_const_ibp(x: Box, w: np.ndarray, left: bool):
    """x @ w (left: w @ x) with x an interval: midpoint-radius form; margin gamma_n sum |w||x|."""
    mul = (lambda u, v: u @ v) if not left else (lambda u, v: v @ u)
    aw = np.abs(w)
    mid = mul(x.mid, w)
    rad = mul(x.rad, aw)
    mag = mul(np.abs(x.mid), aw) + rad
    n = w.shape[-2] if not left else w.shape[-1]
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _matmul_boxes(x: Box, y: Box) -> tuple[Box, np.ndarray]:
    """x @ y with both intervals (Rump's midpoint-radius product: sound, at most 1.5x wide)."""
    xm, xr, ym, yr = x.mid, x.rad, y.mid, y.rad
    mid = xm @ ym
    rad = np.abs(xm) @ yr + xr @ np.abs(ym) + xr @ yr
    mag = np.abs(xm) @ np.abs(ym) + rad
    return Box(mid - rad, mid + rad), gamma(x.shape[-1]) * mag


def _gemm_ibp(ctx, node, ins):
    al, be, ta, tb = _gemm_parts(node, ins)
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        xa = Box(x.lo.T, x.hi.T) if ta else x
        wb = Box(w.lo.T, w.hi.T) if tb else w
        out, m = _matmul_boxes(xa, wb)
    elif isinstance(x, Box):
        xa = Box(x.lo.T, x.hi.T) if ta else x
        out, m = _matmul_const_ibp(xa, np.asarray(w, np.float64).T if tb else np.asarray(w, np.float64), left=False)
    else:
        wa = np.asarray(x, np.float64).T if ta else np.asarray(x, np.float64)
        wb = Box(w.lo.T, w.hi.T) if tb else w
        out, m = _matmul_const_ibp(wb, wa, left=True)
    if al != 1.0:
        out = Box(np.minimum(al * out.lo, al * out.hi), np.maximum(al * out.lo, al * out.hi))
        m = abs(al) * m + round_margin(out.mag)
    c = _input(ins, 2)
    if c is not None:
        cb = as_box(c)
        out = Box(out.lo + be * cb.lo if be >= 0 else out.lo + be * cb.hi, out.hi + be * cb.hi if be >= 0 else out.hi + be * cb.lo)
        m = m + round_margin(out.mag)
    return out, m


def _gemm_linear(ctx, node, a, ins, out):
    al, be, ta, tb = _gemm_parts(node, ins)
    x, w = ins[0], ins[1]
    if isinstance(x, Box) == isinstance(w, Box):
        return None  # product of two activations in a Gemm: IBP
    bias = np.zeros(a.shape[0])
    c = _input(ins, 2)
    res: list = [None] * len(node.inputs)
    if c is not None:
        if isinstance(c, Box):
            res[2] = unbroadcast(a * be, c.shape)
        else:
            bias = bias + _sum_rows(a * be, np.broadcast_to(np.asarray(c, np.float64), a.shape[1:]))
    if isinstance(x, Box):
        wm = np.asarray(w, np.float64)
        wm = wm.T if tb else wm  # (k, n)
        ax = al * (a @ wm.T)  # (S, m, k)
        res[0] = np.swapaxes(ax, 1, 2) if ta else ax
    else:
        xm = np.asarray(x, np.float64)
        xm = xm.T if ta else xm  # (m, k)
        aw = al * np.einsum("mk,smn->skn", xm, a)
        res[1] = np.swapaxes(aw, 1, 2) if tb else aw
    return res, bias


rule("Gemm", point=_gemm_p, ibp=_gemm_ibp, linear=_gemm_linear)


def _matmul_ibp(ctx, node, ins):
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        return _matmul_boxes(x, w)
    if isinstance(x, Box):
        return _matmul_const_ibp(x, np.asarray(w, np.float64), left=False)
    return _matmul_const_ibp(w, np.asarray(x, np.float64), left=True)


def _matmul_linear(ctx, node, a, ins, out):
    x, w = ins[0], ins[1]
    if len(np.shape(x) if not isinstance(x, Box) else x.shape) < 2 or len(np.shape(w) if not isinstance(w, Box) else w.shape) < 2:
        return None
    if isinstance(x, Box) and not isinstance(w, Box):
        wm = np.asarray(w, np.float64)
        if wm.ndim < 2:
            return None
        ax = np.matmul(a, np.swapaxes(wm, -1, -2))  # (S, ..., m, k)
        return [unbroadcast(ax, x.shape), None], np.zeros(a.shape[0])
    if isinstance(w, Box) and not isinstance(x, Box):
        xm = np.asarray(x, np.float64)
        aw = np.matmul(np.swapaxes(xm, -1, -2), a)  # (S, ..., k, n)
        return [None, unbroadcast(aw, w.shape)], np.zeros(a.shape[0])
    # two activations: McCormick per product term x_ik y_kj with fixed planes (as in Mul)
    ap, an = _pos_neg(a)  # (S, ..., m, n)
    lx, ux, ly = x.lo, x.hi, w.lo
    cx = np.matmul(a, np.swapaxes(ly, -1, -2))  # sum_j A_ij ly_kj
    cy = np.matmul(np.swapaxes(lx, -1, -2), ap) + np.matmul(np.swapaxes(ux, -1, -2), an)
    bias = -_sum_rows(ap, np.matmul(lx, ly)) - _sum_rows(an, np.matmul(ux, ly))
    return [unbroadcast(cx, x.shape), unbroadcast(cy, w.shape)], bias


rule("MatMul", point=lambda c, n, i: [np.matmul(np.asarray(i[0], np.float64), np.asarray(i[1], np.float64))],
     ibp=_matmul_ibp, linear=_matmul_linear)


def _window_attrs(ctx, node, x_shape, kernel):
    a = node.attrs
    nk = len(kernel)
    sp = x_shape[2:]
    strides = [int(s) for s in a.get("strides", [1] * nk)]
    dil = [int(d) for d in a.get("dilations", [1] * nk)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nk))]
    auto = _s(a.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nk)
        for i in range(nk):
            o = -(-sp[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - sp[i])
            small = total // 2
            pads[i], pads[nk + i] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto == "VALID":
        pads = [0] * (2 * nk)
    if any(p < 0 for p in pads):
        raise UnsupportedModelError(f"{node.op} '{node.name}': negative pads")
    if int(a.get("ceil_mode", 0)):
        # ceil mode: extend the end pads so that floor division gives the ceil output size
        for i in range(nk):
            span = (kernel[i] - 1) * dil[i] + 1
            total = sp[i] + pads[i] + pads[nk + i] - span
            if total % strides[i]:
                extra = strides[i] - total % strides[i]
                if ((total + extra) // strides[i]) * strides[i] < sp[i] + pads[i]:  # last window starts inside
                    pads[nk + i] += extra
    return strides, dil, pads[:nk], pads[nk:]


def _conv_args(ctx, node, ins, x_shape):
    w = np.asarray(_const(node, ins, 1, "weight"), np.float64)
    b = _input(ins, 2)
    if isinstance(b, Box):
        raise UnsupportedModelError(f"Conv '{node.name}': its bias depends on the input")
    kernel = w.shape[2:]
    if "kernel_shape" in node.attrs and tuple(node.attrs["kernel_shape"]) != tuple(kernel):
        raise UnsupportedModelError(f"Conv '{node.name}': kernel_shape disagrees with the weight")
    strides, dil, begins, ends = _window_attrs(ctx, node, x_shape, kernel)
    return w, (None if b is None else np.asarray(b, np.float64)), strides, dil, begins, ends, int(node.attrs.get("group", 1))


def _bias_shape(b, nd):
    return b.reshape((1, -1) + (1,) * (nd - 2))


def _conv_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, b, strides, dil, begins, ends, g = _conv_args(c, n, i, x.shape)
    y = conv(x, w, strides, dil, begins, ends, g)
    return [y if b is None else y + _bias_shape(b, y.ndim)]


def _conv_ibp(ctx, node, ins):
    x = ins[0]
    w, b, strides, dil, begins, ends, g = _conv_args(ctx, node, ins, x.shape)
    aw = np.abs(w)
    mid = conv(x.mid, w, strides, dil, begins, ends, g)
    both = conv(np.concatenate([x.rad, np.abs(x.mid)]), aw, strides, dil, begins, ends, g)  # one pass for |W| rad, |W| |mid|
    rad = both[: x.shape[0]]
    mag = both[x.shape[0]:] + rad
    if b is not None:
        mid = mid + _bias_shape(b, mid.ndim)
        mag = mag + np.abs(_bias_shape(b, mid.ndim))
    n = int(np.prod(w.shape[1:])) + (b is not None)
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _conv_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, b, strides, dil, begins, ends, g = _conv_args(ctx, node, ins, x.shape)
    s = a.shape[0]
    flat = a.reshape((s * a.shape[1],) + a.shape[2:])
    a_in = conv_adjoint(flat, w, strides, dil, begins, ends, g, x.shape[2:]).reshape((s,) + x.shape)
    bias = np.zeros(s) if b is None else _sum_rows(a, np.broadcast_to(_bias_shape(b, len(out.shape)), a.shape[1:]))
    return [a_in] + [None] * (len(node.inputs) - 1), bias


rule("Conv", point=_conv_p, ibp=_conv_ibp, linear=_conv_linear)


def _convt_args(ctx, node, ins, x_shape):
    w = np.asarray(_const(node, ins, 1, "weight"), np.float64)  # (C_in, M/G, *K)
    b = _input(ins, 2)
    g = int(node.attrs.get("group", 1))
    kernel = w.shape[2:]
    nk = len(kernel)
    a = node.attrs
    strides = [int(s) for s in a.get("strides", [1] * nk)]
    dil = [int(d) for d in a.get("dilations", [1] * nk)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nk))]
    opad = [int(p) for p in a.get("output_padding", [0] * nk)]
    sp = x_shape[2:]
    if "output_shape" in a or _s(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"ConvTranspose '{node.name}': output_shape/auto_pad SAME are not supported")
    out_sp = [strides[i] * (sp[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[nk + i]
              for i in range(nk)]
    return w, (None if b is None else np.asarray(b, np.float64)), strides, dil, pads[:nk], pads[nk:], g, out_sp


def _convt_apply(x, w, strides, dil, begins, ends, g, out_sp):
    return conv_adjoint(x, w, strides, dil, begins, ends, g, out_sp)


def _convt_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, b, st, dl, bg, en, g, osp = _convt_args(c, n, i, x.shape)
    y = _convt_apply(x, w, st, dl, bg, en, g, osp)
    return [y if b is None else y + _bias_shape(b, y.ndim)]


def _convt_ibp(ctx, node, ins):
    x = ins[0]
    w, b, st, dl, bg, en, g, osp = _convt_args(ctx, node, ins, x.shape)
    aw = np.abs(w)
    mid = _convt_apply(x.mid, w, st, dl, bg, en, g, osp)
    rad = _convt_apply(x.rad, aw, st, dl, bg, en, g, osp)
    mag = _convt_apply(np.abs(x.mid), aw, st, dl, bg, en, g, osp) + rad
    if b is not None:
        mid = mid + _bias_shape(b, mid.ndim)
        mag = mag + np.abs(_bias_shape(b, mid.ndim))
    n = int(w.shape[0] // g * np.prod(w.shape[2:])) + 1
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _convt_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, b, st, dl, bg, en, g, osp = _convt_args(ctx, node, ins, x.shape)
    s = a.shape[0]
    flat = a.reshape((s * a.shape[1],) + a.shape[2:])
    a_in = conv(flat, w, st, dl, bg, en, g).reshape((s,) + x.shape)  # the adjoint of the adjoint
    bias = np.zeros(s) if b is None else _sum_rows(a, np.broadcast_to(_bias_shape(b, len(out.shape)), a.shape[1:]))
    return [a_in] + [None] * (len(node.inputs) - 1), bias


rule("ConvTranspose", point=_convt_p, ibp=_convt_ibp, linear=_convt_linear)


def _bn_affine(ctx, node, ins):
    scale, bias, mean, var = (np.asarray(_const(node, ins, k, "statistics"), np.float64) for k in range(1, 5))
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
    return [a * _bn_shape(s, nd)] + [None] * 4, _sum_rows(a, np.broadcast_to(_bn_shape(t, nd), a.shape[1:]))


rule("BatchNormalization", point=_bn_p, ibp=_bn_ibp, linear=_bn_linear)


# ---------------------------------------------------------------------------------------- pooling
def _pool_args(ctx, node, x_shape):
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    return (kernel,) + tuple(_window_attrs(ctx, node, x_shape, kernel))


def _maxpool_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    kernel, st, dl, bg, en = _pool_args(c, n, x.shape)
    return [window_reduce(x, kernel, st, dl, bg, en, np.maximum, -np.inf)]


def _maxpool_ibp(ctx, node, ins):
    x = ins[0]
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedModelError(f"MaxPool '{node.name}': the Indices output is not supported")
    kernel, st, dl, bg, en = _pool_args(ctx, node, x.shape)
    return Box(window_reduce(x.lo, kernel, st, dl, bg, en, np.maximum, -np.inf),
               window_reduce(x.hi, kernel, st, dl, bg, en, np.maximum, -np.inf)), 0.0


def _maxpool_linear(ctx, node, a, ins, out):
    """max over a window >= the window element with the largest lower bound (a line of slope 1 on it);
    max <= the window's largest upper bound (a constant). Exact when that element dominates the window."""
    x = ins[0]
    kernel, st, dl, bg, en = _pool_args(ctx, node, x.shape)
    views_lo, out_sp = window_argmax_offsets(x.lo, kernel, st, dl, bg, en)
    views_hi, _ = window_argmax_offsets(x.hi, kernel, st, dl, bg, en)
    lo_stack = np.stack(views_lo)
    best = np.argmax(lo_stack, axis=0)  # offset index per output
    best_lo = np.take_along_axis(lo_stack, best[None], 0)[0]
    hi_stack = np.stack(views_hi)
    others_hi = np.where(np.arange(len(views_hi)).reshape((-1,) + (1,) * best.ndim) == best[None], -np.inf, hi_stack).max(0)
    exact = best_lo >= others_hi  # this element dominates: max = x_best exactly
    ap, an = _pos_neg(a)
    # lower bound of A.y: A+ uses y >= x_best; A- uses y <= x_best (exact) or the constant max hi
    coef = ap + np.where(exact[None], an, 0.0)  # coefficient on x_best, (S, *out)
    const_hi = np.where(exact, 0.0, out.hi)
    bias = _sum_rows(an, const_hi)
    # scatter coef back onto the chosen input positions
    n, c = x.shape[:2]
    idx_in = np.arange(int(np.prod(x.shape)), dtype=np.float64).reshape(x.shape) + 1
    views_idx, _ = window_argmax_offsets(idx_in, kernel, st, dl, bg, en)
    chosen = np.take_along_axis(np.stack(views_idx), best[None], 0)[0]  # 1-based flat input index (-inf: pad)
    chosen = np.where(np.isfinite(chosen), chosen, 0).astype(np.int64).reshape(-1)
    s = a.shape[0]
    a_in = np.zeros((s, int(np.prod(x.shape)) + 1))
    coef2 = coef.reshape(s, -1)
    for r in range(s):
        a_in[r] = np.bincount(chosen, weights=coef2[r], minlength=a_in.shape[1])
    return [a_in[:, 1:].reshape((s,) + x.shape)], bias


rule("MaxPool", point=_maxpool_p, ibp=_maxpool_ibp, linear=_maxpool_linear)


def _avgpool_parts(ctx, node, x_shape):
    from ..autodiff.rules import pool_divisor

    kernel, st, dl, bg, en = _pool_args(ctx, node, x_shape)
    if any(d != 1 for d in dl):
        raise UnsupportedModelError(f"AveragePool '{node.name}': dilations are not supported")
    sp = x_shape[2:]
    out_sp = [out_size(sp[i], kernel[i], st[i], 1, bg[i], en[i]) for i in range(len(kernel))]
    div = pool_divisor(kernel, st, bg, en, sp, out_sp, int(node.attrs.get("count_include_pad", 0)))
    c = x_shape[1]
    w = np.ones((c, 1) + tuple(kernel))
    return w, st, dl, bg, en, c, div, int(np.prod(kernel))


def _avgpool_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(c, n, x.shape)
    return [conv(x, w, st, dl, bg, en, ch) / div]


def _avgpool_ibp(ctx, node, ins):
    x = ins[0]
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(ctx, node, x.shape)
    lo = conv(x.lo, w, st, dl, bg, en, ch) / div
    hi = conv(x.hi, w, st, dl, bg, en, ch) / div
    mag = conv(x.mag, w, st, dl, bg, en, ch) / div
    return Box(lo, hi), gamma(k + 1) * mag


def _avgpool_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(ctx, node, x.shape)
    s = a.shape[0]
    scaled = (a / div).reshape((s * a.shape[1],) + a.shape[2:])
    return [conv_adjoint(scaled, w, st, dl, bg, en, ch, x.shape[2:]).reshape((s,) + x.shape)], np.zeros(s)


rule("AveragePool", point=_avgpool_p, ibp=_avgpool_ibp, linear=_avgpool_linear)


def _reduce_axes(ctx, node, ins, nd):
    axes = _axes_arg(node, ins, 1)
    if axes is None:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return ()
        return tuple(range(nd))
    return tuple(sorted(a % nd for a in axes))


def _reduce_p(mean: bool):
    def point(c, n, i):
        x = np.asarray(i[0], np.float64)
        axes = _reduce_axes(c, n, i, x.ndim)
        keep = bool(int(n.attrs.get("keepdims", 1)))
        return [(x.mean if mean else x.sum)(axis=axes, keepdims=keep)]

    return point


def _reduce_ibp(mean: bool):
    def ibp(ctx, node, ins):
        x = ins[0]
        axes = _reduce_axes(ctx, node, ins, len(x.shape))
        keep = bool(int(node.attrs.get("keepdims", 1)))
        f = np.mean if mean else np.sum
        cnt = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        out = Box(f(x.lo, axis=axes, keepdims=keep), f(x.hi, axis=axes, keepdims=keep))
        return out, gamma(cnt + 1) * f(x.mag, axis=axes, keepdims=keep)

    return ibp


def _reduce_linear(mean: bool):
    def linear(ctx, node, a, ins, out):
        x = ins[0]
        axes = _reduce_axes(ctx, node, ins, len(x.shape))
        cnt = int(np.prod([x.shape[ax] for ax in axes])) if axes else 1
        keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        ak = a.reshape((a.shape[0],) + keep_shape)
        a_in = np.broadcast_to(ak / cnt if mean else ak, (a.shape[0],) + x.shape).copy()
        return [a_in] + [None] * (len(node.inputs) - 1), np.zeros(a.shape[0])

    return linear


rule("ReduceMean", point=_reduce_p(True), ibp=_reduce_ibp(True), linear=_reduce_linear(True))
rule("ReduceSum", point=_reduce_p(False), ibp=_reduce_ibp(False), linear=_reduce_linear(False))


def _gap_node_axes(x_shape):
    return tuple(range(2, len(x_shape)))


def _gap_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    return [x.mean(axis=_gap_node_axes(x.shape), keepdims=True)]


def _gap_ibp(ctx, node, ins):
    x = ins[0]
    axes = _gap_node_axes(x.shape)
    cnt = int(np.prod(x.shape[2:]))
    return (Box(x.lo.mean(axis=axes, keepdims=True), x.hi.mean(axis=axes, keepdims=True)),
            gamma(cnt + 1) * x.mag.mean(axis=axes, keepdims=True))


def _gap_linear(ctx, node, a, ins, out):
    x = ins[0]
    cnt = int(np.prod(x.shape[2:]))
    return [np.broadcast_to(a / cnt, (a.shape[0],) + x.shape).copy()], np.zeros(a.shape[0])


rule("GlobalAveragePool", point=_gap_p, ibp=_gap_ibp, linear=_gap_linear)
rule("GlobalMaxPool", point=lambda c, n, i: [np.asarray(i[0], np.float64).max(axis=_gap_node_axes(np.shape(i[0])), keepdims=True)],
     ibp=lambda c, n, i: (i[0].map(lambda v: v.max(axis=_gap_node_axes(v.shape), keepdims=True)), 0.0))


# ----------------------------------------------------------------------------------- softmax, norms
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


rule("Softmax", point=_softmax_p, ibp=_softmax_ibp)


def _layernorm_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    ax = int(n.attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(ax, x.ndim))
    eps = float(n.attrs.get("epsilon", 1e-5))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * np.asarray(i[1], np.float64)
    if _input(i, 2) is not None:
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
    y = _mul_box(Box(d_lo, d_hi), r)
    cap = np.sqrt(n)
    y = Box(np.clip(y.lo, -cap, cap), np.clip(y.hi, -cap, cap))
    g = np.asarray(_const(node, ins, 1, "scale"), np.float64)
    y = _mul_box(y, Box.point(g))
    b = _input(ins, 2)
    if b is not None:
        y = Box(y.lo + np.asarray(b, np.float64), y.hi + np.asarray(b, np.float64))
    return y, gamma(2 * n + 8) * (y.mag + cap * np.abs(g)) + elementwise_margin(y.mag)


rule("LayerNormalization", point=_layernorm_p, ibp=_layernorm_ibp)


# --------------------------------------------------------------------------------- quantization
def _q_params(ins):
    scale = np.asarray(ins[1], np.float64)
    zp = _input(ins, 2)
    return scale, zp


def _bshape(v, x_shape, axis):
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * len(x_shape)
    shape[axis % len(x_shape)] = v.size
    return v.reshape(shape)


def _quantize_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    scale, zp = _q_params(i)
    ax = int(n.attrs.get("axis", 1))
    dtype = np.asarray(zp).dtype if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(dtype)
    z = 0 if zp is None else _bshape(np.asarray(zp, np.float64), x.shape, ax)
    q = np.clip(np.round(x / _bshape(scale, x.shape, ax)) + z, info.min, info.max)
    return [q.astype(dtype)]


def _quantize_ibp(ctx, node, ins):
    x = ins[0]
    lo = _quantize_p(ctx, node, [x.lo] + list(ins[1:]))[0].astype(np.float64)
    hi = _quantize_p(ctx, node, [x.hi] + list(ins[1:]))[0].astype(np.float64)
    # x / scale is rounded to float32 before rounding to an integer: a value within one float32 ulp of a
    # half-integer may round either way; widen by one step where that can happen
    return Box(lo - 1.0, hi + 1.0), 0.0


def _dequantize_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    scale, zp = _q_params(i)
    ax = int(n.attrs.get("axis", 1))
    z = 0.0 if zp is None else _bshape(np.asarray(zp, np.float64), x.shape, ax)
    return [(x - z) * _bshape(scale, x.shape, ax)]


def _dequantize_ibp(ctx, node, ins):
    x = ins[0]
    scale, _ = _q_params(ins)
    lo = _dequantize_p(ctx, node, [x.lo] + list(ins[1:]))[0]
    hi = _dequantize_p(ctx, node, [x.hi] + list(ins[1:]))[0]
    out = Box(np.minimum(lo, hi), np.maximum(lo, hi))
    return out, round_margin(out.mag, 2)


rule("QuantizeLinear", point=_quantize_p, ibp=_quantize_ibp)
rule("DequantizeLinear", point=_dequantize_p, ibp=_dequantize_ibp)


def supported_ops() -> tuple[str, ...]:
    return tuple(sorted(OPS))


def relaxed_ops() -> tuple[str, ...]:
    """Operators with a linear relaxation (CROWN); the others are concretised by their interval."""
    return tuple(sorted(k for k, r in OPS.items() if r.linear is not None))
