"""Probe directions of the sketches, streamed: Gaussian, or a subsampled randomised orthogonal transform.

A ``ProbeStream`` fixes k probes w_i = scale_i * unit_i in d dimensions from a few seeds
and generates any block of rows on demand, in float32, so that no caller ever has to hold
the k x d probe matrix: the sketches evaluate blocks, keep the K x k products and, when a
direction in the span of the probes is needed, ``combine`` rebuilds it from the seeds.

gaussian: w ~ N(0, I_d), generated in blocks of ``GAUSSIAN_BLOCK`` rows, each from its own
seed (so a block can be regenerated alone). orthogonal: rows of the orthonormal DCT-II
basis behind random coordinate signs, drawn without replacement (a subsampled randomised
trigonometric transform), scaled by sqrt(d): E[W W^T]/k = I, exactly W W^T/k = I when
k = d. Rows come from an inverse DCT of one-hot rows (scipy.fft, O(d log d) per row), and a
combination of rows is a single inverse DCT. Blocks of d repeat when k > d.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

PROBES = ("orthogonal", "gaussian")
GAUSSIAN_BLOCK = 64  # rows per independently seeded block of Gaussian probes


class ProbeStream:
    """k probes in d dimensions, generated block by block from seeds drawn from ``rng``."""

    def __init__(self, d: int, k: int, kind: str, rng: np.random.Generator) -> None:
        if kind not in PROBES:
            raise ValueError(f"probes must be one of {PROBES}")
        self.d, self.k, self.kind = int(d), int(k), kind
        if kind == "gaussian":
            self._seed = int(rng.integers(2**63))
            return
        # One sign vector and one set of distinct frequencies per group of d probes.
        self._signs: list[np.ndarray] = []
        freqs = []
        done = 0
        while done < k:
            m = min(d, k - done)
            self._signs.append(rng.choice(np.array([-1, 1], dtype=np.int8), size=d))
            freqs.append(rng.choice(d, size=m, replace=False))
            done += m
        self._freqs = np.concatenate(freqs) if freqs else np.zeros(0, dtype=np.int64)

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop``: unit directions ``(m, d)`` float32 and scales ``(m,)`` float64."""
        stop = min(stop, self.k)
        if self.kind == "gaussian":
            return self._gaussian(start, stop)
        m = stop - start
        units = np.zeros((m, self.d), dtype=np.float32)
        units[np.arange(m), self._freqs[start:stop]] = 1.0
        units = scipy.fft.idct(units, type=2, norm="ortho", axis=1, overwrite_x=True)  # rows of the DCT-II basis
        for g in range(start // self.d, (stop - 1) // self.d + 1 if m else 0):
            lo, hi = max(start, g * self.d) - start, min(stop, (g + 1) * self.d) - start
            units[lo:hi] *= self._signs[g].astype(np.float32)[None, :]
        return units, np.full(m, np.sqrt(self.d))

    def _gaussian(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for g in range(start // GAUSSIAN_BLOCK, (stop - 1) // GAUSSIAN_BLOCK + 1 if stop > start else 0):
            rows = min(GAUSSIAN_BLOCK, self.k - g * GAUSSIAN_BLOCK)
            w = np.random.default_rng([self._seed, g]).standard_normal((rows, self.d), dtype=np.float32)
            lo, hi = max(start, g * GAUSSIAN_BLOCK) - g * GAUSSIAN_BLOCK, min(stop, (g + 1) * GAUSSIAN_BLOCK) - g * GAUSSIAN_BLOCK
            parts.append(w[lo:hi])
        w = np.concatenate(parts) if parts else np.zeros((0, self.d), dtype=np.float32)
        # Small d: norms in float64 (the float32 sum of squares would show in exact-at-k=d tests).
        norms = np.linalg.norm(w.astype(np.float64), axis=1) if self.d < 64 else np.linalg.norm(w, axis=1).astype(np.float64)
        w /= norms[:, None].astype(np.float32)
        return w, norms

    def combine(self, a: np.ndarray, block: int = 64) -> np.ndarray:
        """sum_i a_i unit_i as float64 ``(d,)``, for coefficients ``a`` of shape ``(k,)``."""
        a = np.asarray(a, dtype=np.float64)
        v = np.zeros(self.d)
        if self.kind == "orthogonal":
            for g, signs in enumerate(self._signs):
                lo, hi = g * self.d, min(self.k, (g + 1) * self.d)
                coef = np.zeros(self.d)
                np.add.at(coef, self._freqs[lo:hi], a[lo:hi])
                v += signs * scipy.fft.idct(coef, type=2, norm="ortho")
            return v
        for start in range(0, self.k, block):
            units, _ = self.block(start, start + block)
            v += (a[start : start + block].astype(np.float32) @ units).astype(np.float64)
        return v


def probe_directions(d: int, k: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All k probes at once: unit directions ``(k, d)`` float32 and scales, w_i = scale_i * unit_i.

    For small problems and references; the sketches stream a ``ProbeStream`` instead.
    """
    return ProbeStream(d, k, kind, rng).block(0, k)
