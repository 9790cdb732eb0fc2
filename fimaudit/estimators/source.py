"""Jacobian sources: products with the log-softmax Jacobian S at one point, behind one protocol.

Every estimator is a pure function of a ``JacobianSource`` (plus its own sizes and a seeded
Generator). A source is bound to one point ``x0`` in estimation space and exposes:

- ``x0`` ``(d,)`` float64, flattened; ``sample_shape``; ``d``; ``n_classes`` (K)
- ``logp0`` ``(K,)`` log-probabilities at ``x0``; ``p`` = exp(logp0)
- ``logp(X)``: ``(m, d)`` rows -> ``(m, K)`` log-probabilities (forward evaluations)
- ``jvp(V)``: ``(m, d)`` rows v -> ``(m, K)`` rows S v
- ``vjp(U)``: ``(m, K)`` rows u -> ``(m, d)`` rows S^T u
- ``vjp_cost(m)``: queries one ``vjp`` call on m rows will spend (budget planning)
- ``jacobian(coords)``: the columns S e_i for i in ``coords`` as ``(len, K)``
- ``rel_error``: the relative error of ``jvp`` (None when unknown); the lower bound shrinks
  by it, 0 for exact sources
- ``queries``: model rows evaluated so far through this source; ``passes``: batched model
  evaluations (forward or backward) so far.

``FiniteDifferences`` is the black-box source (MATH §2): central differences for ``jvp``, the
zeroth-order randomized-smoothing estimate S^T u ~ (1/m) sum_j w_j (u^T S w_j) over m Gaussian
probes for ``vjp``. A gradient-graph source implements the same attributes exactly.
Construction is cheap (no model evaluation when ``logp0`` is given).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .. import streams
from ..model.oracle import LogProbOracle
from .fd import jvp as fd_jvp
from .fd import jvp_coordinates
from .probes import ProbeStream


@runtime_checkable
class JacobianSource(Protocol):
    """Products with the log-softmax Jacobian S (K x d) at one point ``x0`` (see module docstring)."""

    x0: np.ndarray
    logp0: np.ndarray
    p: np.ndarray
    sample_shape: tuple[int, ...]
    d: int
    n_classes: int
    rel_error: float | None

    @property
    def queries(self) -> int: ...

    @property
    def passes(self) -> int: ...

    def logp(self, x: np.ndarray) -> np.ndarray: ...

    def jvp(self, v: np.ndarray) -> np.ndarray: ...

    def vjp(self, u: np.ndarray) -> np.ndarray: ...

    def vjp_cost(self, m: int) -> int: ...

    def jacobian(self, coords: np.ndarray) -> np.ndarray: ...


class FiniteDifferences:
    """Black-box Jacobian source from a query oracle: central differences with step ``h``.

    ``logp0``: the centre's log-probabilities when the caller already has them (else one
    query is spent here). ``rel_error``: the measured h-vs-h/2 discrepancy of the step.
    ``vjp_probes``/``rng``: probe count and seeded Generator of the zeroth-order VJP.
    """

    def __init__(
        self,
        oracle: LogProbOracle,
        x0: np.ndarray,
        h: float,
        *,
        logp0: np.ndarray | None = None,
        rel_error: float | None = None,
        vjp_probes: int = 64,
        rng: np.random.Generator | None = None,
        chunk: int = 256,
    ) -> None:
        if not (h > 0):
            raise ValueError("the finite-difference step h must be positive")
        self.oracle = oracle
        self.sample_shape = tuple(oracle.sample_shape)
        self.x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        self.d = int(self.x0.size)
        self.h = float(h)
        self.rel_error = rel_error
        self.vjp_probes = int(vjp_probes)
        self.rng = rng if rng is not None else streams.fixed("fallback.fd_vjp")
        self.chunk = int(chunk)
        self._queries = 0
        self._passes = 0
        if logp0 is None:
            logp0 = self.logp(self.x0[None, :])[0]
        self.logp0 = np.asarray(logp0, dtype=np.float64)
        self.p = np.exp(self.logp0)
        self.n_classes = int(self.logp0.size)

    @property
    def queries(self) -> int:
        return self._queries

    @property
    def passes(self) -> int:
        return self._passes

    def _count(self, fn, *args):
        model = self.oracle.model
        before, runs = model.queries, model.passes
        try:
            return fn(*args)
        finally:
            self._queries += model.queries - before
            self._passes += model.passes - runs

    def logp(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x).reshape((-1,) + self.sample_shape)
        return self._count(self.oracle.logp, rows)

    def jvp(self, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(v)
        return self._count(fd_jvp, self.oracle, self.x0, v, self.h, self.chunk)

    def jacobian(self, coords: np.ndarray) -> np.ndarray:
        return self._count(jvp_coordinates, self.oracle, self.x0, np.asarray(coords), self.h)

    def vjp_cost(self, m: int) -> int:
        # The same probes serve every row of U: 2 queries per probe, whatever m is.
        return 2 * self.vjp_probes if m > 0 else 0

    def vjp(self, u: np.ndarray) -> np.ndarray:
        """Zeroth-order S^T u for each row of ``u`` from ``vjp_probes`` fresh Gaussian probes (MATH §2).

        Probes are streamed ``chunk`` at a time: memory O(chunk * d), whatever ``vjp_probes`` is.
        """
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        m = self.vjp_probes
        stream = ProbeStream(self.d, m, "gaussian", self.rng)
        coeff = np.empty((m, u.shape[0]))
        for start in range(0, m, self.chunk):
            units, scales = stream.block(start, start + self.chunk)
            ys = self.jvp(units) * scales[:, None]  # rows S w_j
            coeff[start : start + scales.size] = (ys @ u.T) * scales[:, None] / m  # (u^T S w_j) |w_j| / m
        return np.stack([stream.combine(c, self.chunk) for c in coeff.T])
