"""Elementwise operators: activations, arithmetic, comparisons (the unary and broadcasting binary families)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper
from scipy.special import erf, expit

from ..errors import UnsupportedModelError
from ..verify.adjoint import DERIV_ULPS, Adj
from ..verify.intervals import U32, Box, as_box, gamma, elementwise_margin, pos_neg, round_margin, sum_rows, unbroadcast
from .common import (Float64Unsupported, affine_jacobian, attrs, const_input, default_fan, derivative_rule, f64,
                     input_name, known_inputs, lip_one, lip_sum, mul_box, none_rest, refuse, static_only)
from .registry import IBP_ONLY, NO_DOUBLE, Op, Reason, register

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------ derivatives (gradient graphs)
def _unary_factor(em: Emitter, node: onnx.NodeProto, factor) -> str:
    """The elementwise derivative dy/dx of a unary node, as a tensor shaped like x (``factor`` builds it)."""
    x, y, a = node.input[0], node.output[0], attrs(node)
    one = em.scalar(1.0, x)
    return factor(em, node, x, y, a, one)


def _d_relu(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    # y = max(x, 0): the 0/1 mask of x > 0 is y > 0 (Greater + Cast: 40% cheaper than Sign in onnxruntime).
    return em.mask(em.op("Greater", [y, em.scalar(0.0, y)]), y)


def _d_leaky_relu(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    alpha = em.scalar(a.get("alpha", 0.01), x)
    return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, alpha])


def _d_p_relu(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, node.input[1]])


def _d_sigmoid(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Mul", [y, em.op("Sub", [one, y])])


def _d_tanh(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Sub", [one, em.op("Mul", [y, y])])


def _d_elu(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    alpha = em.scalar(a.get("alpha", 1.0), x)
    return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, em.op("Add", [y, alpha])])


def _d_selu(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), em.scalar(gamma, x),
                           em.op("Add", [y, em.scalar(alpha * gamma, x)])])


def _d_softplus(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Sigmoid", [x])


def _d_softsign(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    d = em.op("Add", [one, em.op("Abs", [x])])
    return em.op("Reciprocal", [em.op("Mul", [d, d])])


def _d_erf(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Mul", [em.scalar(2.0 / math.sqrt(math.pi), x), em.op("Exp", [em.op("Neg", [em.op("Mul", [x, x])])])])


def _d_exp(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return y


def _d_log(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Reciprocal", [x])


def _d_sqrt(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Div", [em.scalar(0.5, x), y])


def _d_reciprocal(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Neg", [em.op("Mul", [y, y])])


def _d_abs(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Sign", [x])


def _d_sin(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Cos", [x])


def _d_cos(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    return em.op("Neg", [em.op("Sin", [x])])


def _d_hard_sigmoid(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    z = em.op("Add", [em.op("Mul", [x, em.scalar(alpha, x)]), em.scalar(beta, x)])
    inside = em.op("And", [em.op("Greater", [z, em.scalar(0.0, x)]), em.op("Less", [z, one])])
    return em.op("Mul", [em.mask(inside, x), em.scalar(alpha, x)])


def _d_hard_swish(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    # y = x * clip(x/6 + 1/2, 0, 1); y' = clip(...) + x/6 inside (-3, 3)
    h = em.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    inside = em.op("And", [em.op("Greater", [x, em.scalar(-3.0, x)]), em.op("Less", [x, em.scalar(3.0, x)])])
    return em.op("Add", [h, em.op("Mul", [em.mask(inside, x), em.op("Div", [x, em.scalar(6.0, x)])])])


def _d_clip(em: Emitter, node: onnx.NodeProto, x: str, y: str, a: dict, one: str) -> str:
    lo = a.get("min") if em.opset < 11 else None
    hi = a.get("max") if em.opset < 11 else None
    lo_name = em.scalar(lo, x) if lo is not None else input_name(node, 1)
    hi_name = em.scalar(hi, x) if hi is not None else input_name(node, 2)
    conds = []
    if lo_name:
        conds.append(em.op("Greater", [x, lo_name]))
    if hi_name:
        conds.append(em.op("Less", [x, hi_name]))
    if not conds:
        return em.expand_like(one, x)
    c = conds[0] if len(conds) == 1 else em.op("And", conds)
    return em.mask(c, x)


def _unary_derivatives(factor, constant_params: str = "") -> dict:
    """vjp and jvp of y = f(x) elementwise: dy = f'(x) dx, the factor f'(x) built by ``factor`` (one rule serves
    both modes). ``constant_params``: the refusal when the parameters after x (a slope, clip bounds) depend on the
    input."""

    def vjp(em: Emitter, node: onnx.NodeProto, g: list) -> list:
        if constant_params and any(em.active(n) for n in node.input[1:] if n):
            refuse(node, constant_params)
        return [em.op("Mul", [g[0], _unary_factor(em, node, factor)])] + [None] * (len(node.input) - 1)

    def jvp(em: Emitter, node: onnx.NodeProto, t: list) -> list:
        if any(t[1:]):
            refuse(node, "parameters that depend on the input")
        return [em.op("Mul", [t[0], _unary_factor(em, node, factor)])]

    return {"vjp": vjp, "jvp": jvp}


def _vjp_neg(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.op("Neg", [g[0]])]


def _jvp_neg(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Neg", [t[0]])]


def _vjp_identity(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [g[0]] + [None] * (len(node.input) - 1)


def _jvp_identity(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [t[0]] + [None] * (len(node.output) - 1)


def _vjp_cast(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.cast_like(g[0], node.input[0])]


def _jvp_cast(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Cast", [t[0]], to=attrs(node)["to"])]


# --- broadcasting binary ops ---------------------------------------------------------

def _ub(em: Emitter, g: str, node: onnx.NodeProto, i: int) -> str:
    return em.unbroadcast(g, em.shape(node.output[0]), em.shape(node.input[i]), node.input[i])


def _vjp_binary(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    op, (a, b), y, g0 = node.op_type, node.input[:2], node.output[0], g[0]
    act_a, act_b = em.active(a), em.active(b)
    ga = gb = None
    if op == "Add":
        ga, gb = g0, g0
    elif op == "Sub":
        ga, gb = g0, (em.op("Neg", [g0]) if act_b else None)
    elif op == "Mul":
        ga = em.op("Mul", [g0, b]) if act_a else None
        gb = em.op("Mul", [g0, a]) if act_b else None
    elif op == "Div":
        ga = em.op("Div", [g0, b]) if act_a else None
        gb = em.op("Neg", [em.op("Div", [em.op("Mul", [g0, y]), b])]) if act_b else None
    elif op == "Pow":
        if act_b:
            refuse(node, "an exponent that depends on the input")
        bb = em.cast_like(b, a)
        ga = em.op("Mul", [g0, em.op("Mul", [bb, em.op("Pow", [a, em.op("Sub", [bb, em.scalar(1.0, a)])])])])
    else:  # Max / Min with two inputs: the derivative follows the selected operand (ties to the first)
        if len(node.input) != 2:
            refuse(node, "more than two operands")
        pick_a = em.greater_equal(a, b) if op == "Max" else em.less_equal(a, b)
        ma = em.mask(pick_a, y)
        ga = em.op("Mul", [g0, ma]) if act_a else None
        gb = em.op("Mul", [g0, em.op("Sub", [em.scalar(1.0, y), ma])]) if act_b else None
    return [_ub(em, ga, node, 0) if (act_a and ga) else None, _ub(em, gb, node, 1) if (act_b and gb) else None]


def _jvp_binary(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    op, (a, b), y = node.op_type, node.input[:2], node.output[0]
    ta, tb = t[0], t[1]
    terms: list[str] = []
    if op == "Add":
        terms = [x for x in (ta, tb) if x]
    elif op == "Sub":
        terms = [x for x in (ta, em.op("Neg", [tb]) if tb else None) if x]
    elif op == "Mul":
        terms = [x for x in (em.op("Mul", [ta, b]) if ta else None, em.op("Mul", [tb, a]) if tb else None) if x]
    elif op == "Div":
        terms = [x for x in (em.op("Div", [ta, b]) if ta else None,
                             em.op("Neg", [em.op("Div", [em.op("Mul", [tb, y]), b])]) if tb else None) if x]
    elif op == "Pow":
        if tb:
            refuse(node, "an exponent that depends on the input")
        bb = em.cast_like(b, a)
        terms = [em.op("Mul", [ta, em.op("Mul", [bb, em.op("Pow", [a, em.op("Sub", [bb, em.scalar(1.0, a)])])])])]
    else:
        if len(node.input) != 2:
            refuse(node, "more than two operands")
        pick_a = em.greater_equal(a, b) if op == "Max" else em.less_equal(a, b)
        ma = em.mask(pick_a, y)
        if ta:
            terms.append(em.op("Mul", [ta, ma]))
        if tb:
            terms.append(em.op("Mul", [tb, em.op("Sub", [em.scalar(1.0, y), ma])]))
    out = em.add_all(terms)
    return [em.op("Add", [out, em.zeros_like(y)])]


def _vjp_sum(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [_ub(em, g[0], node, i) if em.active(n) else None for i, n in enumerate(node.input)]


def _jvp_sum(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Add", [em.add_all([x for x in t if x]), em.zeros_like(node.output[0])])]


def _vjp_where(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    c, a, b = node.input
    zero = em.scalar(0.0, node.output[0])
    ga = _ub(em, em.op("Where", [c, g[0], zero]), node, 1) if em.active(a) else None
    gb = _ub(em, em.op("Where", [c, zero, g[0]]), node, 2) if em.active(b) else None
    return [None, ga, gb]


def _jvp_where(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    c, a, b = node.input
    zero = em.scalar(0.0, node.output[0])
    ta = t[1] if t[1] else zero
    tb = t[2] if t[2] else zero
    return [em.op("Add", [em.op("Where", [c, ta, tb]), em.zeros_like(node.output[0])])]


# ------------------------------------------------------------------------------ bound engine: unary functions
# The float64 function, the points where its monotonicity changes (none: nondecreasing), whether the op is
# exact in float32 (no margin), and the linear relaxation (none: IBP only).

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
        ap, an = pos_neg(a)
        a_in = ap * lo_s + an * up_s
        bias = sum_rows(ap, lo_b) + sum_rows(an, up_b)
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
    lo = const_input(node, ins, 1, "min")
    hi = const_input(node, ins, 2, "max")
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


def _interval_unary(f, *, exact=False, crit=(), relax=None) -> dict:
    """point, ibp and linear of an elementwise op ``f(ctx, node, ins, x)`` (float64), nondecreasing between ``crit``;
    ``relax(node)`` gives its linear relaxation (none: IBP only)."""

    def point(ctx, node, ins):
        return [f(ctx, node, ins, np.asarray(ins[0], dtype=np.float64))]

    linear = IBP_ONLY if relax is None else _unary_linear(relax)
    return {"point": point, "ibp": _monotone_ibp(f, exact, crit), "linear": linear}


def _slope_mode(ctx) -> str:
    return ctx.cache.get("lower_slope", "adaptive")



def _leaky(c, n, i, x):
    a = float(n.attrs.get("alpha", 0.01))
    return np.where(x >= 0, x, a * x)


def _leaky_linear(ctx, node, a, ins, out):
    alpha = float(node.attrs.get("alpha", 0.01))
    if not 0.0 <= alpha < 1.0:
        return None
    relax = _relu_like_relax(alpha, _slope_mode(ctx))
    return _unary_linear(lambda _n: relax)(ctx, node, a, ins, out)




def _affine_unary_linear(slope_of):
    """An op y = s * x + t elementwise (Neg, HardSigmoid's inner map): exact linear rule."""

    def linear(ctx, node, a, ins, out):
        s, t = slope_of(ctx, node, ins)
        return [a * s], sum_rows(a, np.broadcast_to(t, a.shape[1:]))

    return linear



def _hs_linear(ctx, node, a, ins, out):
    al, be = _hardsigmoid_params(node)
    x = ins[0]
    t = Box(np.minimum(al * x.lo, al * x.hi) + be, np.maximum(al * x.lo, al * x.hi) + be)
    lo_s, lo_b, up_s, up_b = _clip_relax(0.0, 1.0)(t.lo, t.hi)
    ap, an = pos_neg(a)
    coef_t = ap * lo_s + an * up_s
    bias = sum_rows(ap, lo_b) + sum_rows(an, up_b) + sum_rows(coef_t, np.full(a.shape[1:], be))
    return [coef_t * al], bias


def _clip_linear(ctx, node, a, ins, out):
    lo_c, hi_c = _clip_params(ctx, node, ins)
    x = ins[0]
    lo_s, lo_b, up_s, up_b = _clip_relax(lo_c, hi_c)(x.lo, x.hi)
    ap, an = pos_neg(a)
    return [ap * lo_s + an * up_s] + [None] * (len(node.inputs) - 1), sum_rows(ap, lo_b) + sum_rows(an, up_b)



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


def _mul_ibp(ctx, node, ins):
    out = mul_box(as_box(ins[0]), as_box(ins[1]))
    return out, round_margin(out.mag)


def _div_ibp(ctx, node, ins):
    """x / y: x times [1/hi, 1/lo] where y keeps one sign; unbounded (-inf, inf) where y's interval holds 0."""
    x = as_box(ins[0])
    y = as_box(ins[1])
    zero = (y.lo <= 0) & (y.hi >= 0)
    safe = Box(np.where(zero, 1.0, y.lo), np.where(zero, 1.0, y.hi))
    out = mul_box(x, Box(1.0 / safe.hi, 1.0 / safe.lo))
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
                bias = bias + sum_rows(a * s, np.broadcast_to(v, a.shape[1:]))
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
    ap, an = pos_neg(a)
    cx = (ap + an) * ly
    cy = ap * lx + an * ux
    bias = -sum_rows(ap, lx * ly) - sum_rows(an, ux * ly)
    return [unbroadcast(cx, x.shape), unbroadcast(cy, y.shape)], bias


def _div_linear(ctx, node, a, ins, out):
    if isinstance(ins[1], Box):
        return None  # x / y with y varying: IBP only
    d = np.asarray(ins[1], dtype=np.float64)
    return [unbroadcast(a / d, ins[0].shape), None], np.zeros(a.shape[0])



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
            bias = bias + sum_rows(a, np.broadcast_to(v, a.shape[1:]))
    return res, bias



def _fold(f, arrays):
    out = arrays[0]
    for v in arrays[1:]:
        out = f(out, v)
    return out


def _pow_ibp(ctx, node, ins):
    x = ins[0]
    p = const_input(node, ins, 1, "exponent")
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
    ap, an = pos_neg(a)
    lo_s, lo_b = 2 * m, -m * m
    up_s, up_b = l + u, -l * u
    return [ap * lo_s + an * up_s, None], sum_rows(ap, lo_b) + sum_rows(an, up_b)


def _where_point(c, n, i):
    return [np.where(np.asarray(i[0]).astype(bool), i[1], i[2])]


def _box(v) -> Box:
    return v if isinstance(v, Box) else Box.point(np.asarray(v, np.float64))


def _mul_jacobian(ctx, node, adj: Adj, ins, out: Box):
    x, y = ins[0], ins[1]
    if not (isinstance(x, Box) and isinstance(y, Box)):
        return affine_jacobian(ctx, node, adj, ins, out)
    adj = adj.fold()
    shape = adj.mid.shape
    res = []
    for me, other in ((x, y), (y, x)):
        prod = Adj(np.broadcast_to(adj.mid, shape), np.broadcast_to(adj.rad, shape)).times(other.lo, other.hi)
        g = gamma(default_fan(node, ins, out, 0 if me is x else 1))
        res.append(Adj(unbroadcast(prod.mid, me.shape), unbroadcast(prod.rad, me.shape)).widen(g))
    return res


def _div_jacobian(ctx, node, adj, ins, out):
    if isinstance(ins[1], Box):
        raise UnsupportedModelError(f"Div '{node.name}': division by a tensor that depends on the input has no "
                                    "interval Jacobian rule")
    return affine_jacobian(ctx, node, adj, ins, out)


def _relu_range(node, lo, hi):
    return (lo > 0).astype(np.float64), (hi >= 0).astype(np.float64)


def _leaky_range(node, lo, hi):
    a = float(node.attrs.get("alpha", 0.01))
    d_lo = np.where(lo > 0, 1.0, np.where(hi < 0, a, min(a, 1.0)))
    d_hi = np.where(lo > 0, 1.0, np.where(hi < 0, a, max(a, 1.0)))
    return d_lo, d_hi


def _bell_range(df, peak):
    """f' even and decreasing in |x| (Sigmoid, Tanh, Erf): min at the far end, max at 0 when 0 is inside."""

    def drange(node, lo, hi):
        dl, du = df(lo), df(hi)
        d_lo = np.minimum(dl, du)
        d_hi = np.where((lo <= 0) & (hi >= 0), peak, np.maximum(dl, du))
        # float32 derivative kernels: a few ulps of the peak (y (1 - y) cancels near saturation)
        m = DERIV_ULPS * U32 * peak
        return np.maximum(d_lo - m, 0.0), d_hi + m

    return drange


def _softplus_range(node, lo, hi):
    m = DERIV_ULPS * U32
    return np.maximum(expit(lo) - m, 0.0), np.minimum(expit(hi) + m, 1.0)


def _clip_bounds(node, ins):
    return _clip_params(None, node, ins)


def _clip_jacobian(ctx, node, adj, ins, out):
    a, b = _clip_bounds(node, ins)
    x = ins[0]
    inside = (x.lo > a) & (x.hi < b)
    outside = (x.hi < a) | (x.lo > b)
    d_lo = np.where(inside, 1.0, 0.0)
    d_hi = np.where(outside, 0.0, 1.0)
    return none_rest(node, adj.times(d_lo, d_hi))


def _hardsigmoid_range(node, lo, hi):
    al = float(node.attrs.get("alpha", 0.2))
    be = float(node.attrs.get("beta", 0.5))
    t1, t2 = al * lo + be, al * hi + be
    tl, th = np.minimum(t1, t2), np.maximum(t1, t2)
    inside = (tl > 0) & (th < 1)
    outside = (th < 0) | (tl > 1)
    return np.where(inside, al, min(al, 0.0)) * (~outside), np.where(inside, al, max(al, 0.0)) * (~outside)



_mul_jacobian.generators = True  # it folds the symbols itself where a product of two activations needs it
_div_jacobian.generators = True


# Local bounds (fimaudit.verify.local): the input entries whose interval leaves the derivative undecided.
def _relu_undecided(node, box: Box, consts: dict | None = None) -> np.ndarray:
    lo, hi = box.lo.reshape(-1), box.hi.reshape(-1)
    return np.flatnonzero((lo <= 0) & (hi >= 0))


def _clip_undecided(node, box: Box, consts: dict | None = None) -> np.ndarray:
    lo, hi = box.lo.reshape(-1), box.hi.reshape(-1)
    ins = [box] + [(consts or {}).get(i) if i else None for i in node.inputs[1:]]
    a, b = _clip_params(None, node, ins)
    return np.flatnonzero(((lo <= a) & (hi >= a)) | ((lo <= b) & (hi >= b)))


# ------------------------------------------------------------------------------ global Lipschitz constants
def _max_slope(f, lo: float = -12.0, hi: float = 12.0, n: int = 200001) -> float:
    """Largest |f'| of a scalar function on a fine grid (used for smooth activations), plus a margin."""
    x = np.linspace(lo, hi, n)
    y = f(x)
    return float(np.max(np.abs(np.diff(y) / np.diff(x)))) * (1 + 1e-6)


_PHI = lambda x: 0.5 * (1 + erf(x / np.sqrt(2)))  # noqa: E731
GELU_SLOPE = _max_slope(lambda x: x * _PHI(x))  # ~1.1289
GELU_TANH_SLOPE = _max_slope(lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))))
SILU_SLOPE = _max_slope(lambda x: x / (1 + np.exp(-x)))  # ~1.0998
HARDSWISH_SLOPE = 1.5  # d/dx x*relu6(x+3)/6 = (2x+3)/6 on [-3, 3], largest at x = 3
ERF_SLOPE = 2 / math.sqrt(math.pi)


