"""Certified local upper bounds on lambda_max(F) and on the logits' L2 Lipschitz constant over an input set.

For every x' in the set (docs/local_bounds.md):

  * Reference class y (the largest lower logit bound). Since (diag p - p p^T) 1 = 0,
    F = J^T (diag p - p p^T) J = D^T Sigma' D with D the (K-1) x d matrix of rows grad(z_k - z_y), k != y,
    and Sigma' = diag(p') - p' p'^T <= diag(p') (p' = p without y). Hence
    lambda_max(F) <= |diag(sqrt(p'_ub)) D|_2^2, and also <= 1/2 |D|_2^2 (Sigma' <= 1/2 I).
  * p_k <= sigmoid(z_k - z_y) <= sigmoid(-m_k) with m_k the engine's (CROWN) lower bound on z_y - z_k;
    also p_k <= the softmax interval of the logit intervals. The smaller is used.
  * D and J are enclosed elementwise by the interval backward pass (fimaudit.verify.jacobian) as
    mid +- rad. For a row scaling s >= 0: |diag(s) D|_2 <= min(|diag(s) mid|_2 + |diag(s) rad|_2,
    |diag(s) (|mid| + rad)|_2) (triangle inequality; the spectral norm of a nonnegative matrix is monotone
    in its entries). Spectral norms come from the K x K Gram matrix, rounded upward.
  * Lipschitz: sup |J(x')|_2 <= min(|J_mid|_2 + |J_rad|_2, | |J_mid| + J_rad |_2); lambda_max(F) <= 1/2 of
    its square is one more candidate.

The bound is the minimum of the valid candidates. ``eps = 0`` gives bounds at the point itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from .. import ops
from ..errors import FimauditError, UnsupportedModelError
from .intervals import U32, Box
from .jacobian import backward_intervals, check_supported

F64 = np.finfo(np.float64).eps
P_SLACK = 16 * U32  # float32 softmax of the model: a few ulps on each probability


def spectral_norm(a: np.ndarray) -> float:
    """Upper bound on the spectral norm of a (R x d) matrix: sqrt of lambda_max of its R x R Gram, rounded up."""
    a = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    if a.size == 0:
        return 0.0
    gram = a @ a.T
    lam = float(np.linalg.eigvalsh(gram)[-1])
    # float64 Gram product and eigensolver: a relative error of a few R d eps on the trace, taken generously
    tr = float(np.trace(gram))
    lam = max(lam, 0.0) + 8 * (a.shape[1] + a.shape[0]) * F64 * tr
    return float(np.sqrt(lam)) * (1 + 4 * F64)


def interval_norm(mid: np.ndarray, rad: np.ndarray, scale: np.ndarray | None = None,
                  gen: np.ndarray | None = None) -> float:
    """sup of |diag(scale) A|_2 over A = mid + sum_i delta_i gen_i + E, |delta_i| <= 1, |E| <= rad (upper bound;
    rows scaled by ``scale`` >= 0; ``gen`` (G, R, d) or None):
    min(|s mid| + sum_i |s gen_i| (or |s sum_i |gen_i||) + |s rad|, |s (|mid| + sum_i |gen_i| + rad)|)."""
    mid = mid.reshape(mid.shape[0], -1)
    rad = rad.reshape(rad.shape[0], -1)
    s = None if scale is None else np.asarray(scale, dtype=np.float64)[:, None]
    if s is not None:
        mid, rad = mid * s, rad * s * (1 + 4 * F64)
    absgen = 0.0
    gpart = 0.0
    if gen is not None and gen.shape[0]:
        gen = gen.reshape(gen.shape[0], mid.shape[0], -1)
        if s is not None:
            gen = gen * s[None] * (1 + 4 * F64)
        absgen = np.abs(gen).sum(axis=0) * (1 + 4 * F64)
        grams = np.einsum("grd,gsd->grs", gen, gen)
        lam = np.linalg.eigvalsh(grams)[:, -1]
        tr = np.trace(grams, axis1=1, axis2=2)
        each = np.sqrt(np.maximum(lam, 0) + 8 * (gen.shape[1] + gen.shape[2]) * F64 * tr) * (1 + 4 * F64)
        gpart = min(float(each.sum()) * (1 + gen.shape[0] * F64), spectral_norm(absgen))
    tri = spectral_norm(mid) + spectral_norm(rad) + gpart
    mag = spectral_norm(np.abs(mid) + rad + absgen)
    return min(tri, mag)


@dataclass
class LocalBound:
    """One sample's certified local bounds (None with ``reason`` when refused)."""

    eps: float
    norm: str
    fisher_upper: float | None
    lipschitz: float | None
    reference_class: int | None = None
    p_upper: list = field(default_factory=list)  # per class, p_y's entry is 1 (not bounded)
    candidates: dict = field(default_factory=dict)  # each valid bound on lambda_max(F), by name
    sharpen_rows: int = 0  # CROWN rows spent deciding ReLU/MaxPool derivatives
    seconds: float = 0.0
    reason: str | None = None

    def to_dict(self) -> dict:
        from ..results import clean

        return clean({"eps": self.eps, "norm": self.norm, "fisher_upper": self.fisher_upper,
                       "lipschitz": self.lipschitz, "reference_class": self.reference_class,
                       "candidates": self.candidates, "sharpen_rows": self.sharpen_rows,
                       "seconds": round(self.seconds, 4), "reason": self.reason})


