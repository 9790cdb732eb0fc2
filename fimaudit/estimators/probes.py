"""Probe directions of the sketches, streamed: Gaussian, or a subsampled randomised orthogonal transform.

A ``ProbeStream`` fixes k probes w_i = scale_i * unit_i in d dimensions from a few seeds
and generates any block of rows on demand, in float32, so that no caller ever has to hold
the k x d probe matrix: the sketches evaluate blocks, keep the K x k products and, when a
direction in the span of the probes is needed, ``combine`` rebuilds it from the seeds.

gaussian: w ~ N(0, I_d), generated in blocks of ``GAUSSIAN_BLOCK`` rows, each from its own
seed (so a block can be regenerated alone). orthogonal: rows of an orthonormal DCT-II basis
behind random coordinate signs, drawn without replacement (a subsampled randomised
trigonometric transform), scaled by sqrt(d): E[W W^T]/k = I, exactly W W^T/k = I when
k = d. The basis is the separable (multi-dimensional) DCT over the sample's axes, e.g.
3 x 224 x 224 for an image: its rows are outer products of 1-D DCT rows, so a block of m rows
costs O(m d) multiplications (five times cheaper than an inverse FFT per row at 224 x 224,
bench/scan_speed.py), and a combination of rows is one inverse n-D DCT (scipy.fft.idctn).
An axis too long to hold its 1-D basis (over ``MAX_FACTOR_BASIS`` entries) gets its rows from
inverse DCTs of one-hot rows instead. Blocks of d repeat with new signs when k > d.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .. import streams

PROBES = ("orthogonal", "gaussian")
GAUSSIAN_BLOCK = 64  # rows per independently seeded block of Gaussian probes
MAX_FACTOR_BASIS = 2048  # longest axis whose 1-D DCT basis (n x n float32) is held in memory


def _factors(d: int, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Axes of the separable transform: the sample's axes longer than 1, or (d,) for a flat sample.

    A single axis longer than ``MAX_FACTOR_BASIS`` is split into two factors a * b (a the largest
    divisor <= sqrt(n), when a >= 8) so that both 1-D bases fit; any factorisation gives an
    orthonormal basis of R^d.
    """
    dims = tuple(int(n) for n in (shape or (d,)) if int(n) > 1)
    if int(np.prod(dims, dtype=np.int64)) != d or not dims:
        dims = (d,)
    if len(dims) == 1 and dims[0] > MAX_FACTOR_BASIS:
        n = dims[0]
        a = max((f for f in range(1, int(np.sqrt(n)) + 1) if n % f == 0), default=1)
        if a >= 8:
            dims = (a, n // a)
    return dims


def _dct_rows(n: int, freqs: np.ndarray, cache: dict[int, np.ndarray]) -> np.ndarray:
    """Rows ``freqs`` of the orthonormal n-point DCT-II basis, float32 ``(len(freqs), n)``."""
    if n <= MAX_FACTOR_BASIS:
        if n not in cache:
            cache[n] = scipy.fft.idct(np.eye(n), type=2, norm="ortho", axis=1).astype(np.float32)
        return cache[n][freqs]
    rows = np.zeros((freqs.size, n), dtype=np.float32)
    rows[np.arange(freqs.size), freqs] = 1.0
    return scipy.fft.idct(rows, type=2, norm="ortho", axis=1, overwrite_x=True)


class ProbeStream:
    """k probes in d dimensions, generated block by block from seeds drawn from ``rng``.

    ``shape``: the sample's shape (its axes make the separable orthogonal transform); flat
    when omitted.
    """

    def __init__(self, d: int, k: int, kind: str, rng: np.random.Generator, shape: tuple[int, ...] | None = None) -> None:
        if kind not in PROBES:
            raise ValueError(f"probes must be one of {PROBES}")
        self.d, self.k, self.kind = int(d), int(k), kind
        self.factors = _factors(self.d, shape)
        self._basis_cache: dict[int, np.ndarray] = {}
        if kind == "gaussian":
            self._seed = int(rng.integers(2**63))
            self._group: tuple[int, np.ndarray] | None = None
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
        units = self._basis_rows(self._freqs[start:stop])
        for g in range(start // self.d, (stop - 1) // self.d + 1 if m else 0):
            lo, hi = max(start, g * self.d) - start, min(stop, (g + 1) * self.d) - start
            units[lo:hi] *= self._signs[g].astype(np.float32)[None, :]
        return units, np.full(m, np.sqrt(self.d))

    def _basis_rows(self, freqs: np.ndarray) -> np.ndarray:
        """Rows ``freqs`` (flat indices) of the separable DCT-II basis as float32 ``(m, d)``: outer products."""
        m = freqs.size
        idx = np.unravel_index(freqs, self.factors)
        units = _dct_rows(self.factors[-1], idx[-1], self._basis_cache)
        for n, f in zip(self.factors[-2::-1], idx[-2::-1]):
            rows = _dct_rows(n, f, self._basis_cache)
            units = (rows[:, :, None] * units[:, None, :]).reshape(m, -1)
        return units

    def _gaussian_group(self, g: int) -> np.ndarray:
        """Group g of Gaussian rows, from its own seed; the last group is kept, since consecutive
        blocks smaller than a group (``--max-batch`` / 2 rows at 224 px) would draw it again."""
        if self._group is not None and self._group[0] == g:
            return self._group[1]
        rows = min(GAUSSIAN_BLOCK, self.k - g * GAUSSIAN_BLOCK)
        w = streams.rng(self._seed, "probes.block", g).standard_normal((rows, self.d), dtype=np.float32)
        self._group = (g, w)
        return w

    def _gaussian(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for g in range(start // GAUSSIAN_BLOCK, (stop - 1) // GAUSSIAN_BLOCK + 1 if stop > start else 0):
            w = self._gaussian_group(g)
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
                v += signs * scipy.fft.idctn(coef.reshape(self.factors), type=2, norm="ortho").reshape(-1)
            return v
        for start in range(0, self.k, block):
            units, _ = self.block(start, start + block)
            v += (a[start : start + block].astype(np.float32) @ units).astype(np.float64)
        return v


def probe_directions(
    d: int, k: int, kind: str, rng: np.random.Generator, shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All k probes at once: unit directions ``(k, d)`` float32 and scales, w_i = scale_i * unit_i.

    For small problems and references; the sketches stream a ``ProbeStream`` instead.
    """
    return ProbeStream(d, k, kind, rng, shape).block(0, k)
