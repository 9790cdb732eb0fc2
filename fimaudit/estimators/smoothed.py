"""Fisher information of the Gaussian-smoothed model, F_sigma, from counted queries (docs/smoothed_fisher.md).

p_sigma(x) = E_eps[p(x + sigma eps)], eps ~ N(0, I_d); J_sigma = d p_sigma / dx (K x d);
F_sigma = J_sigma^T diag(1/p_sigma) J_sigma, whose nonzero eigenvalues are those of the K x K matrix
G_sigma = P_sigma^{-1/2} J_sigma J_sigma^T P_sigma^{-1/2}.

With m antithetic pairs (2m queries), a_j = (p(x + sigma e_j) - p(x - sigma e_j)) / (2 sigma) and Stein's
identity E[a_j e_j^T] = J_sigma. J_sigma J_sigma^T is estimated without the plug-in's noise term by the
U-statistic over distinct pairs, M = sum_{j != k} (e_j . e_k) a_j a_k^T / (m (m - 1)) = A H_off A^T / (m (m - 1)),
with A = [a_1 .. a_m] (K x m) and H_off the m x m Gram matrix of the draws with its diagonal set to 0. Neither
the d x d matrix F_sigma nor the K x d matrix J_sigma is formed. Confidence intervals: delete-a-group jackknife.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from ..model.oracle import LogProbOracle

CI_LEVEL = 0.95
JACKKNIFE_GROUPS = 10  # groups of draws deleted one at a time for the confidence interval
MIN_PAIRS = 2 * JACKKNIFE_GROUPS  # the U-statistic needs two draws per group left out
GRAM_CACHE_ELEMENTS = 1 << 24  # draws kept (float64) up to m d of this size; regenerated from their seeds beyond
JAC_STORE_ELEMENTS = 1 << 24  # per-group sums J_b kept up to B K d of this size; regenerated beyond
CHUNK = 64  # draws per accumulation step: fixed, so that sums never depend on the model's batch size

# Default smoothing: the noise sigma*eps has 5% of the sample's norm (sigma = 5% of its RMS, so that
# E|sigma eps|^2 = 0.05^2 |x|^2 in any units and at any d); see docs/smoothed_fisher.md, "Choosing sigma".
SMOOTHING_REL = 5e-2
SMOOTHING_RULE = ("sigma = 5% of the sample's RMS (its own values; the noise carries 5% of the sample's norm); "
                  "5% of the input range's width when the sample is all zeros")


def default_sigma(x_row: np.ndarray, input_range: tuple[float, float] | None = None) -> tuple[float, str]:
    """The automatic smoothing sigma for one sample and the rule that gave it (``SMOOTHING_RULE``).

    sigma = ``SMOOTHING_REL`` * sqrt(mean(x^2)) of the sample's own values (the units of ``x_row``, i.e. of
    --space); an all-zero sample falls back to ``SMOOTHING_REL`` * (hi - lo) of ``input_range`` (or 1 unit
    without one). Depends on this sample alone.
    """
    x = np.asarray(x_row, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    if rms > 0 and np.isfinite(rms):
        return SMOOTHING_REL * rms, f"{SMOOTHING_RULE}: RMS {rms:.4g}"
    width = 1.0
    if input_range is not None and np.isfinite(input_range[1] - input_range[0]) and input_range[1] > input_range[0]:
        width = float(input_range[1] - input_range[0])
    return SMOOTHING_REL * width, f"{SMOOTHING_RULE}: all-zero sample, range width {width:.4g}"


@dataclass(frozen=True)
class SmoothedEstimate:
    """lambda_max and trace of F_sigma at one point, their jackknife intervals and what they cost."""

    sigma: float
    lambda_max: float
    lambda_max_ci: tuple[float, float]
    trace: float
    trace_ci: tuple[float, float]
    lambda_max_se: float  # jackknife standard errors
    trace_se: float
    draws: int  # antithetic pairs m
    queries: int  # 2 m
    groups: int  # jackknife groups
    p_sigma: np.ndarray = field(repr=False, compare=False)  # (K,) the smoothed probabilities
    top_eigenvalues: tuple[float, ...] = ()
    direction: np.ndarray | None = field(default=None, repr=False, compare=False)  # unit, flattened (top of F_sigma)

    def to_dict(self) -> dict:
        """The per-sample ``smoothed`` record of a scan report."""
        p = np.asarray(self.p_sigma)
        return {
            "sigma": self.sigma,
            "lambda_max": self.lambda_max,
            "lambda_max_ci": list(self.lambda_max_ci),
            "trace": self.trace,
            "trace_ci": list(self.trace_ci),
            "draws": self.draws,
            "queries": self.queries,
            "ci": f"{int(100 * CI_LEVEL)}% delete-a-group jackknife over {self.groups} groups of draws",
            "predicted": int(np.argmax(p)) if p.size else None,
            "p_sigma_max": float(np.max(p)) if p.size else None,
        }


def _draw(key: Sequence[int], j: int, d: int) -> np.ndarray:
    """Draw j's Gaussian direction: its own stream [*key, j], so it never depends on the batch or on m."""
    return np.random.default_rng([*key, j]).standard_normal(d)