def _lip_max_min(p, node) -> None:
    var = p.g.var_inputs(node)
    if len(var) > 1:
        return p.assign(node, max(p.lip(v) for v in var), "elementwise max/min of inputs", 1.0)
    return lip_one(p, node)


def _lip_slope(slope: float):
    def rule(p, node) -> None:
        p.scale(node, slope, f"max slope {slope:.4g}")

    return rule


def _lip_leaky(p, node) -> None:
    a = abs(float(node.attrs.get("alpha", 0.01)))
    p.scale(node, max(1.0, a), "max(1, |alpha|)")


def _lip_elu(p, node) -> None:
    a = abs(float(node.attrs.get("alpha", 1.0)))
    p.scale(node, max(1.0, a), "max(1, alpha)")


def _lip_selu(p, node) -> None:
    lam, a = float(node.attrs.get("gamma", 1.0507)), float(node.attrs.get("alpha", 1.6733))
    p.scale(node, lam * max(1.0, a), "gamma * max(1, alpha)")


def _lip_hardsigmoid(p, node) -> None:
    a = abs(float(node.attrs.get("alpha", 0.2)))
    p.scale(node, a, "alpha")


def _lip_gelu(p, node) -> None:
    slope = GELU_TANH_SLOPE if node.attrs.get("approximate", "none") == "tanh" else GELU_SLOPE
    p.scale(node, slope, f"max slope {slope:.4f}")


