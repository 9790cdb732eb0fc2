"""Interval VJPs: bounds on the model's Jacobian over an input set, by a backward pass through the graph.

Given cotangent rows C (R, *logit_shape) (constants: e_k for the logit Jacobian J, e_k - e_y for the
margin Jacobian D), the pass carries, for every tensor t, an enclosure of C . dlogits/dt valid at every
point of the set, in midpoint-radius form ``Adj(mid, rad)``: the true cotangent lies in
[mid - rad, mid + rad] elementwise. Each operator's rule (``OpRule.jacobian`` in the one operator table,
attached here with ``ops.attach``) maps the enclosure of its output's cotangent to its inputs':

  * linear operators with constant weights (Conv, Gemm, MatMul, BatchNorm, pooling means, Add, Concat,
    Reshape and every data-movement op): mid -> L^T mid, rad -> |L|^T rad, reusing the CROWN rule
    (``OpRule.linear``) with the weights replaced by their absolute values for the radius;
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

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import expit

from ..errors import UnsupportedModelError
from .conv import window_argmax_offsets
from .intervals import U32, Box, gamma
from .ops import OPS, _pool_args, attach, layernorm_parts, unbroadcast

ABS_FLOOR = 1e-37  # absolute widening per step (float32 subnormals flushed to zero)
F64 = np.finfo(np.float64).eps
GEN_ELEMS = 2 ** 24  # most generator entries (symbols x rows x tensor size) carried by one cotangent
DERIV_ULPS = 16.0  # error of a float32 derivative kernel (e.g. y (1 - y) of a float32 sigmoid), in ulps of 1


@dataclass(frozen=True)
class Adj:
    """Cotangent enclosure: mid + sum_i delta_i gen_i + e with |e| <= rad elementwise and every delta_i in [-1, 1]
    (arrays (R, *tensor_shape); ``gen`` (G, R, *tensor_shape) or None, one slice per symbol of ``ids``).

    A symbol is the derivative of one activation (ReLU, ...) over the set, shared by every row: linear operators
    map the generators exactly (no |W| amplification of what they carry); rules that do not handle them
    receive the folded enclosure (``fold``: rad + sum_i |gen_i|)."""

    mid: np.ndarray
    rad: np.ndarray
    gen: np.ndarray | None = None
    ids: tuple = ()

    @property
    def lo(self) -> np.ndarray:
        return self.mid - self.rad - self.absgen

    @property
    def hi(self) -> np.ndarray:
        return self.mid + self.rad + self.absgen

    @property
    def absgen(self) -> np.ndarray | float:
        return 0.0 if self.gen is None else np.abs(self.gen).sum(axis=0)

    @staticmethod
    def exact(rows: np.ndarray) -> "Adj":
        rows = np.asarray(rows, dtype=np.float64)
        return Adj(rows, np.zeros_like(rows))

    def fold(self) -> "Adj":
        """The same enclosure without symbols (the interval hull)."""
        if self.gen is None:
            return self
        return Adj(self.mid, (self.rad + self.absgen) * (1 + 4 * F64))

    def widen(self, rel: float) -> "Adj":
        """Add rel * (|mid| + sum |gen| + rad) + floor: the rounding of one float32 step on these magnitudes."""
        return Adj(self.mid, self.rad * (1 + rel) + rel * (np.abs(self.mid) + self.absgen) + ABS_FLOOR,
                   self.gen, self.ids)

    def __add__(self, other: "Adj") -> "Adj":
        if self.gen is None and other.gen is None:
            return Adj(self.mid + other.mid, self.rad + other.rad).widen(gamma(2))
        ids = list(self.ids) + [i for i in other.ids if i not in set(self.ids)]
        pos = {k: n for n, k in enumerate(ids)}
        gen = np.zeros((len(ids),) + self.mid.shape)
        for a in (self, other):
            if a.gen is not None:
                gen[[pos[k] for k in a.ids]] += a.gen
        return Adj(self.mid + other.mid, self.rad + other.rad, gen, tuple(ids)).widen(gamma(2))

    def times(self, lo, hi) -> "Adj":
        """Elementwise product with the interval [lo, hi] (broadcast over the leading row axis)."""
        if self.gen is not None:
            return self.fold().times(lo, hi)
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        if lo is hi or np.array_equal(lo, hi):
            return Adj(self.mid * lo, self.rad * np.abs(lo)).widen(gamma(1))
        a, b = self.lo, self.hi
        c1, c2, c3, c4 = a * lo, a * hi, b * lo, b * hi
        mn = np.minimum(np.minimum(c1, c2), np.minimum(c3, c4))
        mx = np.maximum(np.maximum(c1, c2), np.maximum(c3, c4))
        return Adj(0.5 * (mn + mx), 0.5 * (mx - mn)).widen(gamma(2))

    def symbolic_times(self, lo, hi, symbol) -> "Adj":
        """Product with d in [lo, hi] (elementwise, one value per tensor entry over the set, shared by the rows):
        d = dc + dr eps_j. The part dr eps_j mid is kept as a new symbol per undecided entry j (up to the
        generator budget); dr eps_j (sum gen delta + e) goes to the radius."""
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), self.mid.shape[1:])
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), self.mid.shape[1:])
        dc, dr = 0.5 * (lo + hi), 0.5 * (hi - lo)
        r = self.mid.shape[0]
        ag = self.absgen
        rad = self.rad * np.abs(dc) + dr * (ag + self.rad)
        gen = None if self.gen is None else self.gen * dc
        ids = self.ids
        und = np.flatnonzero(dr.reshape(-1) > 0)
        if und.size:
            mid_flat = self.mid.reshape(r, -1)
            n = mid_flat.shape[1]
            have = 0 if gen is None else gen.shape[0]
            room = max(0, GEN_ELEMS // max(r * n, 1) - have)
            weight = dr.reshape(-1)[und] * np.abs(mid_flat[:, und]).sum(axis=0)
            keep = und[np.argsort(-weight, kind="stable")[:room]] if und.size > room else und
            keep = keep[dr.reshape(-1)[keep] * np.abs(mid_flat[:, keep]).sum(axis=0) > 0]
            rest = np.setdiff1d(und, keep, assume_unique=True)
            rad_flat = rad.reshape(r, -1)
            rad_flat[:, rest] += dr.reshape(-1)[rest] * np.abs(mid_flat[:, rest])
            rad = rad_flat.reshape(self.mid.shape)
            if keep.size:
                new = np.zeros((keep.size, r, n))
                new[np.arange(keep.size), :, keep] = (dr.reshape(-1)[keep][:, None] * mid_flat[:, keep].T)
                new = new.reshape((keep.size,) + self.mid.shape)
                gen = new if gen is None else np.concatenate([gen, new])
                ids = tuple(ids) + tuple((symbol, int(j)) for j in keep)
        return Adj(self.mid * dc, rad, gen, tuple(ids)).widen(gamma(2))

    def capped(self, n_elems: int) -> "Adj":
        """At most GEN_ELEMS generator entries for a tensor of ``n_elems`` per row: the smallest symbols folded."""
        if self.gen is None:
            return self
        r = self.mid.shape[0]
        room = GEN_ELEMS // max(r * n_elems, 1)
        if self.gen.shape[0] <= room:
            return self
        if room <= 0:
            return self.fold()
        size = np.abs(self.gen).reshape(self.gen.shape[0], -1).sum(axis=1)
        order = np.argsort(-size, kind="stable")
        keep, drop = order[:room], order[room:]
        rad = (self.rad + np.abs(self.gen[drop]).sum(axis=0)) * (1 + 4 * F64)
        return Adj(self.mid, rad, self.gen[keep], tuple(self.ids[k] for k in keep))


def _none_rest(node, first):
    return [first] + [None] * (len(node.inputs) - 1)


# ------------------------------------------------------------------------------ linear operators
# Input positions whose constant values are weights (replaced by |w| for the radius); others keep their
# values (shapes, axes, pads, BatchNorm's variance).
WEIGHTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "BatchNormalization": (1,),
           "Mul": (0, 1), "Div": (1,)}


def _fan(node, ins, out: Box, var: int) -> int:
    """Most terms any element of the input's cotangent sums (its float32 rounding: gamma of it)."""
    op = node.op
    if op == "Conv":
        w = np.asarray(ins[1])
        return int(w.shape[0] * np.prod(w.shape[2:])) + 1
    if op == "ConvTranspose":
        w = np.asarray(ins[1])
        return int(w.shape[1] * np.prod(w.shape[2:])) + 1
    if op in ("Gemm", "MatMul"):
        return int(max(out.shape)) + 1
    size_in = max(1, int(np.prod(ins[var].shape)))
    return int(np.ceil(np.prod(out.shape) / size_in)) + 1


