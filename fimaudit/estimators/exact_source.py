"""Exact Fisher spectrum from an exact Jacobian source (a gradient graph): K VJPs, or Lanczos for many classes.

The source follows the Jacobian-source protocol at one point x0: ``vjp(U)`` returns rows
S^T u for rows u of U (K,), ``jvp(V)`` rows S v, with S = d log p / dx (K x d).

- ``rows`` path (K below ``LANCZOS_FROM_CLASSES``): U = I_K gives S exactly in K VJPs (one
  batched pass); G = P^{1/2} S S^T P^{1/2} in float64, its whole spectrum by eigh, the trace,
  the top direction v = S^T P^{1/2} u and the certified lower bound from the same S.
- ``lanczos`` path (K >= 64, e.g. 1000-class heads, where K VJPs per sample is the wrong
  cost): Lanczos (ARPACK) on the K x K operator G u = P^{1/2} S (S^T (P^{1/2} u)), one VJP
  and one JVP per product, to the relative tolerance ``LANCZOS_TOL``; the trace is a
  Hutchinson estimate tr(G) = E |S^T P^{1/2} z|^2 over Rademacher z, with its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from .core import Estimate, small_matrix, top_eigen
from .lower import GRAPH_REL_ERROR, LowerCheck, certified_from_jacobian, gamma, with_fd_check

LANCZOS_FROM_CLASSES = 64
LANCZOS_TOL = 1e-8
LANCZOS_EIGS = 5
TRACE_PROBES = 32
PATHS = ("rows", "lanczos")


@dataclass(frozen=True)
class ExactResult:
    """One sample's exact estimate, its certified lower bound and how it was computed."""

    estimate: Estimate
    lower: LowerCheck
    path: str  # "rows" or "lanczos"
    products: int  # JVP + VJP rows spent
    tolerance: float | None  # Lanczos relative tolerance; None on the rows path


def exact_rows(source, p: np.ndarray) -> tuple[Estimate, np.ndarray]:
    """S from K VJPs, then G, its spectrum, trace and top direction; returns (estimate, S)."""
    k = p.shape[0]
    before = source.queries
    # (K, d): row y is g_y = grad log p_y; a gradient-graph source needs only K - 1 VJPs (pᵀS = 0).
    full = getattr(source, "full_jacobian", None)
    s = np.asarray(full() if full is not None else source.vjp(np.eye(k)), dtype=np.float64)
    evals, evecs = top_eigen(small_matrix(p, s))
    v = s.T @ (np.sqrt(p) * evecs[:, 0])
    nv = float(np.linalg.norm(v))
    est = Estimate(
        method="exact-graph", lambda_max=float(evals[0]), lambda_max_ci=None, trace=float(np.sum(evals)),
        trace_se=0.0, queries=source.queries - before, probes=source.queries - before if full is not None else k,
        top_eigenvalues=tuple(float(e) for e in evals[: min(5, k)]), lower_bound=None,
        direction=v / nv if nv > 0 else None,
    )
    return est, s


