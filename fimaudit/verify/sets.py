"""Perturbation sets in attack space (the space ``fimaudit attack`` perturbs): L-inf and L2 balls of radius
eps intersected with the box ``--input-range``, mapped to the model input by the attack-space
preprocessing ((x - mean) / std on the channel axis; ``fimaudit.data.Preprocess``, scale 1).

IBP starts from the box enclosing the set. CROWN's linear bound a . u + b (u: model input) becomes
a' . x + b' in attack space (a' = a / std), and is minimised over the set:
  * L-inf ball and box: the box [max(x0 - eps, lo), min(x0 + eps, hi)] (exact);
  * L2 ball and box: by Lagrangian duality, g(lam) = -lam eps^2 + sum_i min_{x_i in [lo_i, hi_i]}
    (a'_i x_i + lam (x_i - x0_i)^2) is a lower bound for every lam >= 0 (weak duality); it is
    maximised over lam by golden-section search and compared with lam = 0 (the box alone) and with
    lam = |a'| / (2 eps) (the ball's own bound a' . x0 - eps |a'|_2, the dual norm, is below it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .intervals import Box

GOLDEN_STEPS = 40


@dataclass(frozen=True)
class InputSet:
    """{x : |x - x0|_norm <= eps} intersected with [lo, hi] (attack space), seen by the model as (x - mean)/std.

    ``x0`` has the sample shape; ``mean``/``std`` broadcast to it (``Preprocess.broadcast``); eps = inf
    is the whole box (bounds over the input domain).
    """

    x0: np.ndarray
    eps: float
    norm: str = "linf"
    lo: float = -np.inf
    hi: float = np.inf
    mean: np.ndarray | float = 0.0
    std: np.ndarray | float = 1.0

    @classmethod
    def of(cls, x0, eps: float, norm: str = "linf", input_range=(-np.inf, np.inf), pre=None) -> "InputSet":
        """From attack-space x0 and a ``fimaudit.data.Preprocess`` (scale 1: attack space -> model input)."""
        x0 = np.asarray(x0, dtype=np.float64)
        mean, std = 0.0, 1.0
        if pre is not None and not pre.is_identity:
            if pre.scale != 1.0:
                x0 = x0  # attack space is data x scale already; the map used here is (x - mean) / std
            mean = pre.broadcast(pre.mean, x0.shape)
            std = pre.broadcast(pre.std, x0.shape)
        if norm not in ("linf", "l2"):
            raise ValueError(norm)
        return cls(x0, float(eps), norm, float(input_range[0]), float(input_range[1]), mean, std)

    @classmethod
    def domain(cls, sample_shape, input_range, pre=None) -> "InputSet":
        """The whole input box --input-range (bounds over the input domain)."""
        lo, hi = float(input_range[0]), float(input_range[1])
        return cls.of(np.full(tuple(sample_shape), 0.5 * (lo + hi)), np.inf, "linf", (lo, hi), pre)

    def attack_box(self) -> Box:
        e = self.eps
        lo = np.maximum(self.x0 - e, self.lo) if np.isfinite(e) else np.full(self.x0.shape, self.lo)
        hi = np.minimum(self.x0 + e, self.hi) if np.isfinite(e) else np.full(self.x0.shape, self.hi)
        if np.isfinite(e):
            lo, hi = np.minimum(lo, self.x0), np.maximum(hi, self.x0)  # x0 itself may sit a float ulp outside
        return Box(lo, hi)

    def model_box(self, input_shape) -> Box:
        """The interval of the model input u = (x - mean) / std over the set (batch axis added)."""
        b = self.attack_box()
        std = np.asarray(self.std, dtype=np.float64)
        u1, u2 = (b.lo - self.mean) / std, (b.hi - self.mean) / std
        lo, hi = np.minimum(u1, u2), np.maximum(u1, u2)
        # the float64 map itself rounds: one ulp-scale widening (float32 margins follow in the engine)
        pad = 4 * np.finfo(np.float64).eps * np.maximum(np.abs(lo), np.abs(hi))
        return Box((lo - pad).reshape(input_shape), (hi + pad).reshape(input_shape))

    def lower(self, a_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """min over the set of a . u (u = (x - mean)/std; a: (S, *sample_shape)) -> (values (S,), magnitudes (S,))."""
        s = a_model.shape[0]
        std = np.broadcast_to(np.asarray(self.std, dtype=np.float64), self.x0.shape).reshape(-1)
        mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float64), self.x0.shape).reshape(-1)
        a = a_model.reshape(s, -1) / std  # attack-space coefficients
        const = -(a @ mean)
        box = self.attack_box()
        lo, hi = box.lo.reshape(-1), box.hi.reshape(-1)
        ap, an = np.maximum(a, 0), np.minimum(a, 0)
        box_min = ap @ lo + an @ hi
        mag = np.abs(a) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(const)
        if self.norm == "linf" or not np.isfinite(self.eps):
            return box_min + const, mag
        best = np.maximum(box_min, _l2_dual(a, self.x0.reshape(-1), self.eps, lo, hi))
        return best + const, mag + np.abs(a) @ np.abs(self.x0.reshape(-1))


def _dual_value(a: np.ndarray, x0: np.ndarray, eps: float, lo: np.ndarray, hi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """g(lam) per row: -lam eps^2 + sum_i min over [lo_i, hi_i] of a_i x + lam (x - x0_i)^2 (lam > 0)."""
    lam = lam[:, None]
    x = np.clip(x0[None, :] - a / (2 * lam), lo[None, :], hi[None, :])
    return (a * x + lam * (x - x0[None, :]) ** 2).sum(axis=1) - lam[:, 0] * eps * eps


def _l2_dual(a: np.ndarray, x0: np.ndarray, eps: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max over lam > 0 of the Lagrangian dual of min a.x over the L2 ball and the box (golden section on log lam)."""
    if eps <= 0:
        return a @ x0
    norm = np.linalg.norm(a, axis=1)
    lam0 = np.maximum(norm / (2 * eps), 1e-300)
    left, right = np.log(lam0) - 20.0, np.log(lam0) + 8.0
    phi = (np.sqrt(5) - 1) / 2
    c = right - phi * (right - left)
    d = left + phi * (right - left)
    fc = _dual_value(a, x0, eps, lo, hi, np.exp(c))
    fd = _dual_value(a, x0, eps, lo, hi, np.exp(d))
    best = np.maximum(_dual_value(a, x0, eps, lo, hi, lam0), np.maximum(fc, fd))
    for _ in range(GOLDEN_STEPS):
        go_right = fc < fd  # maximise: keep the side with the larger value
        left = np.where(go_right, c, left)
        right = np.where(go_right, right, d)
        c_new = right - phi * (right - left)
        d_new = left + phi * (right - left)
        c, d = c_new, d_new
        fc = _dual_value(a, x0, eps, lo, hi, np.exp(c))
        fd = _dual_value(a, x0, eps, lo, hi, np.exp(d))
        best = np.maximum(best, np.maximum(fc, fd))
    return best


@dataclass(frozen=True)
class BoxSet:
    """An elementwise box [lo, hi] given directly in model-input units (sample shape): for callers that already
    hold one (local Lipschitz/Fisher bounds around a point, a branch of a split domain). Same interface as
    ``InputSet`` for ``BoundGraph``."""

    lo: np.ndarray
    hi: np.ndarray

    def model_box(self, input_shape) -> Box:
        lo = np.asarray(self.lo, dtype=np.float64)
        hi = np.asarray(self.hi, dtype=np.float64)
        return Box(np.minimum(lo, hi).reshape(input_shape), np.maximum(lo, hi).reshape(input_shape))

    def lower(self, a_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = a_model.shape[0]
        a = a_model.reshape(s, -1)
        lo, hi = np.asarray(self.lo, np.float64).reshape(-1), np.asarray(self.hi, np.float64).reshape(-1)
        ap, an = np.maximum(a, 0), np.minimum(a, 0)
        return ap @ lo + an @ hi, np.abs(a) @ np.maximum(np.abs(lo), np.abs(hi))