def _affine_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """A linear op in its varying inputs (weights constant): the CROWN rule is its exact transpose."""
    r = OPS[node.op]
    res_mid = r.linear(ctx, node, adj.mid, ins, out)
    if res_mid is None:
        raise UnsupportedModelError(f"{node.op} '{node.name}': no interval Jacobian rule for this form")
    widx = WEIGHTS.get(node.op, ())
    abs_ins = [np.abs(np.asarray(v, np.float64)) if (k in widx and v is not None and not isinstance(v, Box)) else v
               for k, v in enumerate(ins)]
    var = next(k for k, v in enumerate(ins) if isinstance(v, Box))
    g = gamma(_fan(node, ins, out, var))
    res_rad = r.linear(ctx, node, adj.rad * (1 + g) + g * (np.abs(adj.mid) + adj.absgen), abs_ins, out)
    res_gen = None
    if adj.gen is not None:  # the symbols' generators map exactly (stacked as extra rows)
        n_g, rows = adj.gen.shape[0], adj.mid.shape[0]
        res_gen = r.linear(ctx, node, adj.gen.reshape((n_g * rows,) + adj.mid.shape[1:]), ins, out)[0]
    outs = []
    for k, (m, rr) in enumerate(zip(res_mid[0], res_rad[0])):
        if m is None or not isinstance(ins[k], Box):
            outs.append(None)
            continue
        m = np.asarray(m, np.float64)
        gk = None if res_gen is None else np.asarray(res_gen[k], np.float64).reshape((n_g,) + m.shape)
        outs.append(Adj(m, np.abs(np.asarray(rr, np.float64)) + ABS_FLOOR, gk, adj.ids if gk is not None else ()))
    return outs


