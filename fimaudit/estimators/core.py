"""Exact and sketched estimates of lambda_max(F) and tr(F) at one sample (MATH §3.1, 3.2, 3.4).

Everything works with the K x K matrix G = P^{1/2} S S^T P^{1/2} (or its sketch), never
with the d x d Fisher matrix F = S^T P S.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from ..model.oracle import LogProbOracle
from .fd import jvp, jvp_coordinates

PROBES = ("orthogonal", "gaussian")
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


def quadratic_form(oracle: LogProbOracle, x0: np.ndarray, p: np.ndarray, v: np.ndarray, h: float) -> float:
    """v^T F v = |P^{1/2} S v|^2 for a unit ``v``, by central differences (two queries)."""
    sv = jvp(oracle, x0, v[None, :], h)[0]
    return float(np.sum(p * sv * sv))


def certified_lower_bound(
    oracle: LogProbOracle, x0: np.ndarray, p: np.ndarray, v: np.ndarray, h: float, fd_rel_error: float | None
) -> float:
    """A lower bound on lambda_max(F): v^T F v for a unit ``v`` (MATH §3.5), two queries.

    The finite-difference value carries the relative JVP error measured when the step was
    chosen (h against h/2); a quadratic form doubles it, so the value is shrunk by
    2 * max(error, 1e-4) to stay below lambda_max despite that error.
    """
    return shrink_to_bound(quadratic_form(oracle, x0, p, v, h), fd_rel_error)


def shrink_to_bound(quad: float, fd_rel_error: float | None) -> float:
    """A measured v^T F v shrunk by twice the relative finite-difference error (>= 1e-4)."""
    margin = 2.0 * max(fd_rel_error or 0.0, MIN_FD_REL_ERROR)
    return max(0.0, quad * (1.0 - margin))


def exact(oracle: LogProbOracle, x0: np.ndarray, p: np.ndarray, h: float, chunk: int = 128) -> Estimate:
    """Full Jacobian of log p by central differences along every coordinate: 2d queries.

    ``p``: probabilities at ``x0`` (from the caller's centre query, counted there).
    """
    before = oracle.queries
    d = int(np.prod(oracle.sample_shape))
    s_cols = np.empty((p.shape[0], d))
    for start in range(0, d, chunk):
        coords = np.arange(start, min(d, start + chunk))
        s_cols[:, coords] = jvp_coordinates(oracle, x0, coords, h).T
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
        queries=oracle.queries - before,
        probes=d,
        top_eigenvalues=tuple(float(e) for e in evals[: min(5, len(evals))]),
        lower_bound=None,
        direction=direction,
    )


def probe_directions(d: int, k: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit probe directions ``(k, d)`` and the scale of each probe, so that w_i = scale_i * unit_i.

    gaussian: w ~ N(0, I_d). orthogonal: columns of the orthonormal DCT-II basis behind random
    coordinate signs, drawn without replacement (a subsampled randomised trigonometric
    transform), scaled by sqrt(d): E[W W^T]/k = I, exactly W W^T/k = I when k = d, and far
    cheaper than a QR factorisation at large d. Blocks of d repeat when k > d.
    """
    if kind == "gaussian":
        w = rng.standard_normal((k, d), dtype=np.float32)
        norms = np.linalg.norm(w.astype(np.float64), axis=1) if d < 64 else np.linalg.norm(w, axis=1).astype(np.float64)
        w /= norms[:, None].astype(np.float32)
        return w, norms
    if kind != "orthogonal":
        raise ValueError(f"probes must be one of {PROBES}")
    units = np.empty((k, d), dtype=np.float32)
    itype = np.int32 if 2 * d * d < 2**31 else np.int64
    odd = 2 * np.arange(d, dtype=itype) + 1
    # cos(pi (2n+1) f / (2d)) depends only on (2n+1) f mod 4d: one table of 4d cosines.
    table = (np.cos(np.pi * np.arange(4 * d) / (2 * d)) * np.sqrt(2.0 / d)).astype(np.float32)
    done = 0
    while done < k:
        m = min(d, k - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=d)
        freqs = rng.choice(d, size=m, replace=False).astype(itype)
        idx = np.multiply.outer(freqs, odd)
        np.remainder(idx, 4 * d, out=idx)
        block = units[done : done + m]
        np.take(table, idx, out=block, mode="clip")  # indices are in range; 'clip' skips the check
        block[freqs == 0] = np.float32(np.sqrt(1.0 / d))
        block *= signs.astype(np.float32)[None, :]
        done += m
    return units, np.full(k, np.sqrt(d))


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


def sketch(
    oracle: LogProbOracle,
    x0: np.ndarray,
    p: np.ndarray,
    h: float,
    k: int,
    rng: np.random.Generator,
    probes: str = "orthogonal",
    check_lower_bound: bool = True,
    fd_rel_error: float | None = None,
) -> Estimate:
    """Output-space sketch G_hat = P^{1/2} (Y Y^T / k) P^{1/2} with Y = S W from 2k queries.

    The Hutchinson trace comes from the same probes: tr(F) ~ (1/k) sum_i |P^{1/2} y_i|^2,
    with its standard error. With ``check_lower_bound`` two more queries evaluate v^T F v
    along the sketch's top direction mapped back to input space (a certified lower bound).
    """
    from .subspace import deflated_sketch  # the plain sketch is deflation with an empty subspace

    d = int(np.prod(oracle.sample_shape))
    return deflated_sketch(
        oracle, x0, p, h, np.zeros((0, d)), k, rng, probes=probes, check_lower_bound=check_lower_bound,
        fd_rel_error=fd_rel_error, name="sketch",
    )
