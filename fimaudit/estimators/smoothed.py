"""Fisher information of the Gaussian-smoothed model, F_sigma, from counted queries (docs/smoothed_fisher.md).

p_sigma(x) = E_eps[p(x + sigma eps)], eps ~ N(0, I_d); J_sigma = d p_sigma / dx (K x d);
F_sigma = J_sigma^T diag(1/p_sigma) J_sigma, whose nonzero eigenvalues are those of the K x K matrix
G_sigma = P_sigma^{-1/2} J_sigma J_sigma^T P_sigma^{-1/2}.

With m antithetic pairs (2m queries), a_j = (p(x + sigma e_j) - p(x - sigma e_j)) / (2 sigma) and Stein's
identity E[a_j e_j^T] = J_sigma. J_sigma J_sigma^T is estimated without the plug-in's noise term by the
U-statistic over distinct pairs, M = sum_{j != k} (e_j . e_k) a_j a_k^T / (m (m - 1)) = A H_off A^T / (m (m - 1)),
with A = [a_1 .. a_m] (K x m) and H_off the m x m Gram matrix of the draws with its diagonal set to 0. The draws
come in orthogonal blocks (orthogonal Monte Carlo: each draw still N(0, I_d), draws of a block orthogonal), so the
sum runs over pairs from different blocks and is divided by their number m^2 - sum_B |B|^2. Neither the d x d
matrix F_sigma nor the K x d matrix J_sigma is formed. Confidence intervals: delete-a-group jackknife over
groups of whole blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from .. import streams
from ..model.oracle import LogProbOracle

CI_LEVEL = 0.95
JACKKNIFE_GROUPS = 10  # groups of draws deleted one at a time for the confidence interval
MIN_PAIRS = 2 * JACKKNIFE_GROUPS  # the U-statistic needs two draws per group left out
GRAM_CACHE_ELEMENTS = 1 << 24  # draws kept (float64) up to m d of this size; regenerated from their seeds beyond
JAC_STORE_ELEMENTS = 1 << 24  # per-group sums J_b kept up to B K d of this size; regenerated beyond

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


def _block_size(m: int, d: int, groups: int) -> int:
    """Draws per orthogonal block: at most d (orthogonal vectors in R^d) and at most m // groups, so that the
    jackknife's groups are unions of whole blocks (independent of one another)."""
    return max(1, min(d, m // groups))


def _block(key: Sequence[int], k: int, n: int, d: int) -> np.ndarray:
    """Block k (n x d) from its own stream "scan.smoothing" of key = (seed, sample index), block k: n orthonormal directions (QR of a Gaussian d x n matrix,
    signs fixed so that they are Haar-distributed), each scaled by an independent chi_d norm. Every row is
    marginally N(0, I_d); rows of one block are mutually orthogonal; blocks are independent."""
    seed, *index = key
    rng = streams.rng(seed, "scan.smoothing", *index, k)
    g = rng.standard_normal((n, d))
    radius = np.sqrt(rng.chisquare(d, n))
    q, r = np.linalg.qr(g.T)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1.0
    return (q * sign).T * radius[:, None]


class _Draws:
    """The m draws in blocks of ``b`` (the last may be shorter), regenerated on demand from their seeds (one block
    cached), so that nothing depends on the model's batch size."""

    def __init__(self, key: Sequence[int], m: int, d: int, b: int):
        self.key, self.m, self.d, self.b = tuple(key), m, d, b
        self.starts = list(range(0, m, b))
        self._cache: tuple[int, np.ndarray] | None = None

    def block(self, k: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != k:
            s0 = self.starts[k]
            self._cache = (k, _block(self.key, k, min(self.m, s0 + self.b) - s0, self.d))
        return self._cache[1]

    def rows(self, s0: int, s1: int) -> np.ndarray:
        out = []
        for k in range(s0 // self.b, (s1 - 1) // self.b + 1):
            base = k * self.b
            out.append(self.block(k)[max(s0, base) - base : min(s1, base + self.b) - base])
        return np.concatenate(out) if len(out) > 1 else out[0]

    def spans(self, g0: int = 0, g1: int | None = None):
        """(start, stop) of the blocks inside [g0, g1) (group bounds are block bounds)."""
        g1 = self.m if g1 is None else g1
        return [(s, min(self.m, s + self.b)) for s in self.starts if g0 <= s < g1]


def _probabilities(oracle: LogProbOracle, x: np.ndarray, sigma: float, draws: _Draws,
                   block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Query the m antithetic pairs: (A (K x m), S (K x m) the pair means, the draws (m x d) when small enough)."""
    shape = oracle.sample_shape
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    m, d = draws.m, flat.size
    keep = m * d <= GRAM_CACHE_ELEMENTS
    kept = np.empty((m, d)) if keep else None
    a_cols, s_cols = [], []
    for start in range(0, m, block):
        stop = min(m, start + block)
        e = draws.rows(start, stop)
        if kept is not None:
            kept[start:stop] = e
        rows = np.concatenate([flat[None, :] + sigma * e, flat[None, :] - sigma * e]).astype(np.float32)
        p = np.exp(oracle.logp(rows.reshape((-1,) + shape)))
        n = stop - start
        a_cols.append(((p[:n] - p[n:]) / (2.0 * sigma)).T)
        s_cols.append((0.5 * (p[:n] + p[n:])).T)
    return np.concatenate(a_cols, axis=1), np.concatenate(s_cols, axis=1), kept


def _rows(draws: _Draws, kept: np.ndarray | None, s0: int, s1: int) -> np.ndarray:
    return kept[s0:s1] if kept is not None else draws.rows(s0, s1)


_PLUG_IN = False  # tests only: keep the within-block terms (the biased plug-in J_hat J_hat^T)


def _within(sb: np.ndarray) -> np.ndarray:
    """The terms of one block that the U-statistic leaves out: sum_{j, k in block} (e_j . e_k) a_j a_k^T = S_B S_B^T
    with S_B = sum_{j in block} a_j e_j^T (the j = k terms; e_j . e_k = 0 for the other pairs of a block)."""
    return np.zeros((sb.shape[0], sb.shape[0])) if _PLUG_IN else sb @ sb.T


def _pairs(sizes: Sequence[int]) -> int:
    """Ordered pairs (j, k) from different blocks: the count of terms whose mean is J_sigma J_sigma^T."""
    n = int(sum(sizes))
    return n * n - int(sum(int(s) * int(s) for s in sizes))


def _gram_off(draws: _Draws, kept: np.ndarray | None) -> np.ndarray:
    """H_off: the m x m Gram matrix e_j . e_k of the draws with every within-block entry set to 0 (the j = k terms,
    and pairs of one block, orthogonal by construction); regenerated block by block when the draws were not kept."""
    m = draws.m
    spans = draws.spans()
    if kept is not None:
        h = kept @ kept.T
    else:
        h = np.empty((m, m))
        for bi, (s, s1) in enumerate(spans):
            eb = draws.rows(s, s1).copy()
            for t, t1 in spans[bi:]:
                ec = eb if t == s else draws.rows(t, t1)
                h[s:s1, t:t1] = eb @ ec.T
                h[t:t1, s:s1] = h[s:s1, t:t1].T
    for s, s1 in spans:
        if not _PLUG_IN:
            h[s:s1, s:s1] = 0.0
    return h


def _cross_sums_gram(draws: _Draws, kept, a: np.ndarray, bounds: np.ndarray):
    """(total, R_b, T_bb) from the m x m Gram matrix: total = A H_off A^T, R_b = A_b (H_off A^T)_b, T_bb = A_b H_bb A_b^T."""
    h = _gram_off(draws, kept)
    z = h @ a.T  # (m, K): row j = sum_{k not in j's block} (e_j . e_k) a_k
    spans = list(zip(bounds[:-1], bounds[1:]))
    r = [a[:, g0:g1] @ z[g0:g1] for g0, g1 in spans]
    t = [a[:, g0:g1] @ h[g0:g1, g0:g1] @ a[:, g0:g1].T for g0, g1 in spans]
    return a @ z, r, t, None


def _cross_sums_jac(draws: _Draws, kept, a: np.ndarray, bounds: np.ndarray):
    """The same sums from the per-group K x d sums J_b = sum_{j in b} a_j e_j^T and the within-block terms
    D_b = sum_{blocks B in b} S_B S_B^T: total = J J^T - D, R_b = J_b J^T - D_b, T_bb = J_b J_b^T - D_b
    (J = sum_b J_b). Cost K m d instead of m^2 d: the cheaper path when K << m."""
    k, d = a.shape[0], draws.d
    spans = list(zip(bounds[:-1], bounds[1:]))
    store = len(spans) * k * d <= JAC_STORE_ELEMENTS

    def group(g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        jb, db = np.zeros((k, d)), np.zeros((k, k))
        for s0, s1 in draws.spans(g0, g1):
            sb = a[:, s0:s1] @ _rows(draws, kept, s0, s1)
            jb += sb
            db += _within(sb)
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

    m = queries // 2 antithetic pairs; draw j is N(0, I_d) from the stream "scan.smoothing" of
    ``key`` = ``(seed, sample_index)`` (``fimaudit.streams``), so a sample's result depends on its key, x, sigma and m only. p_sigma is
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
    d = int(np.asarray(x).size)
    draws = _Draws(key, m, d, _block_size(m, d, groups))
    a, s, kept = _probabilities(oracle, x, float(sigma), draws, pairs)
    spent = oracle.queries - before
    p_hat = s.mean(axis=1)
    # jackknife groups: contiguous runs of whole blocks (independent of one another)
    nb = len(draws.starts)
    cuts = np.linspace(0, nb, groups + 1).astype(int)
    bounds = np.array([draws.starts[c] if c < nb else m for c in cuts])
    sizes = np.diff(np.append(draws.starts, m))
    # total = sum over pairs (j, k) from different blocks of (e_j . e_k) a_j a_k^T; R_b its terms with j in
    # group b; T_bb those with j, k in b
    cross = _cross_sums_jac if _use_jac(a.shape[0], m) else _cross_sums_gram
    total, r, t, jtot = cross(draws, kept, a, bounds)
    jjt = total / _norm(sizes)
    lam, tr = _lam_trace(jjt, p_hat)
    # delete-a-group jackknife: the numerator without group b is total - R_b - R_b^T + T_bb
    lam_b, tr_b = [], []
    for i, ((g0, g1), r_b, t_bb) in enumerate(zip(zip(bounds[:-1], bounds[1:]), r, t)):
        rest = m - (g1 - g0)
        rest_sizes = np.concatenate([sizes[: cuts[i]], sizes[cuts[i + 1]:]])
        jjt_b = (total - r_b - r_b.T + t_bb) / _norm(rest_sizes)
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
        unit = _top_direction(draws, kept, a, p_hat, v[:, -1], jtot)
    return SmoothedEstimate(
        sigma=float(sigma), lambda_max=max(0.0, lam),
        lambda_max_ci=(max(0.0, lam - q * lam_se), max(0.0, lam + q * lam_se)), trace=max(0.0, tr),
        trace_ci=(max(0.0, tr - q * tr_se), max(0.0, tr + q * tr_se)), lambda_max_se=lam_se, trace_se=tr_se,
        draws=m, queries=spent, groups=groups, p_sigma=p_hat, top_eigenvalues=top, direction=unit,
    )


def _norm(sizes) -> int:
    """The U-statistic's denominator: the pairs it sums (m (m - 1) for independent draws; the plug-in: m^2)."""
    n = int(np.sum(sizes))
    return n * n if _PLUG_IN else _pairs(sizes)


def _use_jac(k: int, m: int) -> bool:
    """The K x d path when it is cheaper (K m d against m^2 d flops)."""
    return 4 * k < m


def _top_direction(draws: _Draws, kept, a: np.ndarray, p: np.ndarray, u: np.ndarray,
                   jtot: np.ndarray | None = None):
    """v ~ J_sigma^T P^{-1/2} u (the top eigenvector of F_sigma from that of G), J_sigma from the plug-in mean."""
    inv = np.where(p > 0, 1.0 / np.sqrt(np.where(p > 0, p, 1.0)), 0.0)
    if jtot is not None:
        v = (inv * u) @ jtot
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else None
    c = (inv * u) @ a / draws.m  # (m,): weight of each draw
    v = np.zeros(draws.d)
    for s0, s1 in draws.spans():
        v += c[s0:s1] @ _rows(draws, kept, s0, s1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


__all__ = ["SMOOTHING_REL", "SMOOTHING_RULE", "SmoothedEstimate", "default_sigma", "smoothed_fisher"]
