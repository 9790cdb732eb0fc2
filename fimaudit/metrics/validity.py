"""Per-sample validity of the Fisher prediction: FIM-predicted radius sqrt(2 KL*/lambda_max) against the minimal adversarial distance.

KL(p(x) || p(x + delta)) ~ 1/2 delta^T F delta, so the smallest L2 perturbation that moves the
output distribution by KL* is about r = sqrt(2 KL* / lambda_max(F)). If the Fisher
information predicts fragility sample by sample, r should rank samples as the smallest
adversarial L2 distance does: the Spearman rho between them, with a bootstrap interval over
samples, measures that. The ranks do not depend on KL*; r's scale does.
"""

from __future__ import annotations

import numpy as np

KL_STAR = 0.1  # nats
BOOT = 1000


def predicted_radius(lam: np.ndarray, kl_star: float = KL_STAR) -> np.ndarray:
    """r = sqrt(2 KL* / lambda_max) per sample (inf where lambda_max is 0)."""
    lam = np.asarray(lam, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt(2.0 * kl_star / lam)


def spearman_ci(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, boot: int = BOOT,
                level: float = 0.95) -> dict:
    """Spearman rho with a percentile bootstrap interval over the pairs (resampled with replacement)."""
    from scipy import stats  # here: importing scipy.stats costs ~0.9 s at start-up

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = a.size
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"n": int(n), "value": None, "ci": None}
    rho = float(stats.spearmanr(a, b).statistic)
    idx = rng.integers(0, n, size=(boot, n))
    reps = np.array([stats.spearmanr(a[i], b[i]).statistic for i in idx
                     if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0])
    reps = reps[np.isfinite(reps)]
    ci = [float(q) for q in np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])] if reps.size else None
    return {"n": int(n), "value": rho, "ci": ci}


def validity(lam: np.ndarray, distance: np.ndarray, rng: np.random.Generator, kl_star: float = KL_STAR,
             boot: int = BOOT) -> dict:
    """Per-sample r against the minimal adversarial distance; Spearman rho over samples with both finite and positive.

    Samples misclassified already (distance 0) or never broken (distance inf) are listed but
    left out of rho, and counted.
    """
    lam = np.asarray(lam, dtype=np.float64)
    dist = np.asarray(distance, dtype=np.float64)
    r = predicted_radius(lam, kl_star)
    ok = np.isfinite(r) & np.isfinite(dist) & (dist > 0)
    corr = spearman_ci(r[ok], dist[ok], rng, boot)
    ratio = dist[ok] / r[ok]
    return {
        "kl_star": kl_star,
        "spearman": corr,
        "used": int(ok.sum()),
        "misclassified": int(np.sum(dist == 0)),
        "not_broken": int(np.sum(~np.isfinite(dist))),
        "median_distance_over_radius": float(np.median(ratio)) if ratio.size else None,
        "samples": [{"index": i, "lambda_max": float(lam[i]), "predicted_radius": float(r[i]),
                     "min_distance": float(dist[i])} for i in range(lam.size)],
    }