def same_input_pattern(g, a: str, b: str) -> tuple[str, float] | None:
    """Recognise x * f(x) forms in the graph ``g`` (``fimaudit.graph.parse.OpGraph``): GELU (erf), SiLU,
    HardSwish; returns (name, max slope)."""
    for x, other in ((a, b), (b, a)):
        node = g.producer.get(other)
        if node is None:
            continue
        if node.op == "Sigmoid" and node.inputs[0] == x:
            return "SiLU", SILU_SLOPE
        if node.op == "HardSigmoid" and node.inputs[0] == x:
            al, be = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
            return "HardSwish", _max_slope(lambda t: t * np.clip(al * t + be, 0, 1))
        if node.op == "Add":  # x * (1 + erf(x / sqrt 2)) = 2 GELU(x)
            ins = node.inputs
            erf_in = [i for i in ins if g.producer.get(i) is not None and g.producer[i].op == "Erf"]
            one = [i for i in ins if i in g.consts and np.allclose(g.consts[i], 1.0)]
            if erf_in and one:
                div = g.producer.get(g.producer[erf_in[0]].inputs[0])
                if div is not None and div.inputs[0] == x:
                    c = g.consts.get(div.inputs[1])
                    scale = None
                    if c is not None and div.op == "Div":
                        scale = float(np.ravel(c)[0])
                    elif c is not None and div.op == "Mul":
                        scale = 1.0 / float(np.ravel(c)[0])
                    if scale is not None and scale > 0:
                        slope = _max_slope(lambda t: t * (1 + erf(t / scale)))
                        return "GELU (erf form)", slope
    return None


