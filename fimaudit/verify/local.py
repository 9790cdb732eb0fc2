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

from ..errors import FimauditError, UnsupportedModelError
from .intervals import U32
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


def interval_norm(mid: np.ndarray, rad: np.ndarray, scale: np.ndarray | None = None) -> float:
    """sup of |diag(scale) A|_2 over A in [mid - rad, mid + rad] (upper bound; rows scaled by ``scale`` >= 0)."""
    mid = mid.reshape(mid.shape[0], -1)
    rad = rad.reshape(rad.shape[0], -1)
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64)[:, None]
        mid, rad = mid * s, rad * s * (1 + 4 * F64)
    tri = spectral_norm(mid) + spectral_norm(rad)
    mag = spectral_norm(np.abs(mid) + rad)
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
    seconds: float = 0.0
    reason: str | None = None

    def to_dict(self) -> dict:
        from ..result import _clean

        return _clean({"eps": self.eps, "norm": self.norm, "fisher_upper": self.fisher_upper,
                       "lipschitz": self.lipschitz, "reference_class": self.reference_class,
                       "candidates": self.candidates, "seconds": round(self.seconds, 4), "reason": self.reason})


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


def local_bounds(g, input_set, *, input_scale: np.ndarray | None = None, refine: str | bool = "auto",
                 margin_method: str = "crown") -> LocalBound:
    """Certified upper bounds on lambda_max(F(x')) and on |J(x')|_2 for every x' in ``input_set``.

    ``g``: a ``BoundGraph``; ``input_set``: ``InputSet`` in the space the bound refers to (its model map
    (x - mean)/std). ``input_scale``: an extra diagonal factor du/dx (sample shape) applied to the Jacobian
    when the set's coordinates are not those the Fisher is reported in; None: the set's own coordinates
    (the InputSet's std is applied automatically). Raises ``UnsupportedModelError`` for operators without
    an interval Jacobian rule.
    """
    t0 = time.perf_counter()
    check_supported(g)
    b = g.intervals(input_set, refine=refine)
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
    adj = backward_intervals(g, b, rows.reshape((2 * k - 1,) + tuple(zshape)))
    mid = adj.mid.reshape(2 * k - 1, -1)
    rad = adj.rad.reshape(2 * k - 1, -1)
    # the set's coordinates x: u = (x - mean) / std, so du/dx = 1 / std on top of any extra factor
    factor = np.broadcast_to(1.0 / np.asarray(input_set.std, dtype=np.float64), input_set.x0.shape).reshape(-1)
    if input_scale is not None:
        factor = factor * np.broadcast_to(np.asarray(input_scale, np.float64), input_set.x0.shape).reshape(-1)
    if not np.all(factor == 1.0):
        af = np.abs(factor)
        mid, rad = mid * factor, rad * af * (1 + 4 * F64) + 4 * F64 * np.abs(mid * factor)
    jm, jr = mid[:k], rad[:k]
    dm, dr = mid[k:], rad[k:]
    lip = interval_norm(jm, jr)
    s = np.sqrt(pu[others]) * (1 + 2 * F64)
    cands = {
        "diag_p": interval_norm(dm, dr, s) ** 2,
        "half_margin": 0.5 * interval_norm(dm, dr) ** 2,
        "half_logit": 0.5 * lip ** 2,
    }
    fisher = min(cands.values()) * (1 + 8 * F64)
    return LocalBound(float(input_set.eps), input_set.norm, float(fisher), float(lip), y, pu.tolist(), cands,
                      time.perf_counter() - t0)


def refused(eps: float, norm: str, reason: str) -> LocalBound:
    return LocalBound(float(eps), norm, None, None, reason=reason)


__all__ = ["LocalBound", "interval_norm", "local_bounds", "probability_upper", "refused", "spectral_norm"]