_affine_jacobian.generators = True


def _box(v) -> Box:
    return v if isinstance(v, Box) else Box.point(np.asarray(v, np.float64))


def _mul_jacobian(ctx, node, adj: Adj, ins, out: Box):
    x, y = ins[0], ins[1]
    if not (isinstance(x, Box) and isinstance(y, Box)):
        return _affine_jacobian(ctx, node, adj, ins, out)
    adj = adj.fold()
    shape = adj.mid.shape
    res = []
    for me, other in ((x, y), (y, x)):
        prod = Adj(np.broadcast_to(adj.mid, shape), np.broadcast_to(adj.rad, shape)).times(other.lo, other.hi)
        g = gamma(_fan(node, ins, out, 0 if me is x else 1))
        res.append(Adj(unbroadcast(prod.mid, me.shape), unbroadcast(prod.rad, me.shape)).widen(g))
    return res


def _div_jacobian(ctx, node, adj, ins, out):
    if isinstance(ins[1], Box):
        raise UnsupportedModelError(f"Div '{node.name}': division by a tensor that depends on the input has no "
                                    "interval Jacobian rule")
    return _affine_jacobian(ctx, node, adj, ins, out)


def _rump(am, ar, bm, br, matmul):
    """Midpoint-radius product of two interval matrices (Rump 1999): (mid, rad) of [am +- ar] @ [bm +- br]."""
    mid = matmul(am, bm)
    mag = matmul(np.abs(am), np.abs(bm))
    rad = matmul(np.abs(am), br) + matmul(ar, np.abs(bm)) + matmul(ar, br)
    return mid, rad, mag


def _matmul_boxes_jacobian(ctx, node, adj: Adj, x: Box, w: Box):
    """y = X @ W, both varying: dX = G @ W^T, dW = X^T @ G (per row of G), with intervals on both sides."""
    t = lambda v: np.swapaxes(v, -1, -2)  # noqa: E731
    adj = adj.fold()
    gx = _rump(adj.mid, adj.rad, t(w.mid)[None], t(w.rad)[None], np.matmul)
    gw = _rump(t(x.mid)[None], t(x.rad)[None], adj.mid, adj.rad, np.matmul)
    res = []
    for (mid, rad, mag), shape, n in ((gx, x.shape, w.shape[-1]), (gw, w.shape, x.shape[-2])):
        g = gamma(int(n) + 1)
        res.append(Adj(unbroadcast(mid, shape), unbroadcast(rad * (1 + g) + g * mag, shape) + ABS_FLOOR))
    return res