def layernorm_pattern(g, num: str, den: str) -> float | None:
    """Div(c, Sqrt(ReduceMean(Pow(c, 2)) + eps)) with c centred: returns 1/sqrt(eps)."""
    sq = g.producer.get(den)
    if sq is None or sq.op != "Sqrt":
        return None
    add = g.producer.get(sq.inputs[0])
    if add is None or add.op != "Add":
        return None
    eps = [g.consts[i] for i in add.inputs if i in g.consts]
    var = [i for i in add.inputs if i not in g.consts]
    if not eps or len(var) != 1:
        return None
    rm = g.producer.get(var[0])
    if rm is None or rm.op != "ReduceMean":
        return None
    pw = g.producer.get(rm.inputs[0])
    if pw is None or pw.op not in ("Pow", "Mul"):
        return None
    if pw.op == "Pow" and not (pw.inputs[0] == num and np.allclose(g.consts.get(pw.inputs[1], np.nan), 2.0)):
        return None
    if pw.op == "Mul" and not (pw.inputs[0] == num and pw.inputs[1] == num):
        return None
    e = float(np.min(eps[0]))
    return 1.0 / math.sqrt(e) if e > 0 else None


def _feeds(g, x: str, y: str) -> bool:
    node = g.producer.get(y)
    seen = 0
    while node is not None and seen < 8:
        if x in node.inputs:
            return True
        var = g.var_inputs(node)
        node = g.producer.get(var[0]) if var else None
        seen += 1
    return False


