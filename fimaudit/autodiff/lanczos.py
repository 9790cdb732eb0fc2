"""Top eigenpairs of F from Fisher-vector products (Lanczos), for heads too wide for K VJPs per sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh


@dataclass(frozen=True)
class LanczosResult:
    """Leading eigenvalues (descending) and unit eigenvectors (rows) of F, with the products spent."""

    eigenvalues: np.ndarray
    vectors: np.ndarray
    products: int
    tol: float
    converged: bool


def lanczos_top(source, rng: np.random.Generator, *, k: int = 1, tol: float = 1e-6, maxiter: int = 300) -> LanczosResult:
    """Lanczos (ARPACK, implicit restarts) on v -> F v = Sᵀ diag(p) S v of a source with ``fisher_matvec``.

    ``tol``: ARPACK's relative accuracy of the Ritz values. F is symmetric positive
    semidefinite of rank at most K - 1, so a few tens of products usually suffice.
    """
    d = int(source.d)
    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        return source.fisher_matvec(np.asarray(v, dtype=np.float64).reshape(1, -1))[0]

    op = LinearOperator((d, d), matvec=mv, dtype=np.float64)
    v0 = rng.standard_normal(d)
    v0 /= np.linalg.norm(v0)
    if not np.any(mv(v0)):
        # F v0 = 0 for a generic v0: F = 0 (saturated output), where ARPACK cannot start.
        return LanczosResult(np.zeros(k), np.tile(v0, (k, 1)), count[0], tol, True)
    ncv = min(d, max(2 * k + 1, 20))
    try:
        vals, vecs = eigsh(op, k=k, which="LA", tol=tol, v0=v0, ncv=ncv, maxiter=maxiter)
        converged = True
    except ArpackNoConvergence as exc:
        vals, vecs, converged = exc.eigenvalues, exc.eigenvectors, False
    order = np.argsort(vals)[::-1]
    return LanczosResult(np.asarray(vals)[order], np.asarray(vecs)[:, order].T, count[0], tol, converged)