def _matmul_jacobian(ctx, node, adj, ins, out):
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        if len(x.shape) < 2 or len(w.shape) < 2:
            raise UnsupportedModelError(f"MatMul '{node.name}': a 1-D product of two activations")
        return _matmul_boxes_jacobian(ctx, node, adj, x, w)
    return _affine_jacobian(ctx, node, adj, ins, out)


def _gemm_jacobian(ctx, node, adj, ins, out):
    if isinstance(ins[0], Box) and isinstance(ins[1], Box):
        raise UnsupportedModelError(f"Gemm '{node.name}': a product of two activations has no interval Jacobian rule")
    return _affine_jacobian(ctx, node, adj, ins, out)


for _rule in (_mul_jacobian, _div_jacobian, _matmul_jacobian, _gemm_jacobian):
    _rule.generators = True  # they fold the symbols themselves where a product of two activations needs it


# ------------------------------------------------------------------------------ elementwise
def _derivative_rule(drange):
    """An elementwise op y = f(x): the cotangent times [f'_lo, f'_hi] over the input's interval."""

    def jac(ctx, node, adj, ins, out):
        x = ins[0]
        lo, hi = drange(node, np.minimum(x.lo, x.hi), np.maximum(x.lo, x.hi))
        if ctx.cache.get("jac_symbols", True):
            return _none_rest(node, adj.symbolic_times(lo, hi, node.index))
        return _none_rest(node, adj.times(lo, hi))

    jac.generators = True
    return jac


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


def _dsig(x):
    s = expit(x)
    return s * (1 - s)


def _softplus_range(node, lo, hi):
    m = DERIV_ULPS * U32
    return np.maximum(expit(lo) - m, 0.0), np.minimum(expit(hi) + m, 1.0)


def _clip_bounds(node, ins):
    from .ops import _clip_params

    return _clip_params(None, node, ins)


def _clip_jacobian(ctx, node, adj, ins, out):
    a, b = _clip_bounds(node, ins)
    x = ins[0]
    inside = (x.lo > a) & (x.hi < b)
    outside = (x.hi < a) | (x.lo > b)
    d_lo = np.where(inside, 1.0, 0.0)
    d_hi = np.where(outside, 0.0, 1.0)
    return _none_rest(node, adj.times(d_lo, d_hi))


def _hardsigmoid_range(node, lo, hi):
    al = float(node.attrs.get("alpha", 0.2))
    be = float(node.attrs.get("beta", 0.5))
    t1, t2 = al * lo + be, al * hi + be
    tl, th = np.minimum(t1, t2), np.maximum(t1, t2)
    inside = (tl > 0) & (th < 1)
    outside = (th < 0) | (tl > 1)
    return np.where(inside, al, min(al, 0.0)) * (~outside), np.where(inside, al, max(al, 0.0)) * (~outside)


# ------------------------------------------------------------------------------ max pooling
def _maxpool_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """Route each window's cotangent to every element that can be its maximum: [0, 1] each, exactly 1
    when one element's lower bound is at least every other's upper bound."""
    x = ins[0]
    key = ("maxpool_jac", node.index)
    kernel, st, dl, bg, en = _pool_args(ctx, node, x.shape)
    lo_views, out_sp = window_argmax_offsets(x.lo, kernel, st, dl, bg, en)
    hi_views, _ = window_argmax_offsets(x.hi, kernel, st, dl, bg, en)
    if key not in ctx.cache:
        idx = np.arange(1, int(np.prod(x.shape)) + 1, dtype=np.float64).reshape(x.shape)
        idx_views, _ = window_argmax_offsets(idx, kernel, st, dl, bg, en)
        ctx.cache[key] = [np.where(np.isfinite(v), v, 0).astype(np.int64).reshape(-1) for v in idx_views]
    idx_views = ctx.cache[key]
    lo_stack = np.stack(lo_views)  # (offsets, N, C, *O)
    hi_stack = np.stack(hi_views)
    best_lo = lo_stack.max(axis=0)
    cand = (hi_stack >= best_lo[None]) & np.isfinite(hi_stack)
    dominated = ctx.cache.get("jac_hints", {}).get(("maxpool_dominated", node.index))
    if dominated is not None and dominated.shape == cand.shape:
        cand &= ~dominated  # certified x_best - x_j > 0 over the set (fimaudit.verify.local.sharpen)
    unique = cand.sum(axis=0) == 1
    n_out = int(np.prod(best_lo.shape))
    n_in = int(np.prod(x.shape))
    r = adj.mid.shape[0]
    mid_cols, rad_cols, rows, cols = [], [], [], []
    for o, cand_o in enumerate(cand):
        d_lo = (cand_o & unique).astype(np.float64)
        d_hi = cand_o.astype(np.float64)
        part = adj.times(d_lo, d_hi)
        mid_cols.append(part.mid.reshape(r, -1))
        rad_cols.append(part.rad.reshape(r, -1))
        rows.append(np.arange(n_out) + o * n_out)
        cols.append(idx_views[o])
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    p = sparse.csr_matrix((np.ones(rows_a.size), (rows_a, cols_a)), shape=(n_out * len(cand), n_in + 1))
    mid = np.asarray((p.T @ np.concatenate(mid_cols, axis=1).T).T)
    rad = np.asarray((p.T @ np.concatenate(rad_cols, axis=1).T).T)
    res = Adj(mid[:, 1:].reshape((r,) + x.shape), rad[:, 1:].reshape((r,) + x.shape)).widen(gamma(len(cand) + 1))
    return _none_rest(node, res)