def _lip_mul(p, node) -> None:
    g = p.g
    var = g.var_inputs(node)
    if len(var) == 1:
        other = [i for i in node.inputs if i != var[0]][0] if len(node.inputs) > 1 else None
        c = g.consts.get(other) if other else None
        if c is None:
            return p.unbounded(node, f"Mul '{node.name}' by a static tensor of unknown value")
        m = float(np.max(np.abs(c)))
        return p.scale(node, m, f"max |constant| = {m:.4g}", var[0])
    a, b = node.inputs[0], node.inputs[1]
    pattern = same_input_pattern(g, a, b)
    if pattern is not None:
        name, slope = pattern
        x = a if g.producer.get(b) is not None and a in g.producer[b].inputs or _feeds(g, a, b) else b
        return p.assign(node, slope * p.lip(x), f"{name}: max slope {slope:.4f}", slope)
    gate = [i for i in (a, b) if g.producer.get(i) is not None and g.producer[i].op in ("Sigmoid", "HardSigmoid")]
    if gate:
        return p.unbounded(
            node, f"multiplicative gating '{node.name}' (squeeze-and-excitation style x * sigmoid(h(x))) has no "
            "global Lipschitz constant; a bound needs a bounded input domain",
        )
    return p.unbounded(node, f"product of two input-dependent tensors at '{node.name}' has no global Lipschitz constant")


def _lip_div(p, node) -> None:
    g = p.g
    a, b = node.inputs[0], node.inputs[1]
    if g.is_var(a) and not g.is_var(b):
        c = g.consts.get(b)
        if c is None or np.min(np.abs(c)) == 0:
            return p.unbounded(node, f"Div '{node.name}' by a static tensor of unknown or zero value")
        m = 1.0 / float(np.min(np.abs(c)))
        return p.scale(node, m, f"1/min|constant| = {m:.4g}", a)
    ln = layernorm_pattern(g, a, b) if g.is_var(a) and g.is_var(b) else None
    if ln is not None:
        return p.assign(node, ln * p.lip(a), "LayerNorm (decomposed) normalisation: global 1/sqrt(eps)", ln)
    return p.unbounded(node, f"division by an input-dependent tensor at '{node.name}' has no global Lipschitz constant")