def exact_lanczos(source, p: np.ndarray, rng: np.random.Generator, tol: float = LANCZOS_TOL,
                  n_eigs: int = LANCZOS_EIGS, trace_probes: int = TRACE_PROBES) -> tuple[Estimate, np.ndarray]:
    """Top eigenpairs of G by Lanczos on VJP/JVP products; returns (estimate, S v for the top direction)."""
    k = p.shape[0]
    before = source.queries
    sp = np.sqrt(p)

    def matvec(u: np.ndarray) -> np.ndarray:
        w = np.asarray(source.vjp((sp * np.ravel(u))[None, :]), dtype=np.float64)  # (1, d) = (S^T P^{1/2} u)^T
        return sp * np.asarray(source.jvp(w), dtype=np.float64)[0]

    n_eigs = max(1, min(n_eigs, k - 2))
    op = LinearOperator((k, k), matvec=matvec, dtype=np.float64)
    try:
        w, u = eigsh(op, k=n_eigs, which="LA", v0=rng.standard_normal(k), tol=tol)
    except ArpackNoConvergence as exc:  # keep what converged; the tolerance is then not met
        w, u = exc.eigenvalues, exc.eigenvectors
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0, None), u[:, order]
    v = np.asarray(source.vjp((sp * u[:, 0])[None, :]), dtype=np.float64)[0]
    nv = float(np.linalg.norm(v))
    if nv > 0:
        v = v / nv
    sv = np.asarray(source.jvp(v[None, :]), dtype=np.float64)[0]  # S v for the unit direction
    z = rng.choice(np.array([-1.0, 1.0]), size=(trace_probes, k))
    g = np.asarray(source.vjp(z * sp[None, :]), dtype=np.float64)
    per = np.sum(g * g, axis=1)
    est = Estimate(
        method="lanczos-graph", lambda_max=float(w[0]), lambda_max_ci=None, trace=float(np.mean(per)),
        trace_se=float(np.std(per, ddof=1) / np.sqrt(trace_probes)), queries=source.queries - before,
        probes=trace_probes, top_eigenvalues=tuple(float(e) for e in w), lower_bound=None,
        direction=v if nv > 0 else None,
    )
    return est, sv


def certified_from_products(sv: np.ndarray, p: np.ndarray, v: np.ndarray,
                            graph_rel_error: float = GRAPH_REL_ERROR) -> LowerCheck:
    """Certified v^T F v / |v|^2 from one JVP S v of the graph (Lanczos path: S itself is never formed).

    Without S the per-coordinate sums |S||v| are unknown, so the graph's float32 error is
    taken relative to |S v| itself: |e_y| <= graph_rel_error * max_y |(S v)_y| * sqrt(K)
    (the float32 error of a reduction of length d is bounded by the same assumption as on
    the rows path, applied to the largest entry); the float64 sums add gamma_{K+4}.
    """
    sv = np.asarray(sv, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    nv2 = float(v @ v)
    size = float(np.sqrt(np.sum(p * sv * sv)))
    quad = size * size / nv2 if nv2 > 0 else 0.0
    err = graph_rel_error * float(np.max(np.abs(sv))) * np.sqrt(sv.size)
    root = max(0.0, size - err)
    value = root * root * (1 - gamma(sv.size + 4)) * (1 - graph_rel_error) / (nv2 * (1 + gamma(v.size + 1))) if nv2 else 0.0
    return LowerCheck(value=float(value), kind="certified", quadratic_form=float(quad),
                      relative_margin=float(1 - value / quad) if quad > 0 else 0.0, queries=0,
                      detail=f"float64 Rayleigh quotient of the graph's JVP minus a rounding bound "
                      f"(float32 graph assumed accurate to {graph_rel_error:.1e} relative)")


def exact_from_source(source, p: np.ndarray, rng: np.random.Generator, oracle=None, x0: np.ndarray | None = None,
                      h: float | None = None, lanczos_from: int = LANCZOS_FROM_CLASSES,
                      tol: float = LANCZOS_TOL) -> ExactResult:
    """The exact estimate at one sample and its certified lower bound, with the FD check beside it when
    ``oracle``/``h`` are given (two queries along v)."""
    p = np.asarray(p, dtype=np.float64)
    before = source.queries
    if p.shape[0] < lanczos_from:
        est, s = exact_rows(source, p)
        v = est.direction
        cert = certified_from_jacobian(s, p, v) if v is not None else LowerCheck(0.0, "certified", 0.0, 0.0, 0)
        path, used_tol = "rows", None
    else:
        est, sv = exact_lanczos(source, p, rng, tol)
        v = est.direction
        cert = certified_from_products(sv, p, v) if v is not None else LowerCheck(0.0, "certified", 0.0, 0.0, 0)
        path, used_tol = "lanczos", tol
    if v is not None and oracle is not None and h is not None:
        cert = with_fd_check(cert, oracle, x0, p, v, h)
    return ExactResult(estimate=est, lower=cert, path=path, products=source.queries - before, tolerance=used_tol)
