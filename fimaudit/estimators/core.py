"""Exact and sketched estimates of lambda_max(F) and tr(F) at one sample (MATH §3.1, 3.2, 3.4).

Everything works with the K x K matrix G = P^{1/2} S S^T P^{1/2} (or its sketch), never
with the d x d Fisher matrix F = S^T P S.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from .probes import PROBES, probe_directions
from .source import JacobianSource
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 400


@dataclass(frozen=True)
class Estimate:
    """One sample's estimate. ``direction`` (unit, flattened input space) is not serialised."""

    method: str
    lambda_max: float
    lambda_max_ci: tuple[float, float] | None
    trace: float
    trace_se: float
    queries: int
    probes: int
    top_eigenvalues: tuple[float, ...]
    lower_bound: float | None = None
    direction: np.ndarray | None = field(default=None, repr=False, compare=False)


def small_matrix(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """G = P^{1/2} (Y diag(w) Y^T) P^{1/2} for Y of shape (K, k); symmetric K x K."""
    sp = np.sqrt(p)
    yw = y if weights is None else y * weights[None, :]
    g = (sp[:, None] * (yw @ y.T)) * sp[None, :]
    return 0.5 * (g + g.T)


def top_eigen(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric PSD matrix."""
    w, v = linalg.eigh(g)
    order = np.argsort(w)[::-1]
    return np.clip(w[order], 0.0, None), v[:, order]


MIN_FD_REL_ERROR = 1e-4


def quadratic_form(source: JacobianSource, v: np.ndarray) -> float:
    """v^T F v = |P^{1/2} S v|^2 for a unit ``v`` (one JVP: two queries by finite differences)."""
    sv = source.jvp(v[None, :])[0]
    return float(np.sum(source.p * sv * sv))


def certified_lower_bound(source: JacobianSource, v: np.ndarray) -> float:
    """A lower bound on lambda_max(F): v^T F v for a unit ``v`` (MATH §3.5).

    The JVP carries the source's relative error (for finite differences, h against h/2
    measured when the step was chosen); a quadratic form doubles it, so the value is shrunk
    by 2 * max(error, 1e-4) to stay below lambda_max despite that error.
    """
    return shrink_to_bound(quadratic_form(source, v), source.rel_error)


KL_TARGET = 1e-4


def kl_check(source: JacobianSource, v: np.ndarray, quad: float, max_eps: float) -> float | None:
    """Ratio KL(p(x) || p(x + eps v)) / (eps^2/2 v^T F v) for a small eps (one query); ~1 when F is right.

    eps is chosen so the predicted KL is ``KL_TARGET``, capped at ``max_eps``.
    """
    if quad <= 0:
        return None
    eps = min(np.sqrt(2 * KL_TARGET / quad), max_eps)
    lp = source.logp((source.x0 + eps * np.asarray(v, dtype=np.float64))[None, :])[0]
    kl = float(np.sum(source.p * (source.logp0 - lp)))
    return float(kl / (0.5 * eps * eps * quad))


def shrink_to_bound(quad: float, fd_rel_error: float | None) -> float:
    """A measured v^T F v shrunk by twice the relative finite-difference error (>= 1e-4)."""
    margin = 2.0 * max(fd_rel_error or 0.0, MIN_FD_REL_ERROR)
    return max(0.0, quad * (1.0 - margin))


def exact(source: JacobianSource, chunk: int = 128) -> Estimate:
    """The full Jacobian S column by column (2d queries by finite differences), then G exactly."""
    before = source.queries
    d, p = source.d, source.p
    s_cols = np.empty((source.n_classes, d))
    for start in range(0, d, chunk):
        coords = np.arange(start, min(d, start + chunk))
        s_cols[:, coords] = source.jacobian(coords).T
    g = small_matrix(p, s_cols)
    evals, evecs = top_eigen(g)
    # Worst direction v = S^T P^{1/2} u / |.| (MATH §3.1); its Rayleigh quotient is lambda_max.
    v = s_cols.T @ (np.sqrt(p) * evecs[:, 0])
    nv = np.linalg.norm(v)
    direction = v / nv if nv > 0 else None
    return Estimate(
        method="exact",
        lambda_max=float(evals[0]),
        lambda_max_ci=None,
        trace=float(np.trace(g)),
        trace_se=0.0,
        queries=source.queries - before,
        probes=d,
        top_eigenvalues=tuple(float(e) for e in evals[: min(5, len(evals))]),
        lower_bound=None,
        direction=direction,
    )


# Many classes (K = 1000) would make the per-column outer products K^2 k numbers; above this
# the resampled eigenvalues come from warm-started power iterations on all resamples at once.
MAX_OUTER_ENTRIES = 20_000_000
BOOTSTRAP_POWER_STEPS = 30


def _bootstrap_power(a: np.ndarray, base: np.ndarray, weights: np.ndarray, u0: np.ndarray) -> np.ndarray:
    """lambda_max of base + a diag(w_b) a^T for every row w_b of ``weights``, by power iteration.

    Started from the full sample's top eigenvector, which every resample's is close to; the
    Rayleigh quotient is returned (it approaches lambda_max from below).
    """
    u = np.repeat(u0[:, None], weights.shape[0], axis=1)  # (K, B)
    lam = np.zeros(weights.shape[0])
    for _ in range(BOOTSTRAP_POWER_STEPS):
        v = base @ u + a @ (weights.T * (a.T @ u))
        lam_new = np.sum(u * v, axis=0)
        u = v / np.maximum(np.linalg.norm(v, axis=0), 1e-300)
        if np.all(np.abs(lam_new - lam) <= 1e-10 * np.maximum(lam_new, 1e-300)):
            lam = lam_new
            break
        lam = lam_new
    return lam


def bootstrap_ci(
    p: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    fixed: np.ndarray | None = None,
) -> tuple[float, float]:
    """Bootstrap interval for lambda_max over the k sketch columns of ``y``.

    The union of the basic (pivotal, 2*theta - quantiles) and the percentile intervals: the
    basic one corrects the upward bias of lambda_max of a small sketch, the percentile one
    covers where that bias is small. Alone each covered 85-95% at a nominal 95% in seeded
    simulations (K = 3..10, k = 20..999); their union covered 92-100%. ``fixed`` is a K x K
    part of G measured exactly (deflation), added to every resample.
    """
    k = y.shape[1]
    base = np.zeros((p.shape[0], p.shape[0])) if fixed is None else fixed
    lam = top_eigen(base + small_matrix(p, y) / k)[0][0]
    # Resampling columns with replacement = multinomial counts per column; bincount over
    # offset indices draws all resamples at once.
    idx = rng.integers(0, k, size=(resamples, k)) + (np.arange(resamples) * k)[:, None]
    counts = np.bincount(idx.ravel(), minlength=resamples * k).reshape(resamples, k).astype(np.float64)
    a = np.sqrt(p)[:, None] * y  # (K, k)
    kk = a.shape[0]
    if kk * kk * k <= MAX_OUTER_ENTRIES:
        outer = (a.T[:, :, None] * a.T[:, None, :]).reshape(k, kk * kk)  # a_i a_i^T per column
        mats = (counts @ outer / k).reshape(resamples, kk, kk) + base[None]
        boots = np.linalg.eigvalsh(0.5 * (mats + np.swapaxes(mats, 1, 2)))[:, -1]
    else:
        boots = _bootstrap_power(a, base, counts / k, top_eigen(base + small_matrix(p, y) / k)[1][:, 0])
    alpha = (1.0 - level) / 2
    lo_q, hi_q = np.quantile(boots, [alpha, 1 - alpha])
    lo = min(2 * lam - hi_q, lo_q)
    hi = max(2 * lam - lo_q, hi_q)
    return float(max(0.0, lo)), float(hi)