# ------------------------------------------------------------------------------------------- constant folding
def _fold_binary(f):
    return known_inputs(lambda node, ins: [f(ins[0], ins[1])])


fold_identity = known_inputs(lambda node, ins: [ins[0]])


# ------------------------------------------------------------------ float64 lowering (autodiff.reference)
def _clamp(em: Emitter, t: str, lo: float | None, hi: float | None, out: str) -> None:
    if em.opset >= 12:  # Clip with double kernels: one pass
        bounds = [f64(em, v) if v is not None else "" for v in (lo, hi)]
        em.nodes.append(helper.make_node("Clip", [t] + bounds, [out], name=out))
        return
    if em.opset < 8:
        raise Float64Unsupported("Max/Min without broadcasting (opset < 8)")
    if hi is not None:
        t = em.op("Min", [t, f64(em, hi)])
    if lo is not None:
        t = em.op("Max", [t, f64(em, lo)])
    em.nodes.append(helper.make_node("Identity", [t], [out], name=out))


def _hard_sigmoid(em: Emitter, x: str, alpha: float, beta: float, out: str) -> None:
    _clamp(em, em.op("Add", [em.op("Mul", [x, f64(em, alpha)]), f64(em, beta)]), 0.0, 1.0, out)


def _lower_hardsigmoid(em: Emitter, node: onnx.NodeProto) -> None:
    a = attrs(node)
    _hard_sigmoid(em, node.input[0], a.get("alpha", 0.2), a.get("beta", 0.5), node.output[0])


def _lower_hardswish(em: Emitter, node: onnx.NodeProto) -> None:
    gate = em.fresh("hswish_gate")
    # alpha as ONNX's function body for HardSwish writes it: a float attribute, 1/6 rounded to float32.
    _hard_sigmoid(em, node.input[0], float(np.float32(1.0 / 6.0)), 0.5, gate)
    em.nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=node.output[0]))


def _lower_clip(em: Emitter, node: onnx.NodeProto) -> None:
    if em.opset >= 11:  # Clip-11+ has double kernels; this is only for the attribute form
        em.nodes.append(node)
        return
    a = attrs(node)
    _clamp(em, node.input[0], a.get("min"), a.get("max"), node.output[0])


def _negative_part_exp(em: Emitter, x: str, alpha: float) -> str:
    """alpha·(exp(min(x, 0)) - 1): the negative branch of Elu and Selu."""
    if em.opset < 8:
        raise Float64Unsupported("Min without broadcasting (opset < 8)")
    e = em.op("Exp", [em.op("Min", [x, f64(em, 0.0)])])
    return em.op("Mul", [em.op("Sub", [e, f64(em, 1.0)]), f64(em, alpha)])


