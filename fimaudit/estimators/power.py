"""Power iteration and Lanczos on the input-space Fisher operator (MATH §3.3).

F v = S^T P (S v): S v is a Jacobian-vector product, S^T u the gradient of u^T log p,
estimated by zeroth-order (randomised-smoothing) differences over probes w_j:
S^T u ~ (1/m) sum_j w_j (u^T S w_j) (MATH §2).

Two modes:

- ``fixed``: the m probes and their JVPs Y = S W are measured once (2m queries) and reused.
  Every iterate then lies in span(W), where S (W c) = Y c by linearity of the Jacobian, so
  the iteration needs no further queries and converges to lambda_max of the output-space
  sketch on the same probes (they agree to round-off).
- ``fresh``: new probes for every gradient (2m queries per step) and S v by central
  differences (2 queries). Its gradient noise has a component outside the row space of S
  of relative size ~ sqrt(d/m), so the iterate's Rayleigh quotient is ~ lambda/(1 + d/m):
  much less accurate per query at large d (measured in bench/estimators.py).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from ..model.oracle import LogProbOracle
from .core import Estimate, certified_lower_bound, probe_directions, quadratic_form
from .fd import jvp

POWER_MODES = ("fixed", "fresh")


def power_iteration_matrix(
    apply: callable, c0: np.ndarray, iters: int, tol: float = 1e-10
) -> tuple[float, np.ndarray, int]:
    """Plain power iteration with a matvec ``apply``; returns (|A c|/|c| at the end, c, steps)."""
    c = c0 / np.linalg.norm(c0)
    lam = 0.0
    steps = 0
    for steps in range(1, iters + 1):
        ac = apply(c)
        nrm = float(np.linalg.norm(ac))
        if nrm == 0.0:
            return 0.0, c, steps
        c_new = ac / nrm
        converged = abs(nrm - lam) <= tol * max(nrm, 1e-300)
        lam, c = nrm, c_new
        if converged:
            break
    return lam, c, steps


def power_fixed(
    oracle: LogProbOracle,
    x0: np.ndarray,
    p: np.ndarray,
    h: float,
    m: int,
    rng: np.random.Generator,
    probes: str = "gaussian",
    iters: int = 500,
    check_lower_bound: bool = True,
    fd_rel_error: float | None = None,
) -> Estimate:
    """Power iteration with m fixed, reused probes: 2m queries (+2 for the lower bound)."""
    before = oracle.queries
    d = int(np.prod(oracle.sample_shape))
    units, scales = probe_directions(d, m, probes, rng)
    y = (jvp(oracle, x0, units, h) * scales[:, None]).T  # (K, m): Y = S W
    # On span(W), v = W c and F_hat v = (1/m) W Y^T P S v = W [(1/m) Y^T P Y c].
    apply = lambda c: (y.T @ (p * (y @ c))) / m  # noqa: E731
    lam, c, _ = power_iteration_matrix(apply, rng.standard_normal(m), iters)
    v = (units * scales[:, None]).T @ c  # the iterate in input space
    nv = float(np.linalg.norm(v))
    direction = v / nv if nv > 0 else None
    per_probe = np.sum(p[:, None] * y * y, axis=0)
    lower = None
    if check_lower_bound and direction is not None:
        lower = certified_lower_bound(oracle, x0, p, direction, h, fd_rel_error)
    return Estimate(
        method="power-fixed",
        lambda_max=float(lam),
        lambda_max_ci=None,
        trace=float(np.mean(per_probe)),
        trace_se=float(np.std(per_probe, ddof=1) / np.sqrt(m)) if m > 1 else float("inf"),
        queries=oracle.queries - before,
        probes=m,
        top_eigenvalues=(float(lam),),
        lower_bound=lower,
        direction=direction,
    )


def power_fresh(
    oracle: LogProbOracle,
    x0: np.ndarray,
    p: np.ndarray,
    h: float,
    budget: int,
    rng: np.random.Generator,
    m: int | None = None,
    fd_rel_error: float | None = None,
) -> Estimate:
    """Power iteration with fresh zeroth-order probes every step, within ``budget`` queries.

    Each step: S v by central differences (2 queries), then S^T (P S v) from m fresh Gaussian
    probes (2m queries). The estimate is the Rayleigh quotient v^T F v of the best iterate
    (each measured by its own two queries), so it is also a lower bound.
    """
    before = oracle.queries
    d = int(np.prod(oracle.sample_shape))
    if m is None:
        m = max(4, min(256, (budget - 2) // 8))
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    best_q, best_v = -1.0, v
    quotients = []
    while oracle.queries - before + 2 + 2 * m + 2 <= budget:
        sv = jvp(oracle, x0, v[None, :], h)[0]
        q = float(np.sum(p * sv * sv))
        quotients.append(q)
        if q > best_q:
            best_q, best_v = q, v
        u = p * sv
        units, scales = probe_directions(d, m, "gaussian", rng)
        ys = jvp(oracle, x0, units, h) * scales[:, None]  # (m, K): rows S w_j
        grad = (units * scales[:, None]).T @ (ys @ u) / m  # ~ S^T u
        ng = np.linalg.norm(grad)
        if ng == 0:
            break
        v = grad / ng
    if oracle.queries - before + 2 <= budget:
        q = quadratic_form(oracle, x0, p, v, h)
        quotients.append(q)
        if q > best_q:
            best_q, best_v = q, v
    margin = 2.0 * max(fd_rel_error or 0.0, 1e-4)
    return Estimate(
        method="power-fresh",
        lambda_max=float(max(best_q, 0.0)),
        lambda_max_ci=None,
        trace=float("nan"),
        trace_se=float("nan"),
        queries=oracle.queries - before,
        probes=m,
        top_eigenvalues=(float(max(best_q, 0.0)),),
        lower_bound=float(max(best_q, 0.0) * (1 - margin)),
        direction=best_v,
    )


def lanczos_top(matvec: callable, dim: int, n_eigs: int, rng: np.random.Generator) -> np.ndarray:
    """Top ``n_eigs`` eigenvalues (descending) of a symmetric PSD operator via scipy's eigsh.

    Falls back to a dense eigh when the operator is tiny (eigsh needs n_eigs < dim).
    """
    n_eigs = max(1, min(n_eigs, dim))
    if dim <= max(2 * n_eigs + 1, 16):
        dense = np.column_stack([matvec(e) for e in np.eye(dim)])
        w = np.linalg.eigvalsh(0.5 * (dense + dense.T))
        return np.clip(w[::-1][:n_eigs], 0, None)
    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = rng.standard_normal(dim)
    try:
        w = eigsh(op, k=n_eigs, which="LA", v0=v0, return_eigenvectors=False, tol=1e-10)
    except ArpackNoConvergence as exc:
        w = exc.eigenvalues
    return np.clip(np.sort(w)[::-1], 0, None)


def fisher_operator(s_cols: np.ndarray, p: np.ndarray):
    """Matvec v -> S^T P S v for a measured K x d log-softmax Jacobian ``s_cols``."""
    return lambda v: s_cols.T @ (p * (s_cols @ v))
