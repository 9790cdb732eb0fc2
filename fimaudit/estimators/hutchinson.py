"""Hutchinson estimate of tr(F) with a standard error, stopping on a relative-error target (MATH §3.4).

tr(F) = E[w^T F w] for probes with E[w w^T] = I (Rademacher or Gaussian), and
w^T F w = |w|^2 |P^{1/2} S (w/|w|)|^2 costs two queries. Probes are drawn in batches;
the run stops when the standard error of the mean falls below ``rse_target`` times the
mean (after ``min_probes``), or when the query budget is spent. It never stops because two
running means happen to be close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .source import JacobianSource

HUTCHINSON_PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class TraceEstimate:
    trace: float
    se: float
    ci: tuple[float, float]
    probes: int
    queries: int
    stopped_by: str  # "target" or "budget"


def _draw(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(n, d))
    if kind == "gaussian":
        return rng.standard_normal((n, d))
    raise ValueError(f"probes must be one of {HUTCHINSON_PROBES}")


def summarize(values: np.ndarray, level: float = 0.95) -> tuple[float, float, tuple[float, float]]:
    """Mean, standard error and Student-t interval of per-probe values w_i^T F w_i."""
    n = values.size
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("inf"), (float("-inf"), float("inf"))
    se = float(np.std(values, ddof=1) / np.sqrt(n))
    t = float(special.stdtrit(n - 1, 0.5 + level / 2))  # Student t quantile
    return mean, se, (max(0.0, mean - t * se), mean + t * se)


def hutchinson(
    source: JacobianSource,
    budget: int,
    rng: np.random.Generator,
    probes: str = "rademacher",
    rse_target: float = 0.05,
    min_probes: int = 8,
    batch: int = 16,
    level: float = 0.95,
) -> TraceEstimate:
    """Estimate tr(F) at the source's point with at most ``budget`` queries (2 per probe)."""
    before = source.queries
    d, p = source.d, source.p
    values: list[float] = []
    stopped = "budget"
    while True:
        room = (budget - (source.queries - before)) // 2
        if room <= 0:
            break
        n = min(batch, room)
        w = _draw(probes, n, d, rng)
        norms = np.linalg.norm(w, axis=1)
        sv = source.jvp(w / norms[:, None])
        values.extend((norms**2 * np.sum(p[None, :] * sv * sv, axis=1)).tolist())
        arr = np.asarray(values)
        if arr.size >= max(min_probes, 2):
            mean, se, _ = summarize(arr, level)
            if mean > 0 and se <= rse_target * mean:
                stopped = "target"
                break
    arr = np.asarray(values)
    mean, se, ci = summarize(arr, level) if arr.size else (float("nan"), float("inf"), (0.0, float("inf")))
    return TraceEstimate(mean, se, ci, int(arr.size), source.queries - before, stopped)
