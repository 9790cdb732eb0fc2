"""Finite-difference Jacobian-vector products of log p and the choice of the step h (MATH §2).

Central differences: S v ~ (log p(x + h v) - log p(x - h v)) / (2h), two queries per
direction. For smooth models the error is O(h^2); in float32 the round-off error grows like
eps32 * |log p| / h, so h is taken from the input's scale near eps32^(1/3) and checked by
comparing h with h/2. For piecewise-linear models (ReLU, max-pool) the difference is exact
unless a kink lies within h; at an exact tie (a ReLU input of exactly 0, e.g. constant image
backgrounds) central differences return the average of the one-sided derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.oracle import LogProbOracle

EPS32 = float(np.finfo(np.float32).eps)
# Relative steps tried (times the input scale). Measured on the zoo (28x28 Fashion-MNIST,
# random unit directions): float32 round-off makes the h-vs-h/2 discrepancy grow like 1/h
# below ~3e-3 (10% at 1e-4), ReLU/max-pool kinks make it grow with h above it (9% at 0.1 for
# a VGG), while a smooth ViT is best at the largest step. So a log grid is searched.
CANDIDATE_REL_STEPS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
STEP_CHECK_DIRECTIONS = 4


def jvp(oracle: LogProbOracle, x0: np.ndarray, dirs: np.ndarray, h: float, chunk: int = 256) -> np.ndarray:
    """Central-difference JVPs of log p at ``x0`` along rows of ``dirs``.

    ``x0``: ``(*sample_shape)``; ``dirs``: ``(m, d)`` (any scale, typically unit rows);
    returns ``(m, K)`` with row i ~ S dirs[i]. Spends ``2 m`` queries.
    """
    shape = oracle.sample_shape
    # Rows are built in float32, the precision the model receives anyway: casting later would
    # round the same way, and this halves the memory traffic at large d.
    flat = np.asarray(x0, dtype=np.float32).reshape(-1)
    h32 = np.float32(h)
    out = []
    for start in range(0, dirs.shape[0], chunk):
        block = np.asarray(dirs[start : start + chunk], dtype=np.float32)
        m = block.shape[0]
        both = np.empty((2 * m, flat.size), dtype=np.float32)
        np.multiply(block, h32, out=both[m:])  # the step, held in the lower half until it is used
        np.add(flat[None, :], both[m:], out=both[:m])
        np.subtract(flat[None, :], both[m:], out=both[m:])
        lp = oracle.logp(both.reshape((-1,) + shape))
        out.append((lp[:m] - lp[m:]) / (2.0 * h))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0))


RANGE_REL_STEP = 1e-3  # the uncalibrated step of attacks, CLEVER and validity: this share of the input range
UNIT_RANGE = (0.0, 1.0)  # the range compare's CLEVER assumes (its step: 1e-3 whatever the model's input range)


def range_step(input_range: tuple[float, float], rel: float = RANGE_REL_STEP) -> float:
    """The step rule of the black-box gradients (attacks, CLEVER, validity): ``rel`` times the input range's width.

    Callers today: the gradient attacks (``rel`` = their ``fd_rel_step``, NES sigma 10x the step), ``clever`` and
    ``validity`` (the attack config's input range), compare's CLEVER (``UNIT_RANGE``). scan calibrates its own step
    instead: ``choose_step``."""
    lo, hi = input_range
    return rel * (hi - lo)


def coordinate_differences(logp, rows: np.ndarray, coords: np.ndarray, h: float, *, dtype=None,
                           exact_step: bool = False) -> np.ndarray:
    """Central differences of ``logp`` along unit coordinates: ``(n, m, K)`` for rows ``(n, *shape)`` and ``m`` coords.

    The one finite-difference gradient helper (JVPs on coordinates for CLEVER/validity, the margin gradient of the
    black-box attacks): every row is stepped by +-h along each coordinate in ``coords``, all 2nm points in ONE
    ``logp`` call (plus rows first). ``dtype``: the rows' dtype (None keeps the input's); ``exact_step``: divide by
    the step the rows really differ by in that dtype (float32 rows fed to the model as they are) rather than 2h.
    """
    n = rows.shape[0]
    shape = rows.shape[1:]
    flat = np.asarray(rows, dtype=dtype).reshape(n, -1)
    m = coords.shape[0]
    at = np.arange(m)
    plus = np.repeat(flat[:, None, :], m, axis=1)
    minus = plus.copy()
    step = plus.dtype.type(h)
    plus[:, at, coords] += step
    minus[:, at, coords] -= step
    if exact_step:
        denom = (plus[:, at, coords].astype(np.float64) - minus[:, at, coords].astype(np.float64))[..., None]
    else:
        denom = 2.0 * h
    d = flat.shape[1]
    lp = logp(np.concatenate([plus.reshape(n * m, d), minus.reshape(n * m, d)]).reshape((-1,) + tuple(shape)))
    return (lp[: n * m] - lp[n * m :]).reshape(n, m, -1) / denom


def paired_differences(logp, x: np.ndarray, dirs: np.ndarray, h: float, first: np.ndarray | None = None) -> np.ndarray:
    """Central differences of ``logp`` at rows ``x`` ``(n, *shape)``, each along its own direction ``dirs[i]``
    (same shape): ``(n, K)`` from the ``2n`` rows ``x + h dirs, x - h dirs`` (float64) in one ``logp`` call.

    The gradient graph's self-check (``autodiff.check``, float32 model and float64 copy alike) is built on it.
    ``first``: log p of the leading rows of that stack, already known (they are not evaluated again).
    """
    rows = np.concatenate([x + h * dirs, x - h * dirs], axis=0)
    out = logp(rows) if first is None else np.concatenate([first, logp(rows[first.shape[0]:])], axis=0)
    n = x.shape[0]
    return (out[:n] - out[n:]) / (2.0 * h)


def jvp_coordinates(oracle: LogProbOracle, x0: np.ndarray, coords: np.ndarray, h: float) -> np.ndarray:
    """JVPs along unit coordinate vectors e_i for i in ``coords``; returns ``(len(coords), K)``."""
    direct = oracle.feeds_directly and oracle.model.input_dtype == np.float32
    # The model sees exactly float32 rows when fed directly: divide by the step they really differ by.
    row = np.asarray(x0).reshape((1,) + tuple(oracle.sample_shape))
    return coordinate_differences(oracle.logp, row, coords, h, dtype=np.float32 if direct else np.float64,
                                  exact_step=direct)[0]


@dataclass(frozen=True)
class StepChoice:
    """The finite-difference step, how it was chosen and its measured h-vs-h/2 discrepancy."""

    h: float
    scale: float
    relative_discrepancy: float | None
    queries: int
    source: str  # "auto" or "user"

    def to_dict(self) -> dict:
        return {
            "h": self.h,
            "input_scale": self.scale,
            "h_vs_half_h_relative_discrepancy": self.relative_discrepancy,
            "queries": self.queries,
            "source": self.source,
        }


def input_scale(x: np.ndarray) -> float:
    """Typical per-coordinate magnitude of the inputs: their RMS, floored by their spread."""
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    spread = float(np.std(x))
    scale = max(rms, spread)
    return scale if scale > 0 else 1.0


def _discrepancy(a: np.ndarray, b: np.ndarray) -> float:
    num = np.linalg.norm(a - b)
    den = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(num / den) if den > 0 else 0.0


def choose_step(
    oracle: LogProbOracle,
    x0: np.ndarray,
    data_scale: float,
    rng: np.random.Generator,
    user_step: float | None = None,
    max_step: float | None = None,
) -> StepChoice:
    """Pick h from the input's scale and validate it by comparing JVPs at h and h/2.

    Every candidate h = r * scale is checked on ``STEP_CHECK_DIRECTIONS`` random unit
    directions at the first sample; the one with the smallest relative h-vs-h/2 discrepancy
    wins (about 16 queries per candidate). With ``user_step`` only that step is checked and
    reported, never replaced.
    """
    before = oracle.queries
    d = int(np.prod(oracle.sample_shape))
    dirs = rng.standard_normal((STEP_CHECK_DIRECTIONS, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # One h serves coordinate and random unit directions: both have |S v| ~ |S|_F / sqrt(d)
    # on average, and the output round-off eps * |log p| / h does not depend on the direction.
    candidates = [user_step] if user_step is not None else [r * data_scale for r in CANDIDATE_REL_STEPS]
    if user_step is None and max_step is not None:
        # With dithering the step must stay well inside the dither so it does not reach the kinks again.
        candidates = [h for h in candidates if h <= max_step] or [max_step]
    best: tuple[float, float] | None = None
    for h in candidates:
        full = jvp(oracle, x0, dirs, h)
        half = jvp(oracle, x0, dirs, h / 2)
        disc = _discrepancy(full, half)
        if best is None or disc < best[1]:
            best = (h, disc)
    assert best is not None
    return StepChoice(
        h=float(best[0]),
        scale=float(data_scale),
        relative_discrepancy=float(best[1]),
        queries=oracle.queries - before,
        source="user" if user_step is not None else "auto",
    )
