"""Probe directions of the sketches: Gaussian, or a subsampled randomised orthogonal transform."""

from __future__ import annotations

import numpy as np

PROBES = ("orthogonal", "gaussian")


def probe_directions(d: int, k: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit probe directions ``(k, d)`` and the scale of each probe, so that w_i = scale_i * unit_i.

    gaussian: w ~ N(0, I_d). orthogonal: columns of the orthonormal DCT-II basis behind random
    coordinate signs, drawn without replacement (a subsampled randomised trigonometric
    transform), scaled by sqrt(d): E[W W^T]/k = I, exactly W W^T/k = I when k = d, and far
    cheaper than a QR factorisation at large d. Blocks of d repeat when k > d.
    """
    if kind == "gaussian":
        w = rng.standard_normal((k, d), dtype=np.float32)
        norms = np.linalg.norm(w.astype(np.float64), axis=1) if d < 64 else np.linalg.norm(w, axis=1).astype(np.float64)
        w /= norms[:, None].astype(np.float32)
        return w, norms
    if kind != "orthogonal":
        raise ValueError(f"probes must be one of {PROBES}")
    units = np.empty((k, d), dtype=np.float32)
    itype = np.int32 if 2 * d * d < 2**31 else np.int64
    odd = 2 * np.arange(d, dtype=itype) + 1
    # cos(pi (2n+1) f / (2d)) depends only on (2n+1) f mod 4d: one table of 4d cosines.
    table = (np.cos(np.pi * np.arange(4 * d) / (2 * d)) * np.sqrt(2.0 / d)).astype(np.float32)
    done = 0
    while done < k:
        m = min(d, k - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=d)
        freqs = rng.choice(d, size=m, replace=False).astype(itype)
        idx = np.multiply.outer(freqs, odd)
        np.remainder(idx, 4 * d, out=idx)
        block = units[done : done + m]
        np.take(table, idx, out=block, mode="clip")  # indices are in range; 'clip' skips the check
        block[freqs == 0] = np.float32(np.sqrt(1.0 / d))
        block *= signs.astype(np.float32)[None, :]
        done += m
    return units, np.full(k, np.sqrt(d))
