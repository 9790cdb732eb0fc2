"""Cotangent enclosures for the interval backward pass: ``Adj`` (midpoint-radius form with shared symbols).

The per-operator interval VJPs live in the operator table (``fimaudit.ops``); ``fimaudit.verify.jacobian``
runs the backward pass over a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .intervals import gamma

ABS_FLOOR = 1e-37  # absolute widening per step (float32 subnormals flushed to zero)
F64 = np.finfo(np.float64).eps
GEN_ELEMS = 2 ** 24  # most generator entries (symbols x rows x tensor size) carried by one cotangent
DERIV_ULPS = 16.0  # error of a float32 derivative kernel (e.g. y (1 - y) of a float32 sigmoid), in ulps of 1


@dataclass(frozen=True)
class Adj:
    """Cotangent enclosure: mid + sum_i delta_i gen_i + e with |e| <= rad elementwise and every delta_i in [-1, 1]
    (arrays (R, *tensor_shape); ``gen`` (G, R, *tensor_shape) or None, one slice per symbol of ``ids``).

    A symbol is the derivative of one activation (ReLU, ...) over the set, shared by every row: linear operators
    map the generators exactly (no |W| amplification of what they carry); rules that do not handle them
    receive the folded enclosure (``fold``: rad + sum_i |gen_i|)."""

    mid: np.ndarray
    rad: np.ndarray
    gen: np.ndarray | None = None
    ids: tuple = ()

    @property
    def lo(self) -> np.ndarray:
        return self.mid - self.rad - self.absgen

    @property
    def hi(self) -> np.ndarray:
        return self.mid + self.rad + self.absgen

    @property
    def absgen(self) -> np.ndarray | float:
        return 0.0 if self.gen is None else np.abs(self.gen).sum(axis=0)

    @staticmethod
    def exact(rows: np.ndarray) -> "Adj":
        rows = np.asarray(rows, dtype=np.float64)
        return Adj(rows, np.zeros_like(rows))

    def fold(self) -> "Adj":
        """The same enclosure without symbols (the interval hull)."""
        if self.gen is None:
            return self
        return Adj(self.mid, (self.rad + self.absgen) * (1 + 4 * F64))

    def widen(self, rel: float) -> "Adj":
        """Add rel * (|mid| + sum |gen| + rad) + floor: the rounding of one float32 step on these magnitudes."""
        return Adj(self.mid, self.rad * (1 + rel) + rel * (np.abs(self.mid) + self.absgen) + ABS_FLOOR,
                   self.gen, self.ids)

    def __add__(self, other: "Adj") -> "Adj":
        if self.gen is None and other.gen is None:
            return Adj(self.mid + other.mid, self.rad + other.rad).widen(gamma(2))
        ids = list(self.ids) + [i for i in other.ids if i not in set(self.ids)]
        pos = {k: n for n, k in enumerate(ids)}
        gen = np.zeros((len(ids),) + self.mid.shape)
        for a in (self, other):
            if a.gen is not None:
                gen[[pos[k] for k in a.ids]] += a.gen
        return Adj(self.mid + other.mid, self.rad + other.rad, gen, tuple(ids)).widen(gamma(2))

    def times(self, lo, hi) -> "Adj":
        """Elementwise product with the interval [lo, hi] (broadcast over the leading row axis)."""
        if self.gen is not None:
            return self.fold().times(lo, hi)
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        if lo is hi or np.array_equal(lo, hi):
            return Adj(self.mid * lo, self.rad * np.abs(lo)).widen(gamma(1))
        a, b = self.lo, self.hi
        c1, c2, c3, c4 = a * lo, a * hi, b * lo, b * hi
        mn = np.minimum(np.minimum(c1, c2), np.minimum(c3, c4))
        mx = np.maximum(np.maximum(c1, c2), np.maximum(c3, c4))
        return Adj(0.5 * (mn + mx), 0.5 * (mx - mn)).widen(gamma(2))

    def symbolic_times(self, lo, hi, symbol) -> "Adj":
        """Product with d in [lo, hi] (elementwise, one value per tensor entry over the set, shared by the rows):
        d = dc + dr eps_j. The part dr eps_j mid is kept as a new symbol per undecided entry j (up to the
        generator budget); dr eps_j (sum gen delta + e) goes to the radius."""
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), self.mid.shape[1:])
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), self.mid.shape[1:])
        dc, dr = 0.5 * (lo + hi), 0.5 * (hi - lo)
        r = self.mid.shape[0]
        ag = self.absgen
        rad = self.rad * np.abs(dc) + dr * (ag + self.rad)
        gen = None if self.gen is None else self.gen * dc
        ids = self.ids
        und = np.flatnonzero(dr.reshape(-1) > 0)
        if und.size:
            mid_flat = self.mid.reshape(r, -1)
            n = mid_flat.shape[1]
            have = 0 if gen is None else gen.shape[0]
            room = max(0, GEN_ELEMS // max(r * n, 1) - have)
            weight = dr.reshape(-1)[und] * np.abs(mid_flat[:, und]).sum(axis=0)
            keep = und[np.argsort(-weight, kind="stable")[:room]] if und.size > room else und
            keep = keep[dr.reshape(-1)[keep] * np.abs(mid_flat[:, keep]).sum(axis=0) > 0]
            rest = np.setdiff1d(und, keep, assume_unique=True)
            rad_flat = rad.reshape(r, -1)
            rad_flat[:, rest] += dr.reshape(-1)[rest] * np.abs(mid_flat[:, rest])
            rad = rad_flat.reshape(self.mid.shape)
            if keep.size:
                new = np.zeros((keep.size, r, n))
                new[np.arange(keep.size), :, keep] = (dr.reshape(-1)[keep][:, None] * mid_flat[:, keep].T)
                new = new.reshape((keep.size,) + self.mid.shape)
                gen = new if gen is None else np.concatenate([gen, new])
                ids = tuple(ids) + tuple((symbol, int(j)) for j in keep)
        return Adj(self.mid * dc, rad, gen, tuple(ids)).widen(gamma(2))

    def capped(self, n_elems: int) -> "Adj":
        """At most GEN_ELEMS generator entries for a tensor of ``n_elems`` per row: the smallest symbols folded."""
        if self.gen is None:
            return self
        r = self.mid.shape[0]
        room = GEN_ELEMS // max(r * n_elems, 1)
        if self.gen.shape[0] <= room:
            return self
        if room <= 0:
            return self.fold()
        size = np.abs(self.gen).reshape(self.gen.shape[0], -1).sum(axis=1)
        order = np.argsort(-size, kind="stable")
        keep, drop = order[:room], order[room:]
        rad = (self.rad + np.abs(self.gen[drop]).sum(axis=0)) * (1 + 4 * F64)
        return Adj(self.mid, rad, self.gen[keep], tuple(self.ids[k] for k in keep))