def _probabilities(oracle: LogProbOracle, x: np.ndarray, sigma: float, key: Sequence[int], m: int,
                   block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Query the m antithetic pairs: (A (K x m), S (K x m) the pair means, the draws (m x d) when small enough)."""
    shape = oracle.sample_shape
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    d = flat.size
    keep = m * d <= GRAM_CACHE_ELEMENTS
    kept = np.empty((m, d)) if keep else None
    a_cols, s_cols = [], []
    for start in range(0, m, block):
        idx = range(start, min(m, start + block))
        e = np.stack([_draw(key, j, d) for j in idx])
        if kept is not None:
            kept[start : start + len(idx)] = e
        rows = np.concatenate([flat[None, :] + sigma * e, flat[None, :] - sigma * e]).astype(np.float32)
        p = np.exp(oracle.logp(rows.reshape((-1,) + shape)))
        n = len(idx)
        a_cols.append(((p[:n] - p[n:]) / (2.0 * sigma)).T)
        s_cols.append((0.5 * (p[:n] + p[n:])).T)
    return np.concatenate(a_cols, axis=1), np.concatenate(s_cols, axis=1), kept


def _self_terms(e: np.ndarray) -> np.ndarray:
    """|e_j|^2 for the rows of ``e``: the weights of the j = k terms that the U-statistic leaves out."""
    return np.einsum("ij,ij->i", e, e)


def _gram_off(key: Sequence[int], m: int, d: int, kept: np.ndarray | None, block: int = CHUNK) -> np.ndarray:
    """H_off: the m x m Gram matrix e_j . e_k of the draws without its diagonal (the j = k terms; regenerated
    block by block when the draws were too many to keep)."""
    if kept is not None:
        h = kept @ kept.T
        h[np.diag_indices(m)] -= _self_terms(kept)
    else:
        h = np.empty((m, m))
        starts = list(range(0, m, block))
        for bi, s in enumerate(starts):
            eb = np.stack([_draw(key, j, d) for j in range(s, min(m, s + block))])
            for t in starts[bi:]:
                ec = eb if t == s else np.stack([_draw(key, j, d) for j in range(t, min(m, t + block))])
                h[s : s + eb.shape[0], t : t + ec.shape[0]] = eb @ ec.T
                h[t : t + ec.shape[0], s : s + eb.shape[0]] = (eb @ ec.T).T
            idx = np.arange(s, s + eb.shape[0])
            h[idx, idx] -= _self_terms(eb)
    return h


def _cross_sums_gram(key: Sequence[int], m: int, d: int, kept, a: np.ndarray, bounds: np.ndarray):
    """(total, R_b, T_bb) from the m x m Gram matrix: total = A H_off A^T, R_b = A_b (H_off A^T)_b, T_bb = A_b H_bb A_b^T."""
    h = _gram_off(key, m, d, kept)
    z = h @ a.T  # (m, K): row j = sum_{k != j} (e_j . e_k) a_k
    spans = list(zip(bounds[:-1], bounds[1:]))
    r = [a[:, g0:g1] @ z[g0:g1] for g0, g1 in spans]
    t = [a[:, g0:g1] @ h[g0:g1, g0:g1] @ a[:, g0:g1].T for g0, g1 in spans]
    return a @ z, r, t, None


def _cross_sums_jac(key: Sequence[int], m: int, d: int, kept, a: np.ndarray, bounds: np.ndarray):
    """The same sums from the per-group K x d sums J_b = sum_{j in b} a_j e_j^T and the diagonal terms
    D_b = sum_{j in b} |e_j|^2 a_j a_j^T: total = J J^T - D, R_b = J_b J^T - D_b, T_bb = J_b J_b^T - D_b
    (J = sum_b J_b). Cost K m d instead of m^2 d: the cheaper path when K << m."""
    k = a.shape[0]
    spans = list(zip(bounds[:-1], bounds[1:]))
    store = len(spans) * k * d <= JAC_STORE_ELEMENTS

    def group(g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        jb, db = np.zeros((k, d)), np.zeros((k, k))
        for s0 in range(g0, g1, CHUNK):
            s1 = min(g1, s0 + CHUNK)
            e = kept[s0:s1] if kept is not None else np.stack([_draw(key, j, d) for j in range(s0, s1)])
            ab = a[:, s0:s1]
            jb += ab @ e
            db += (ab * _self_terms(e)[None, :]) @ ab.T
        return jb, db

    jtot, diag, t, kept_j = np.zeros((k, d)), [], [], []
    for g0, g1 in spans:
        jb, db = group(g0, g1)
        jtot += jb
        diag.append(db)
        t.append(jb @ jb.T - db)
        if store:
            kept_j.append(jb)
    r = [(kept_j[i] if store else group(g0, g1)[0]) @ jtot.T - diag[i] for i, (g0, g1) in enumerate(spans)]
    return jtot @ jtot.T - sum(diag), r, t, jtot


def _g_matrix(jjt: np.ndarray, p: np.ndarray) -> np.ndarray:
    """G = P^{-1/2} (J J^T) P^{-1/2}; classes never seen (p_sigma estimated 0, their a_j all 0) drop out."""
    inv = np.where(p > 0, 1.0 / np.sqrt(np.where(p > 0, p, 1.0)), 0.0)
    g = inv[:, None] * jjt * inv[None, :]
    return 0.5 * (g + g.T)


def _lam_trace(jjt: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    g = _g_matrix(jjt, p)
    return float(linalg.eigvalsh(g)[-1]), float(np.trace(g))


def smoothed_fisher(oracle: LogProbOracle, x: np.ndarray, sigma: float, queries: int, key: Sequence[int],
                    block: int = 256, groups: int = JACKKNIFE_GROUPS, direction: bool = False) -> SmoothedEstimate:
    """lambda_max(F_sigma) and tr(F_sigma) at ``x`` (``sample_shape``, estimation space) from at most ``queries``.

    m = queries // 2 antithetic pairs; draw j is N(0, I_d) from the stream ``[*key, j]`` (``key`` e.g.
    ``(seed, stream, sample_index)``), so a sample's result depends on its key, x, sigma and m only. p_sigma is
    the mean of the same 2m outputs (both x + sigma e and x - sigma e are draws of the smoothing distribution).
    The point estimates are clipped at 0 (F_sigma is PSD); the intervals are the estimate -/+ t_{B-1} times the
    delete-a-group jackknife standard error over ``groups`` contiguous groups of draws, clipped at 0.
    ``direction``: also return the top eigenvector of F_sigma (unit, flattened; costs one pass over the draws).
    """
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError("sigma must be a positive number")
    m = int(queries) // 2
    if m < MIN_PAIRS:
        raise ValueError(f"the smoothed Fisher needs at least {2 * MIN_PAIRS} queries (got {queries})")
    before = oracle.queries
    pairs = max(1, block // 2)
    a, s, kept = _probabilities(oracle, x, float(sigma), key, m, pairs)
    spent = oracle.queries - before
    d = int(np.asarray(x).size)
    p_hat = s.mean(axis=1)
    bounds = np.linspace(0, m, groups + 1).astype(int)
    # total = sum_{j != k} (e_j . e_k) a_j a_k^T; R_b its terms with j in group b; T_bb those with j, k in b
    cross = _cross_sums_jac if _use_jac(a.shape[0], m) else _cross_sums_gram
    total, r, t, jtot = cross(key, m, d, kept, a, bounds)
    jjt = total / (m * (m - 1))
    lam, tr = _lam_trace(jjt, p_hat)
    # delete-a-group jackknife: the numerator without group b is total - R_b - R_b^T + T_bb
    lam_b, tr_b = [], []
    for (g0, g1), r_b, t_bb in zip(zip(bounds[:-1], bounds[1:]), r, t):
        rest = m - (g1 - g0)
        jjt_b = (total - r_b - r_b.T + t_bb) / (rest * (rest - 1))
        p_b = (s.sum(axis=1) - s[:, g0:g1].sum(axis=1)) / rest
        lb, tb = _lam_trace(jjt_b, p_b)
        lam_b.append(lb)
        tr_b.append(tb)
    from scipy import stats  # here: importing scipy.stats costs ~0.9 s at start-up

    q = float(stats.t.ppf(0.5 + CI_LEVEL / 2, groups - 1))

    def jackknife_se(reps: list[float]) -> float:
        reps_a = np.asarray(reps)
        return float(np.sqrt((groups - 1) / groups * np.sum((reps_a - reps_a.mean()) ** 2)))

    lam_se, tr_se = jackknife_se(lam_b), jackknife_se(tr_b)

    g = _g_matrix(jjt, p_hat)
    w, v = linalg.eigh(g)
    top = tuple(float(max(0.0, t)) for t in w[::-1][: min(5, w.size)])
    unit = None
    if direction:
        unit = _top_direction(key, m, d, kept, a, p_hat, v[:, -1], jtot)
    return SmoothedEstimate(
        sigma=float(sigma), lambda_max=max(0.0, lam),
        lambda_max_ci=(max(0.0, lam - q * lam_se), max(0.0, lam + q * lam_se)), trace=max(0.0, tr),
        trace_ci=(max(0.0, tr - q * tr_se), max(0.0, tr + q * tr_se)), lambda_max_se=lam_se, trace_se=tr_se,
        draws=m, queries=spent, groups=groups, p_sigma=p_hat, top_eigenvalues=top, direction=unit,
    )


def _use_jac(k: int, m: int) -> bool:
    """The K x d path when it is cheaper (K m d against m^2 d flops)."""
    return 4 * k < m


def _top_direction(key, m: int, d: int, kept, a: np.ndarray, p: np.ndarray, u: np.ndarray,
                   jtot: np.ndarray | None = None):
    """v ~ J_sigma^T P^{-1/2} u (the top eigenvector of F_sigma from that of G), J_sigma from the plug-in mean."""
    inv = np.where(p > 0, 1.0 / np.sqrt(np.where(p > 0, p, 1.0)), 0.0)
    if jtot is not None:
        v = (inv * u) @ jtot
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else None
    c = (inv * u) @ a / m  # (m,): weight of each draw
    v = np.zeros(d)
    for start in range(0, m, CHUNK):
        idx = range(start, min(m, start + CHUNK))
        e = kept[start : start + len(idx)] if kept is not None else np.stack([_draw(key, j, d) for j in idx])
        v += c[start : start + len(idx)] @ e
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


__all__ = ["SMOOTHING_REL", "SMOOTHING_RULE", "SmoothedEstimate", "default_sigma", "smoothed_fisher"]