def _lower_elu(em: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    neg = _negative_part_exp(em, x, attrs(node).get("alpha", 1.0))
    em.nodes.append(helper.make_node("Add", [em.op("Relu", [x]), neg], [node.output[0]], name=node.output[0]))


def _lower_selu(em: Emitter, node: onnx.NodeProto) -> None:
    x, a = node.input[0], attrs(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    inner = em.op("Add", [em.op("Relu", [x]), _negative_part_exp(em, x, alpha)])
    em.nodes.append(helper.make_node("Mul", [inner, f64(em, gamma)], [node.output[0]], name=node.output[0]))


def _lower_softplus(em: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]  # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), without overflow
    tail = em.op("Log", [em.op("Add", [f64(em, 1.0), em.op("Exp", [em.op("Neg", [em.op("Abs", [x])])])])])
    em.nodes.append(helper.make_node("Add", [em.op("Relu", [x]), tail], [node.output[0]], name=node.output[0]))


def _lower_softsign(em: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    den = em.op("Add", [f64(em, 1.0), em.op("Abs", [x])])
    em.nodes.append(helper.make_node("Div", [x, den], [node.output[0]], name=node.output[0]))


# ------------------------------------------------------------------------------------------------ the entries
_UNBOUNDED_SLOPE = Reason("its slope is unbounded: no global Lipschitz constant")
_STEP = "piecewise constant: its derivative is zero almost everywhere"
_ONE_LINEAR = {"point": lambda c, n, i: [np.asarray(i[0])], "ibp": lambda c, n, i: (i[0], 0.0),
               "linear": lambda c, n, a, i, o: ([a] + [None] * (len(n.inputs) - 1), np.zeros(a.shape[0])),
               "jacobian": affine_jacobian}


def _relu_linear(c, n, a, i, o):
    return _unary_linear(lambda _n: _relu_like_relax(0.0, _slope_mode(c)))(c, n, a, i, o)


def _minmax_ibp(f):
    return lambda c, n, i: (Box(_fold(f, [as_box(v).lo for v in i]), _fold(f, [as_box(v).hi for v in i])), 0.0)


register(
    "elementwise",
    Op("Relu", rowwise=True, nonlinear=True, refine="always", kink_at_zero=True, undecided=_relu_undecided,
       **_unary_derivatives(_d_relu), lipschitz=lip_one,
       **{**_interval_unary(lambda c, n, i, x: np.maximum(x, 0.0), exact=True), "linear": _relu_linear},
       jacobian=derivative_rule(_relu_range)),
    Op("LeakyRelu", nonlinear=True, refine="always", kink_at_zero=True, undecided=_relu_undecided,
       **_unary_derivatives(_d_leaky_relu), lipschitz=_lip_leaky,
       point=lambda c, n, i: [_leaky(c, n, i, np.asarray(i[0], np.float64))], ibp=_monotone_ibp(_leaky, crit=(0.0,)),
       linear=_leaky_linear, jacobian=derivative_rule(_leaky_range)),
    Op("PRelu", **_unary_derivatives(_d_p_relu, "a slope that depends on the input")),
    Op("Sigmoid", rowwise=True, nonlinear=True, refine="always",
       **_unary_derivatives(_d_sigmoid), lipschitz=_lip_slope(0.25),
       **_interval_unary(lambda c, n, i, x: expit(x), relax=lambda node: _sigmoid_like_relax(expit, _dsig)),
       jacobian=derivative_rule(_bell_range(_dsig, 0.25))),
    Op("Tanh", rowwise=True, nonlinear=True, refine="always",
       **_unary_derivatives(_d_tanh), lipschitz=lip_one,
       **_interval_unary(lambda c, n, i, x: np.tanh(x), relax=lambda node: _sigmoid_like_relax(np.tanh, _dtanh)),
       jacobian=derivative_rule(_bell_range(lambda v: 1.0 - np.tanh(v) ** 2, 1.0))),
    Op("Erf", rowwise=True, nonlinear=True, refine="always", float64=NO_DOUBLE,
       **_unary_derivatives(_d_erf), lipschitz=_lip_slope(ERF_SLOPE),
       **_interval_unary(lambda c, n, i, x: erf(x), relax=lambda node: _sigmoid_like_relax(erf, _derf)),
       jacobian=derivative_rule(_bell_range(lambda v: 2.0 / np.sqrt(np.pi) * np.exp(-v * v), 2.0 / np.sqrt(np.pi)))),
    Op("HardSigmoid", rowwise=True, nonlinear=True, refine="always", float64=_lower_hardsigmoid,
       **_unary_derivatives(_d_hard_sigmoid), lipschitz=_lip_hardsigmoid,
       **{**_interval_unary(lambda c, n, i, x: np.clip(_hardsigmoid_params(n)[0] * x + _hardsigmoid_params(n)[1], 0, 1)),
          "linear": _hs_linear},
       jacobian=derivative_rule(_hardsigmoid_range)),
    Op("HardSwish", nonlinear=True, float64=_lower_hardswish,
       **_unary_derivatives(_d_hard_swish), lipschitz=_lip_slope(HARDSWISH_SLOPE),
       **_interval_unary(lambda c, n, i, x: x * np.clip(x / 6.0 + 0.5, 0, 1), crit=(-1.5,))),
    Op("Clip", nonlinear=True, refine="always", undecided=_clip_undecided, float64=_lower_clip,
       **_unary_derivatives(_d_clip, "bounds that depend on the input"), lipschitz=lip_one,
       **{**_interval_unary(lambda c, n, i, x: np.clip(x, *_clip_params(c, n, i)), exact=True), "linear": _clip_linear},
       jacobian=_clip_jacobian),
    Op("Exp", rowwise=True, nonlinear=True,
       **_unary_derivatives(_d_exp), lipschitz=_UNBOUNDED_SLOPE,
       **_interval_unary(lambda c, n, i, x: np.exp(x))),
    Op("Log", rowwise=True, nonlinear=True,
       **_unary_derivatives(_d_log), lipschitz=_UNBOUNDED_SLOPE,
       **_interval_unary(lambda c, n, i, x: np.log(np.where(x > 0, x, 0.0)))),
    Op("Sqrt", rowwise=True, nonlinear=True,
       **_unary_derivatives(_d_sqrt), lipschitz=_UNBOUNDED_SLOPE,
       **_interval_unary(lambda c, n, i, x: np.sqrt(np.maximum(x, 0.0))),
       fold=known_inputs(lambda node, ins: [np.sqrt(ins[0])])),
    Op("Softplus", rowwise=True, nonlinear=True, float64=_lower_softplus,
       **_unary_derivatives(_d_softplus), lipschitz=lip_one,
       **_interval_unary(lambda c, n, i, x: np.logaddexp(0.0, x)), jacobian=derivative_rule(_softplus_range)),
    Op("Softsign", **_unary_derivatives(_d_softsign), lipschitz=lip_one, float64=_lower_softsign),
    Op("Elu", nonlinear=True, float64=_lower_elu,
       **_unary_derivatives(_d_elu), lipschitz=_lip_elu,
       **_interval_unary(lambda c, n, i, x: np.where(x > 0, x, float(n.attrs.get("alpha", 1.0))
                                                     * np.expm1(np.minimum(x, 0))))),
    Op("Celu", lipschitz=_lip_elu, float64=NO_DOUBLE),
    Op("Selu", **_unary_derivatives(_d_selu), lipschitz=_lip_selu, float64=_lower_selu),
    Op("Gelu", lipschitz=_lip_gelu, float64=NO_DOUBLE),
    Op("Abs", rowwise=True, nonlinear=True,
       **_unary_derivatives(_d_abs), lipschitz=lip_one,
       **_interval_unary(lambda c, n, i, x: np.abs(x), exact=True, crit=(0.0,))),
    Op("Reciprocal", rowwise=True, nonlinear=True,
       **_unary_derivatives(_d_reciprocal), lipschitz=_UNBOUNDED_SLOPE,
       **_interval_unary(lambda c, n, i, x: 1.0 / x)),
    Op("Sin", **_unary_derivatives(_d_sin)),
    Op("Cos", **_unary_derivatives(_d_cos)),
    Op("Neg", rowwise=True, vjp=_vjp_neg, jvp=_jvp_neg, lipschitz=lip_one,
       **{**_interval_unary(lambda c, n, i, x: -x, exact=True),
          "linear": _affine_unary_linear(lambda c, n, i: (-1.0, 0.0))},
       jacobian=affine_jacobian),
    Op("Cast", rowwise=True, vjp=_vjp_cast, jvp=_jvp_cast, lipschitz=lip_one,
       # float casts only (integer casts of inputs are refused upstream)
       **{**_interval_unary(lambda c, n, i, x: x, exact=True), "linear": _affine_unary_linear(lambda c, n, i: (1.0, 0.0))},
       jacobian=affine_jacobian, fold=fold_identity, layout="keeps axes", logit_walk="moves",
       passes_booleans=True),
    Op("Identity", rowwise=True, vjp=_vjp_identity, jvp=_jvp_identity, lipschitz=lip_one, **_ONE_LINEAR, fold=fold_identity,
       layout="keeps axes", logit_walk="copy"),
    Op("Dropout", vjp=_vjp_identity, jvp=_jvp_identity, lipschitz=lip_one, **_ONE_LINEAR, layout="keeps axes"),
    Op("Sign", rowwise=True, nonlinear=True, piecewise="step",
       nondiff=_STEP, vjp=Reason(_STEP), jvp=Reason(_STEP), **_interval_unary(lambda c, n, i, x: np.sign(x), exact=True)),
    Op("Floor", nonlinear=True, piecewise="step",
       nondiff=_STEP, vjp=Reason(_STEP), jvp=Reason(_STEP), **_interval_unary(lambda c, n, i, x: np.floor(x), exact=True)),
    Op("Ceil", nonlinear=True, piecewise="step",
       nondiff=_STEP, vjp=Reason(_STEP), jvp=Reason(_STEP), **_interval_unary(lambda c, n, i, x: np.ceil(x), exact=True)),
    # numpy and ONNX both round half to even
    Op("Round", nonlinear=True, piecewise="step",
       nondiff=_STEP, vjp=Reason(_STEP), jvp=Reason(_STEP), **_interval_unary(lambda c, n, i, x: np.round(x), exact=True)),
    # broadcasting binary operators
    Op("Add", rowwise=True, vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=lip_sum, point=_bin_point(np.add), ibp=_add_ibp,
       linear=_add_linear(1.0), jacobian=affine_jacobian, fold=_fold_binary(np.add), layout="normalise"),
    Op("Sub", rowwise=True, vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=lip_sum, point=_bin_point(np.subtract), ibp=_sub_ibp,
       linear=_add_linear(-1.0), jacobian=affine_jacobian, fold=_fold_binary(np.subtract), layout="normalise"),
    Op("Mul", rowwise=True, nonlinear=True, refine="two activations",
       vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=_lip_mul, checks_weights=True, point=_bin_point(np.multiply),
       ibp=_mul_ibp, linear=_mul_linear, jacobian=_mul_jacobian, weight_inputs=(0, 1), fold=_fold_binary(np.multiply),
       layout="normalise"),
    Op("Div", rowwise=True, nonlinear=True,
       vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=_lip_div, checks_weights=True,
       point=_bin_point(lambda x, y: x / y if np.issubdtype(np.result_type(x, y), np.floating) else np.floor_divide(x, y)),
       ibp=_div_ibp, linear=_div_linear, jacobian=_div_jacobian, weight_inputs=(1,), fold=_fold_binary(np.divide),
       layout="normalise"),
    Op("Pow", rowwise=True, nonlinear=True, refine="always",
       vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=_UNBOUNDED_SLOPE, point=_bin_point(np.power), ibp=_pow_ibp,
       linear=_pow_linear),
    Op("Max", rowwise=True, nonlinear=True,
       vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=_lip_max_min,
       point=lambda c, n, i: [_fold(np.maximum, [np.asarray(v) for v in i])], ibp=_minmax_ibp(np.maximum)),
    Op("Min", rowwise=True, nonlinear=True,
       vjp=_vjp_binary, jvp=_jvp_binary, lipschitz=_lip_max_min,
       point=lambda c, n, i: [_fold(np.minimum, [np.asarray(v) for v in i])], ibp=_minmax_ibp(np.minimum)),
    Op("Sum", vjp=_vjp_sum, jvp=_jvp_sum, lipschitz=lip_sum,
       point=lambda c, n, i: [sum(np.asarray(v, np.float64) for v in i)], ibp=_sum_ibp, linear=_sum_linear),
    Op("Where", rowwise=True, vjp=_vjp_where, jvp=_jvp_where, point=_where_point, ibp=static_only("Where")),
    # comparisons and logic: boolean outputs
    Op("Equal", rowwise=True, piecewise="comparison", nondiff="a comparison: boolean output",
       vjp=Reason("a comparison"), jvp=Reason("a comparison"),
       point=_bin_point(np.equal), ibp=static_only("Equal")),
    *(Op(name, nondiff="a comparison or logical operator: boolean output", vjp=Reason("boolean output"),
         jvp=Reason("boolean output"), rowwise=name not in ("IsNaN", "IsInf"),
         piecewise="comparison" if name in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual") else "",
         passes_booleans=name in ("Not", "And", "Or", "Xor"))
      for name in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf")),
)
