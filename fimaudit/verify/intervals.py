"""Interval values and the outward-rounding model shared by every operator rule.

A ``Box`` is an elementwise interval [lo, hi] held as two float64 arrays of the tensor's shape. The
engine computes in float64; onnxruntime evaluates the model in float32, so each rule also returns a
*rounding margin* m >= 0 (elementwise, broadcastable to the output): the engine widens [lo, hi] to
[lo - m, hi + m], and CROWN's back-substitution subtracts |Lambda|.m at that node. The margins bound
the float32 evaluation error of that one operator given float32 inputs inside the intervals
(docs/verify.md, "Rounding").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

U32 = 2.0 ** -24  # unit roundoff of float32 (round to nearest)
TINY = 1e-37  # absolute floor: float32 subnormals flushed to zero, per operation
SAFETY = 2.0  # onnxruntime may reorder sums or fuse layers (Conv+BatchNorm): twice the textbook bound
ELEMENTWISE_ULPS = 8.0  # transcendental float32 kernels (exp, tanh, erf, ...): a few ulps, taken generously


@dataclass(frozen=True)
class Box:
    """Elementwise interval [lo, hi] (float64 arrays of one shape; lo <= hi)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    @property
    def mid(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    @property
    def rad(self) -> np.ndarray:
        return 0.5 * (self.hi - self.lo)

    @property
    def mag(self) -> np.ndarray:
        """max |v| over the interval."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    @staticmethod
    def point(x: np.ndarray) -> "Box":
        x = np.asarray(x, dtype=np.float64)
        return Box(x, x)

    def map(self, f) -> "Box":
        """A coordinatewise nondecreasing map applied to both ends."""
        return Box(np.asarray(f(self.lo), dtype=np.float64), np.asarray(f(self.hi), dtype=np.float64))

    def widen(self, margin) -> "Box":
        if margin is None:
            return self
        m = np.asarray(margin, dtype=np.float64)
        if not np.any(m):
            return self
        return Box(self.lo - m, self.hi + m)


def gamma(n: int) -> float:
    """Classical bound on the relative error of a float32 sum of n terms (Higham's gamma_n), times SAFETY."""
    nu = max(int(n), 1) * U32
    return SAFETY * nu / (1.0 - nu) if nu < 0.5 else np.inf


def round_margin(mag, ops: int = 1) -> np.ndarray:
    """Margin of ``ops`` correctly rounded float32 operations on values of magnitude ``mag``."""
    return gamma(ops) * np.asarray(mag, dtype=np.float64) + TINY


def elementwise_margin(mag) -> np.ndarray:
    """Margin of a float32 elementwise kernel (transcendental: a few ulps of the result)."""
    return ELEMENTWISE_ULPS * SAFETY * U32 * np.asarray(mag, dtype=np.float64) + TINY


def as_box(v) -> Box:
    return v if isinstance(v, Box) else Box.point(np.asarray(v, dtype=np.float64))


# ------------------------------------------------------------------ what operator rules share
@dataclass
class OpContext:
    """What an interval rule may read beside its inputs: the opset, the static shapes and a per-node cache."""

    opset: int
    shapes: dict[str, tuple[int, ...]]
    cache: dict = field(default_factory=dict)


def unbroadcast(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a (S, *out) over the axes broadcasting added to an input of ``shape`` -> (S, *shape)."""
    out_nd = a.ndim - 1
    lead = out_nd - len(shape)
    if lead:
        a = a.sum(axis=tuple(range(1, 1 + lead)))
    axes = tuple(1 + i for i, n in enumerate(shape) if n == 1 and a.shape[1 + i] != 1)
    if axes:
        a = a.sum(axis=axes, keepdims=True)
    return a.reshape((a.shape[0],) + tuple(shape))


def sum_rows(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise <a[s], v> with v broadcast to a's trailing shape -> (S,)."""
    v = np.broadcast_to(np.asarray(v, dtype=np.float64), a.shape[1:])
    return a.reshape(a.shape[0], -1) @ v.reshape(-1)


def pos_neg(a: np.ndarray):
    return np.maximum(a, 0.0), np.minimum(a, 0.0)


def concretize_lower(a: np.ndarray, box: Box) -> np.ndarray:
    """min over the box of the rows of a: sum(a+ lo + a- hi) -> (S,); a zero coefficient ignores an infinite end."""
    ap, an = pos_neg(a)
    if np.all(np.isfinite(box.lo)) and np.all(np.isfinite(box.hi)):
        return sum_rows(ap, box.lo) + sum_rows(an, box.hi)
    lo = np.broadcast_to(box.lo, a.shape[1:])[None]
    hi = np.broadcast_to(box.hi, a.shape[1:])[None]
    terms = np.where(ap > 0, ap * np.where(ap > 0, lo, 0.0), 0.0) + np.where(an < 0, an * np.where(an < 0, hi, 0.0), 0.0)
    return terms.reshape(a.shape[0], -1).sum(axis=1)


LOWER_SLOPES = ("adaptive", "low", "high")  # ReLU-like lower lines tried by ``BoundGraph.margins``
