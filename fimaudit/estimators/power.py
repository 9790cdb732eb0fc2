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

from .core import Estimate, certified_lower_bound, quadratic_form, shrink_to_bound
from .probes import ProbeStream
from .source import JacobianSource

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
    source: JacobianSource,
    m: int,
    rng: np.random.Generator,
    probes: str = "gaussian",
    iters: int = 500,
    check_lower_bound: bool = True,
    block: int = 128,
) -> Estimate:
    """Power iteration with m fixed, reused probes: m JVPs (+1 for the lower bound), streamed ``block`` at a time."""
    before = source.queries
    d, p = source.d, source.p
    stream = ProbeStream(d, m, probes, rng, source.sample_shape)
    y = np.empty((p.shape[0], m))
    scales = np.empty(m)
    for start in range(0, m, max(1, block)):
        units, sc = stream.block(start, start + block)
        scales[start : start + sc.size] = sc
        y[:, start : start + sc.size] = (source.jvp(units) * sc[:, None]).T  # Y = S W, block by block
        del units
    # On span(W), v = W c and F_hat v = (1/m) W Y^T P S v = W [(1/m) Y^T P Y c].
    apply = lambda c: (y.T @ (p * (y @ c))) / m  # noqa: E731
    lam, c, _ = power_iteration_matrix(apply, rng.standard_normal(m), iters)
    v = stream.combine(c * scales)  # the iterate W c in input space, rebuilt from the probe seeds
    nv = float(np.linalg.norm(v))
    direction = v / nv if nv > 0 else None
    per_probe = np.sum(p[:, None] * y * y, axis=0)
    lower = None
    if check_lower_bound and direction is not None:
        lower = certified_lower_bound(source, direction)
    return Estimate(
        method="power-fixed",
        lambda_max=float(lam),
        lambda_max_ci=None,
        trace=float(np.mean(per_probe)),
        trace_se=float(np.std(per_probe, ddof=1) / np.sqrt(m)) if m > 1 else float("inf"),
        queries=source.queries - before,
        probes=m,
        top_eigenvalues=(float(lam),),
        lower_bound=lower,
        direction=direction,
    )


def fresh_probes(budget: int) -> int:
    """Zeroth-order probes per gradient of ``power_fresh`` for a query budget (about 4 steps' worth)."""
    return max(4, min(256, (budget - 2) // 8))


def power_fresh(source: JacobianSource, budget: int, rng: np.random.Generator) -> Estimate:
    """Power iteration v <- S^T P S v / |.| with the source's VJP, within ``budget`` queries.

    Each step: S v (one JVP), then S^T (P S v) from ``source.vjp`` (for finite differences, a
    zeroth-order estimate from fresh probes). The estimate is the Rayleigh quotient v^T F v of
    the best iterate (each measured by its own JVP), so it is also a lower bound.
    """
    before = source.queries
    d, p = source.d, source.p
    jvp_cost = 2  # finite differences; an exact source spends fewer, so the check stays safe
    vjp_cost = source.vjp_cost(1)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    best_q, best_v = -1.0, v
    while source.queries - before + jvp_cost + vjp_cost + jvp_cost <= budget:
        sv = source.jvp(v[None, :])[0]
        q = float(np.sum(p * sv * sv))
        if q > best_q:
            best_q, best_v = q, v
        grad = source.vjp((p * sv)[None, :])[0]  # ~ S^T P S v
        ng = np.linalg.norm(grad)
        if ng == 0:
            break
        v = grad / ng
    if source.queries - before + jvp_cost <= budget:
        q = quadratic_form(source, v)
        if q > best_q:
            best_q, best_v = q, v
    lam = float(max(best_q, 0.0))
    return Estimate(
        method="power-fresh",
        lambda_max=lam,
        lambda_max_ci=None,
        trace=float("nan"),
        trace_se=float("nan"),
        queries=source.queries - before,
        probes=getattr(source, "vjp_probes", 0),
        top_eigenvalues=(lam,),
        lower_bound=shrink_to_bound(lam, source.rel_error),
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