def _global_maxpool_jacobian(ctx, node, adj: Adj, ins, out: Box):
    x = ins[0]
    axes = tuple(range(2, len(x.shape)))
    best_lo = x.lo.max(axis=axes, keepdims=True)
    cand = x.hi >= best_lo
    unique = cand.sum(axis=axes, keepdims=True) == 1
    a = Adj(np.broadcast_to(adj.mid, (adj.mid.shape[0],) + x.shape), np.broadcast_to(adj.rad, (adj.rad.shape[0],) + x.shape))
    return _none_rest(node, a.times((cand & unique).astype(np.float64), cand.astype(np.float64)))


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
    from .ops import _softmax_axis

    x = ins[0]
    nd = len(x.shape)
    ax = _softmax_axis(ctx, node, nd)
    if ctx.opset < 13 and ax != nd - 1:
        raise UnsupportedModelError(f"Softmax '{node.name}': the opset < 13 form over flattened axes has no interval "
                                    "Jacobian rule")
    ylo, yhi = np.clip(out.lo, 0.0, 1.0), np.clip(out.hi, 0.0, 1.0)
    s = _sum_adj(adj.times(ylo, yhi), (1 + ax,))
    return _none_rest(node, _minus(adj, s).times(ylo, yhi))


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
    return _none_rest(node, inner.times(r_lo, r_hi))


# ------------------------------------------------------------------------------ registration
_AFFINE = ("Conv", "ConvTranspose", "BatchNormalization", "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum",
           "Add", "Sub", "Neg", "Cast", "Identity", "Dropout", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze",
           "Unsqueeze", "Slice", "Gather", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")
for _name in _AFFINE:
    if _name in OPS and OPS[_name].linear is not None:
        attach(_name, jacobian=_affine_jacobian)
attach("Mul", jacobian=_mul_jacobian)
attach("Div", jacobian=_div_jacobian)
attach("MatMul", jacobian=_matmul_jacobian)
attach("Gemm", jacobian=_gemm_jacobian)
attach("Relu", jacobian=_derivative_rule(_relu_range))
attach("LeakyRelu", jacobian=_derivative_rule(_leaky_range))
attach("Sigmoid", jacobian=_derivative_rule(_bell_range(_dsig, 0.25)))
attach("Tanh", jacobian=_derivative_rule(_bell_range(lambda v: 1.0 - np.tanh(v) ** 2, 1.0)))
attach("Erf", jacobian=_derivative_rule(_bell_range(lambda v: 2.0 / np.sqrt(np.pi) * np.exp(-v * v), 2.0 / np.sqrt(np.pi))))
attach("Softplus", jacobian=_derivative_rule(_softplus_range))
attach("HardSigmoid", jacobian=_derivative_rule(_hardsigmoid_range))
attach("Clip", jacobian=_clip_jacobian)
attach("MaxPool", jacobian=_maxpool_jacobian)
attach("Softmax", jacobian=_softmax_jacobian)
attach("LayerNormalization", jacobian=_layernorm_jacobian)
attach("GlobalMaxPool", jacobian=_global_maxpool_jacobian)


def jacobian_ops() -> tuple[str, ...]:
    """Operators with an interval Jacobian rule."""
    return tuple(sorted(k for k, r in OPS.items() if r.jacobian is not None))


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
        if OPS[node.op].jacobian is None:
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
        rule = OPS[node.op].jacobian
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