def probability_upper(z_lo: np.ndarray, z_hi: np.ndarray, margins: np.ndarray, y: int) -> np.ndarray:
    """p_k upper bounds over the set: min(sigmoid(-m_k), softmax interval), widened for float32; p_y -> 1."""
    k = z_lo.size
    c = z_lo.max()
    el = np.exp(z_lo - c)
    others = np.maximum(el.sum() - el, 0.0)
    soft = 1.0 / (1.0 + others * np.exp(np.minimum(c - z_hi, 700.0)))
    pair = expit(-np.where(np.isfinite(margins), margins, -np.inf))
    pu = np.minimum(soft, pair)
    pu = np.minimum(pu * (1 + P_SLACK) + 1e-300, 1.0)
    pu[y] = 1.0
    return pu.reshape(k)


CHUNK = 256  # CROWN rows per backward pass
SHARPEN_ROWS = 8192  # CROWN rows per sample at most (deciding ReLU/MaxPool derivatives)


def _ambiguous(node, box: Box, consts: dict | None = None) -> np.ndarray:
    """Flat indices of the input entries whose interval leaves the operator's derivative undecided."""
    return ops.TABLE[node.op].undecided(node, box, consts)


def _reforward(g, b, start: int) -> None:
    """IBP again from node ``start`` on, intersected with the boxes already held (both enclose the set)."""
    for node in g.var_nodes[start:]:
        ins = [None if not i else (b.boxes[i] if g.graph.is_var(i) else g.consts.get(i)) for i in node.inputs]
        try:
            out, margin = ops.TABLE[node.op].ibp(g.ctx, node, ins)
        except FimauditError:
            continue
        name = node.outputs[0]
        out = out.widen(np.broadcast_to(np.asarray(margin, dtype=np.float64), out.shape))
        old = b.boxes[name]
        lo, hi = np.maximum(old.lo, out.lo), np.minimum(old.hi, out.hi)
        if np.all(lo <= hi):
            b.boxes[name] = Box(lo, hi)


