"""Variance reduction for large inputs: exact products on a chosen subspace plus a sketch of its complement.

With Q (r x d, orthonormal rows) and probes w' = (I - Q^T Q) w, E[w' w'^T] = I - Q^T Q, so

    G_defl = P^{1/2} (Z Z^T + Y' Y'^T / k) P^{1/2},   Z = S Q^T (2r queries), Y' = S W' (2k queries)

is unbiased for G (Hutch++-style deflation). When most of S's energy lies in span(Q) the
sketch only has to capture the remainder, and its variance falls accordingly. Subspaces:
low-frequency 2-D DCT directions of image inputs, and directions learnt from earlier samples
of the same scan.
"""

from __future__ import annotations

import numpy as np

from .core import Estimate, bootstrap_ci, certified_lower_bound, small_matrix, top_eigen
from .probes import ProbeStream
from .source import JacobianSource

SUBSPACES = ("dct", "learnt")


def _dct_1d(n: int, freqs: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II basis vectors (rows) of length n for the given frequencies."""
    idx = np.arange(n)
    basis = np.cos(np.pi * (2 * idx[None, :] + 1) * freqs[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    basis[freqs == 0] = np.sqrt(1.0 / n)
    return basis


def dct_lowfreq_basis(sample_shape: tuple[int, ...], r: int) -> np.ndarray:
    """The r lowest-frequency separable DCT directions (rows, orthonormal) of a (C, H, W) or (d,) input.

    Images: 2-D DCT per channel ordered by i + j (then i, then channel). Other shapes: 1-D DCT
    of the flattened input.
    """
    d = int(np.prod(sample_shape))
    r = max(0, min(r, d))
    if len(sample_shape) == 3 and sample_shape[1] > 1 and sample_shape[2] > 1:
        c, hgt, wid = sample_shape
        order = sorted(
            ((i + j, i, j, ch) for i in range(hgt) for j in range(wid) for ch in range(c)),
        )[:r]
        rows = np.zeros((r, d))
        cache_h: dict[int, np.ndarray] = {}
        cache_w: dict[int, np.ndarray] = {}
        for n, (_, i, j, ch) in enumerate(order):
            bh = cache_h.setdefault(i, _dct_1d(hgt, np.array([i]))[0])
            bw = cache_w.setdefault(j, _dct_1d(wid, np.array([j]))[0])
            block = np.zeros((c, hgt, wid))
            block[ch] = np.outer(bh, bw)
            rows[n] = block.reshape(-1)
        return rows
    return _dct_1d(d, np.arange(r))


class LearntSubspace:
    """Directions learnt from earlier samples of the same scan (their top input-space directions).

    ``basis(r)`` returns the top-r right singular vectors of the stored directions: the
    subspace that best captured the sensitive directions seen so far.
    """

    def __init__(self, d: int, memory: int = 256) -> None:
        self.d = d
        self.memory = memory
        self._rows: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, directions: np.ndarray) -> None:
        for v in np.atleast_2d(directions):
            n = np.linalg.norm(v)
            if n > 0 and np.all(np.isfinite(v)):
                self._rows.append(v / n)
        self._rows = self._rows[-self.memory :]

    def basis(self, r: int) -> np.ndarray:
        if not self._rows or r <= 0:
            return np.zeros((0, self.d))
        stack = np.asarray(self._rows)
        _, sv, vt = np.linalg.svd(stack, full_matrices=False)
        keep = min(r, int(np.sum(sv > 1e-8 * sv[0])))
        return vt[:keep]


PROBE_BLOCK = 128  # probes per JVP call unless the caller says otherwise (scan: --max-batch / 2)


def deflated_sketch(
    source: JacobianSource,
    q: np.ndarray,
    k: int,
    rng: np.random.Generator,
    probes: str = "gaussian",
    check_lower_bound: bool = True,
    name: str = "deflated",
    block: int = PROBE_BLOCK,
) -> Estimate:
    """Exact on span(q) (rows orthonormal, r JVPs) plus a k-probe sketch of the complement (k JVPs).

    Probes are streamed ``block`` at a time and reduced to the K x k matrix Y = S W' at once;
    the Ritz direction is rebuilt from the probe seeds, so memory is O(block * d + K * k).
    """
    before = source.queries
    d, p = source.d, source.p
    r = q.shape[0]
    z = source.jvp(q).T if r else np.zeros((p.shape[0], 0))  # (K, r) = S Q^T
    stream = ProbeStream(d, k, probes, rng, source.sample_shape)
    y = np.empty((p.shape[0], k))
    norms = np.empty(k)
    scales = np.empty(k)
    q32 = q.astype(np.float32) if r else None
    for start in range(0, k, max(1, block)):
        units, sc = stream.block(start, start + block)
        stop = start + units.shape[0]
        scales[start:stop] = sc
        if r:
            w = units * sc[:, None].astype(np.float32)
            w -= (w @ q32.T) @ q32  # the complement of span(q)
            nb = np.linalg.norm(w, axis=1).astype(np.float64)
            nb[nb == 0] = 1.0
            units = w / nb[:, None].astype(np.float32)
        else:
            nb = sc
        norms[start:stop] = nb
        y[:, start:stop] = (source.jvp(units) * nb[:, None]).T  # S W' for this block
        del units
    fixed = small_matrix(p, z) if r else np.zeros((p.shape[0], p.shape[0]))
    g = fixed + small_matrix(p, y) / k
    evals, evecs = top_eigen(g)
    per_probe = np.sum(p[:, None] * y * y, axis=0)
    trace = float(np.trace(fixed) + np.mean(per_probe))
    trace_se = float(np.std(per_probe, ddof=1) / np.sqrt(k)) if k > 1 else float("inf")
    ci = bootstrap_ci(p, y, rng, fixed=fixed) if k > 1 else None
    direction = _best_measured_direction(p, q, z, stream, y, scales, norms)
    lower = None
    if check_lower_bound and direction is not None:
        lower = certified_lower_bound(source, direction)
    return Estimate(
        method=f"{name}-{probes}",
        lambda_max=float(evals[0]),
        lambda_max_ci=ci,
        trace=trace,
        trace_se=trace_se,
        queries=source.queries - before,
        probes=k + r,
        top_eigenvalues=tuple(float(e) for e in evals[: min(5, len(evals))]),
        lower_bound=lower,
        direction=direction,
    )


def _ritz_coefficients(p: np.ndarray, s_rows: np.ndarray) -> tuple[float, np.ndarray]:
    """Top eigenvalue of G for measured S rows^T ``(K, m)`` and the coefficients c of v = sum_i c_i row_i."""
    evals, evecs = top_eigen(small_matrix(p, s_rows))
    return float(evals[0]), s_rows.T @ (np.sqrt(p) * evecs[:, 0])


def _unit(v: np.ndarray) -> np.ndarray | None:
    nv = float(np.linalg.norm(v))
    return v / nv if nv > 0 and np.isfinite(nv) else None


def _best_measured_direction(p, q, z, stream: ProbeStream, y, scales, norms) -> np.ndarray | None:
    """Ritz directions of the exact subspace and of the complement probes; keep the better.

    A direction mixing both is no better in practice: the complement part of a sketch
    direction is mostly noise when k << d (it captures about k/d of S's energy).
    The complement probes are unit'_i = P(scale_i unit_i) / norm_i with P the projection off
    span(q), so sum_i c_i unit'_i = P(sum_i (c_i scale_i / norm_i) unit_i), rebuilt from seeds.
    """
    q_sub, v_sub = 0.0, None
    if q.shape[0]:
        q_sub, c = _ritz_coefficients(p, z)
        v_sub = _unit(q.T @ c)
    q_cmp, v_cmp = 0.0, None
    if y.shape[1]:
        q_cmp, c = _ritz_coefficients(p, y / norms[None, :])
        v = stream.combine(c * scales / norms)
        if q.shape[0]:
            v = v - q.T @ (q @ v)
        v_cmp = _unit(v)
    return v_sub if q_sub >= q_cmp and v_sub is not None else v_cmp


def sketch(
    source: JacobianSource,
    k: int,
    rng: np.random.Generator,
    probes: str = "orthogonal",
    check_lower_bound: bool = True,
    block: int = PROBE_BLOCK,
) -> Estimate:
    """Output-space sketch G_hat = P^{1/2} (Y Y^T / k) P^{1/2} with Y = S W from k JVPs (2k queries).

    The Hutchinson trace comes from the same probes: tr(F) ~ (1/k) sum_i |P^{1/2} y_i|^2,
    with its standard error. With ``check_lower_bound`` one more JVP evaluates v^T F v
    along the sketch's top direction mapped back to input space (a certified lower bound).
    """
    # The plain sketch is deflation with an empty subspace.
    return deflated_sketch(
        source, np.zeros((0, source.d)), k, rng, probes=probes, check_lower_bound=check_lower_bound, name="sketch",
        block=block,
    )