def sharpen(g, b, input_set, max_rows: int = 4096) -> int:
    """Tighten, by CROWN, only the entries whose interval leaves a ReLU/MaxPool/Clip derivative undecided
    (the rest of the Jacobian bound does not depend on them), layer by layer, re-running IBP after each;
    at most ``max_rows`` CROWN rows in all. Returns the rows spent."""
    spent = 0
    order = {id(n): k for k, n in enumerate(g.var_nodes)}
    layers = [n for n in g.var_nodes
              if ops.TABLE[n.op].undecided is not None and g.graph.is_var(n.inputs[0]) and n.inputs[0] != g.input_name]
    for k, node in enumerate(layers):
        name = node.inputs[0]
        box = b.boxes[name]
        amb = _ambiguous(node, box, g.consts)
        amb = amb[box.hi.reshape(-1)[amb] > box.lo.reshape(-1)[amb]]  # a point interval cannot get tighter
        left = max_rows - spent
        share = left if k == len(layers) - 1 else (3 * left) // 4  # keep a quarter for the layers to come
        room = share // (4 if node.op == "MaxPool" else 2)
        if amb.size == 0 or room <= 0:
            continue
        if amb.size > room:  # the entries likeliest to be decided: midpoint farthest from 0 relative to the width
            c = box.mid.reshape(-1)[amb]
            w = box.rad.reshape(-1)[amb]
            amb = amb[np.argsort(-np.abs(c) / np.maximum(w, 1e-300), kind="stable")[:room]]
        n = int(np.prod(box.shape))
        lo, hi = box.lo.reshape(-1).copy(), box.hi.reshape(-1).copy()
        for start in range(0, amb.size, CHUNK // 2):
            part = amb[start:start + CHUNK // 2]
            a = np.zeros((2 * part.size, n))
            a[np.arange(part.size), part] = 1.0
            a[part.size + np.arange(part.size), part] = -1.0
            res = g.lower(b, input_set, name, a.reshape((2 * part.size,) + box.shape))
            lo[part] = np.maximum(lo[part], res[:part.size])
            hi[part] = np.minimum(hi[part], -res[part.size:])
        spent += 2 * amb.size
        if np.all(lo <= hi):
            b.boxes[name] = Box(lo.reshape(box.shape), hi.reshape(box.shape))
            _reforward(g, b, order[id(node)])
        if node.op == "MaxPool":  # then the pairwise differences, which decide a window better than boxes
            spent += _maxpool_dominance(g, b, input_set, node, share - 2 * amb.size)
    return spent


def _maxpool_dominance(g, b, input_set, node, rows_left: int) -> int:
    """CROWN lower bounds of x_best - x_j for the other candidates j of each window with several: j with a
    positive bound can never be the maximum (a hint the MaxPool Jacobian rule reads, ``b.hints``)."""
    from ..ops.pool import pool_args
    from .conv import window_argmax_offsets

    box = b.boxes[node.inputs[0]]
    kernel, st, dl, bg, en = pool_args(None, node, box.shape)
    lo = np.stack(window_argmax_offsets(box.lo, kernel, st, dl, bg, en)[0])
    hi = np.stack(window_argmax_offsets(box.hi, kernel, st, dl, bg, en)[0])
    idx = np.stack(window_argmax_offsets(np.arange(1, box.lo.size + 1, dtype=np.float64).reshape(box.shape),
                                         kernel, st, dl, bg, en)[0])
    best = np.argmax(lo, axis=0)
    best_lo = np.take_along_axis(lo, best[None], 0)[0]
    best_idx = np.take_along_axis(idx, best[None], 0)[0]
    cand = (hi >= best_lo[None]) & np.isfinite(hi)
    others = cand & (np.arange(lo.shape[0]).reshape((-1,) + (1,) * best.ndim) != best[None])
    others &= (hi > lo) | (np.take_along_axis(hi, best[None], 0) > best_lo[None])  # not two equal constants
    pairs = np.argwhere(others)  # (offset, *window position)
    if pairs.size == 0 or rows_left <= 0:
        return 0
    if pairs.shape[0] > rows_left:  # the closest calls first: the smallest overlap hi_j - lo_best
        gap = hi[tuple(pairs.T)] - best_lo[tuple(pairs[:, 1:].T)]
        pairs = pairs[np.argsort(gap, kind="stable")[:rows_left]]
    n = box.lo.size
    j_idx = idx[tuple(pairs.T)].astype(np.int64) - 1
    b_idx = best_idx[tuple(pairs[:, 1:].T)].astype(np.int64) - 1
    res = np.empty(pairs.shape[0])
    for start in range(0, pairs.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        a = np.zeros((len(j_idx[sl]), n))
        a[np.arange(a.shape[0]), b_idx[sl]] += 1.0
        a[np.arange(a.shape[0]), j_idx[sl]] -= 1.0
        res[sl] = g.lower(b, input_set, node.inputs[0], a.reshape((a.shape[0],) + box.shape))
    dominated = np.zeros(lo.shape, dtype=bool)
    dominated[tuple(pairs[res > 0].T)] = True
    if not hasattr(b, "hints"):
        b.hints = {}
    b.hints[("maxpool_dominated", node.index)] = dominated
    return int(pairs.shape[0])


def local_bounds(g, input_set, *, input_scale: np.ndarray | None = None, refine: str | bool = "auto",
                 margin_method: str = "crown", sharpen_rows: int = SHARPEN_ROWS,
                 lipschitz_cap: float | None = None, symbolic: bool = True) -> LocalBound:
    """Certified upper bounds on lambda_max(F(x')) and on |J(x')|_2 for every x' in ``input_set``.

    ``g``: a ``BoundGraph``; ``input_set``: ``InputSet`` in the space the bound refers to (its model map
    (x - mean)/std). ``input_scale``: an extra diagonal factor du/dx (sample shape) applied to the Jacobian
    when the set's coordinates are not those the Fisher is reported in; None: the set's own coordinates
    (the InputSet's std is applied automatically). Raises ``UnsupportedModelError`` for operators without
    an interval Jacobian rule. ``lipschitz_cap``: a global Lipschitz bound of the logits in the same
    coordinates (the closed-form bound from the weights), used when smaller (a valid bound everywhere).
    """
    t0 = time.perf_counter()
    check_supported(g)
    b = g.intervals(input_set, refine=refine)
    rows_spent = sharpen(g, b, input_set, sharpen_rows) if sharpen_rows else 0
    z = b[g.logit_name]
    lo, hi = z.lo.reshape(-1), z.hi.reshape(-1)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise UnsupportedModelError("the logit intervals are not finite over the set (too large a set?)")
    k = lo.size
    y = int(np.argmax(lo))
    try:
        m = g.margins(b, input_set, y, method=margin_method)
    except FimauditError:
        m = g.margins(b, input_set, y, method="ibp")
    pu = probability_upper(lo, hi, m, y)
    others = [j for j in range(k) if j != y]
    zshape = g.graph.shapes.get(g.logit_name, (1, k))
    rows = np.zeros((2 * k - 1, k))
    rows[:k] = np.eye(k)
    for r, j in enumerate(others):
        rows[k + r, j], rows[k + r, y] = 1.0, -1.0
    # the set's coordinates x: u = (x - mean) / std, so du/dx = 1 / std on top of any extra factor
    factor = np.broadcast_to(1.0 / np.asarray(input_set.std, dtype=np.float64), input_set.x0.shape).reshape(-1)
    if input_scale is not None:
        factor = factor * np.broadcast_to(np.asarray(input_scale, np.float64), input_set.x0.shape).reshape(-1)
    s = np.sqrt(pu[others]) * (1 + 2 * F64)
    lip, cands = np.inf, {"diag_p": np.inf, "half_margin": np.inf}
    # two enclosures of the same Jacobians, both sound: activation symbols (no |W| amplification of an
    # undecided derivative's contribution) and plain intervals (tighter where the cotangent's sign is known)
    for symbols in ((True, False) if symbolic else (False,)):
        g.ctx.cache["jac_symbols"] = symbols
        try:
            adj = backward_intervals(g, b, rows.reshape((2 * k - 1,) + tuple(zshape)))
        finally:
            g.ctx.cache.pop("jac_symbols", None)
        l_, c_ = _norms(adj, k, factor, s)
        lip = min(lip, l_)
        cands = {key: min(cands[key], c_[key]) for key in cands}
    if lipschitz_cap is not None and np.isfinite(lipschitz_cap) and lipschitz_cap > 0:
        lip = min(lip, float(lipschitz_cap))
    cands["half_logit"] = 0.5 * lip ** 2
    fisher = min(cands.values()) * (1 + 8 * F64)
    return LocalBound(float(input_set.eps), input_set.norm, float(fisher), float(lip), y, pu.tolist(), cands,
                      rows_spent, time.perf_counter() - t0)


def _norms(adj, k: int, factor: np.ndarray, s: np.ndarray) -> tuple[float, dict]:
    """The Lipschitz bound and the margin-based Fisher candidates from one enclosure of the 2K - 1 rows."""
    mid = adj.mid.reshape(2 * k - 1, -1)
    rad = adj.rad.reshape(2 * k - 1, -1)
    gen = None if adj.gen is None else adj.gen.reshape(adj.gen.shape[0], 2 * k - 1, -1)
    if not np.all(factor == 1.0):
        af = np.abs(factor)
        mid, rad = mid * factor, rad * af * (1 + 4 * F64) + 4 * F64 * np.abs(mid * factor)
        if gen is not None:
            rad = rad + 4 * F64 * np.abs(gen * factor).sum(axis=0)
            gen = gen * factor
    jg = None if gen is None else gen[:, :k]
    dg = None if gen is None else gen[:, k:]
    lip = interval_norm(mid[:k], rad[:k], gen=jg)
    return lip, {"diag_p": interval_norm(mid[k:], rad[k:], s, dg) ** 2,
                 "half_margin": 0.5 * interval_norm(mid[k:], rad[k:], gen=dg) ** 2}


def refused(eps: float, norm: str, reason: str) -> LocalBound:
    return LocalBound(float(eps), norm, None, None, reason=reason)




# ----------------------------------------------------------------------------------- the scan's use
def scan_local_bounds(model, points: np.ndarray, eps: float, *, kind: str = "logits", pre=None,
                      data_space: bool = False, lambdas=None,
                      lipschitz_cap: float | None = None) -> tuple[list[dict | None], dict, list[str]]:
    """Each scan point's certified local bound over the L-inf ball of radius ``eps`` around it (units of the
    scan's --space: model input, or stored data when ``data_space``, mapped by ``pre``).

    Returns (per-sample dicts, the summary dict, notes). A model the bounds cannot handle gives None
    values with the reason, never a number that is not certified."""
    t0 = time.perf_counter()
    n = points.shape[0]
    lambdas = [None] * n if lambdas is None else list(lambdas)
    from .engine import BoundGraph

    reason = None
    g = None
    try:
        g = BoundGraph.from_model(model)
        check_supported(g)
        if kind != "logits" and g.logit_name == g.output_name:
            raise UnsupportedModelError(f"the output holds {kind} without a final Softmax/LogSoftmax to read the "
                                        "logits from")
    except FimauditError as exc:
        reason = str(exc)
    per: list[dict | None] = []
    for i in range(n):
        if reason is not None:
            per.append(refused(eps, "linf", reason).to_dict())
            continue
        s = _scan_set(points[i], eps, pre, data_space, model.sample_shape)
        try:
            lb = local_bounds(g, s, lipschitz_cap=lipschitz_cap)
        except FimauditError as exc:
            lb = refused(eps, "linf", str(exc))
        d = lb.to_dict()
        lam = lambdas[i]
        d["over_measured"] = (None if lb.fisher_upper is None or lam is None or lam <= 0
                              else lb.fisher_upper / lam)
        per.append(d)
    summary, notes = _summary(per, lambdas, eps, reason, time.perf_counter() - t0)
    return per, summary, notes


def _scan_set(x: np.ndarray, eps: float, pre, data_space: bool, shape):
    from .sets import InputSet

    x = np.asarray(x, dtype=np.float64).reshape(shape)
    if not data_space or pre is None or pre.is_identity:
        return InputSet(x, float(eps), "linf")
    # u = (x scale - mean) / std = (x - mean / scale) / (std / scale)
    mean = pre.broadcast(pre.mean, shape) / pre.scale
    std = pre.broadcast(pre.std, shape) / pre.scale
    return InputSet(x, float(eps), "linf", mean=mean, std=std)


def _summary(per: list, lambdas: list, eps: float, reason: str | None, seconds: float) -> tuple[dict, list[str]]:
    from ..results import Stats

    ups = [d.get("fisher_upper") for d in per]
    lips = [d.get("lipschitz") for d in per]
    ratios = [d.get("over_measured") for d in per]
    violations = sum(1 for u, lam in zip(ups, lambdas) if u is not None and lam is not None and lam > u)
    n_ok = sum(u is not None for u in ups)
    reasons = sorted({d.get("reason") for d in per if d.get("reason")})
    summary = {
        "eps": eps, "norm": "linf",
        "fisher_upper": Stats.of(ups).to_dict(), "lipschitz": Stats.of(lips).to_dict(),
        "over_measured": Stats.of(ratios).to_dict(), "violations": violations, "certified": n_ok,
        "seconds_per_sample": seconds / max(len(per), 1), "reason": reason or (reasons[0] if reasons else None),
    }
    notes = []
    if n_ok < len(per):
        notes.append(f"local upper bound (eps {eps:g}) not computed for {len(per) - n_ok} of {len(per)} samples: "
                     + (reason or "; ".join(reasons)))
    if violations:
        notes.append(f"a measured lambda_max exceeds its certified local upper bound on {violations} samples: "
                     "please report this as a bug")
    return summary, notes


__all__ = ["LocalBound", "interval_norm", "local_bounds", "probability_upper", "refused", "scan_local_bounds",
           "sharpen", "spectral_norm"]
