"""Lower bounds on lambda_max(F) along one unit direction v: certified from an exact Jacobian, or a finite-difference lower estimate.

For every unit v, v^T F v = |P^{1/2} S v|^2 <= lambda_max(F) (MATH §3.5). What separates a
bound from an estimate is how S v is known:

- exact S (a gradient graph): v^T F v is computed in float64 from the same S, minus a
  rounding bound derived below; that value is *certified*. Re-measuring v^T F v by central
  differences along v is an independent check of the graph, reported beside it, never the
  bound itself.
- finite differences only: S v is measured along v itself at this sample with the steps h
  and h/2 and one-sided against central; the value is shrunk by twice the largest
  discrepancy and called a *lower estimate* ("not certified: finite differences"): a kink
  or curvature the four probes do not see can still push it above lambda_max.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

U64 = 2.0**-53  # unit round-off of float64
EPS32 = float(np.finfo(np.float32).eps)
# Assumed accuracy of a float32 gradient graph, per product S v relative to sum_i |S_yi v_i|
# (128 float32 epsilons). Not a theorem about the graph: an assumption stated in the report
# and checked independently by the finite-difference re-measurement along v.
GRAPH_REL_ERROR = 128 * EPS32
MIN_FD_REL_ERROR = 1e-4
LOWER_KINDS = ("certified", "lower_estimate")
NOT_CERTIFIED = "not certified: finite differences"


def gamma(n: int, u: float = U64) -> float:
    """Higham's gamma_n = n u / (1 - n u): relative error bound of an n-term float sum."""
    return n * u / (1.0 - n * u)


@dataclass(frozen=True)
class LowerCheck:
    """A lower bound or lower estimate of lambda_max(F) along one direction, with its margin."""

    value: float  # what is reported: >= 0
    kind: str  # "certified" or "lower_estimate"
    quadratic_form: float  # v^T F v before any margin
    relative_margin: float  # 1 - value / quadratic_form (0 when the form is 0)
    queries: int
    fd_check: float | None = None  # exact source: v^T F v re-measured by central differences
    fd_check_relative_difference: float | None = None
    detail: str = ""

    @property
    def certified(self) -> bool:
        return self.kind == "certified"

    def to_dict(self) -> dict:
        return asdict(self)


def _pnorm(p: np.ndarray, a: np.ndarray) -> float:
    return float(np.sqrt(np.sum(p * a * a)))


def certified_from_jacobian(s_rows: np.ndarray, p: np.ndarray, v: np.ndarray,
                            graph_rel_error: float = GRAPH_REL_ERROR) -> LowerCheck:
    """Certified lower bound v^T F v / |v|^2 from an exact log-softmax Jacobian ``s_rows`` (K x d).

    Rounding bound (Higham, Accuracy and Stability, Thm 3.5). With b_y = sum_i |S_yi| |v_i|:
    the float64 product a = S v has |a_hat_y - a_y| <= gamma_d b_y; the graph's float32
    evaluation is assumed to give S v to ``graph_rel_error`` b_y, and p to that relative
    accuracy. With e_y = (gamma_d + graph_rel_error) b_y, the triangle inequality in the
    P-weighted norm gives |P^{1/2} a_true| >= |P^{1/2} a_hat| - |P^{1/2} e|; the K-term sums
    and |v|^2 contribute (1 - gamma_{K+4}) and (1 + gamma_{d+1}). The certified value is

        (|P^{1/2} a_hat| - |P^{1/2} e|)_+^2 (1 - gamma_{K+4}) (1 - graph_rel_error) / (|v|^2 (1 + gamma_{d+1})).
    """
    s = np.asarray(s_rows, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64)
    k, d = s.shape
    a = s @ v
    b = np.abs(s) @ np.abs(v)
    nv2 = float(v @ v)
    if nv2 == 0:
        return LowerCheck(0.0, "certified", 0.0, 0.0, 0, detail="zero direction")
    quad = _pnorm(p, a) ** 2 / nv2
    e = (gamma(d) + graph_rel_error) * b
    root = max(0.0, _pnorm(p, a) - _pnorm(p, e))
    value = root * root * (1 - gamma(k + 4)) * (1 - graph_rel_error) / (nv2 * (1 + gamma(d + 1)))
    return LowerCheck(
        value=float(value), kind="certified", quadratic_form=float(quad),
        relative_margin=float(1 - value / quad) if quad > 0 else 0.0, queries=0,
        detail=f"float64 Rayleigh quotient of the exact Jacobian minus a rounding bound "
        f"(float32 graph assumed accurate to {graph_rel_error:.1e} per product)",
    )


def _along(oracle, x0: np.ndarray, v: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """log p at x0 + t v for each t in ``steps``; one query each."""
    flat = np.asarray(x0, dtype=np.float64).reshape(-1)
    rows = flat[None, :] + steps[:, None] * v[None, :]
    return oracle.logp(rows.reshape((-1,) + tuple(oracle.sample_shape)))


def fd_quadratic_form(oracle, x0: np.ndarray, p: np.ndarray, v: np.ndarray, h: float) -> float:
    """v^T F v for a unit ``v`` by one central difference along v (two queries)."""
    lp = _along(oracle, x0, v, np.array([h, -h]))
    return _pnorm(p, (lp[0] - lp[1]) / (2 * h)) ** 2


def fd_lower_estimate(oracle, x0: np.ndarray, logp0: np.ndarray, v: np.ndarray, h: float) -> LowerCheck:
    """Lower estimate of lambda_max(F) along a unit ``v`` with its margin measured along v (4 queries).

    Queries x0 +- h v and x0 +- (h/2) v. S v is taken from the central difference at h; its
    error is estimated as the largest P-weighted distance to the central difference at h/2
    (curvature, round-off) and to the forward and backward one-sided differences, each
    Richardson-extrapolated from h and h/2 (2 D(h/2) - D(h), which cancels the O(h) term of a
    smooth model, so what remains is a kink within h on that side), floored at 1e-4
    relative and at the float32 round-off of the outputs. The value is (|P^{1/2} S v| - 2 err)_+^2: twice the error,
    because each comparison sees only part of the distance to the true derivative.
    """
    logp0 = np.asarray(logp0, dtype=np.float64)
    p = np.exp(logp0)
    lp = _along(oracle, x0, v, np.array([h, -h, h / 2, -h / 2]))
    central = (lp[0] - lp[1]) / (2 * h)
    half = (lp[2] - lp[3]) / h
    forward = 2 * (lp[2] - logp0) / (h / 2) - (lp[0] - logp0) / h
    backward = 2 * (logp0 - lp[3]) / (h / 2) - (logp0 - lp[1]) / h
    size = _pnorm(p, central)
    diffs = {"h/2": _pnorm(p, central - half), "forward": _pnorm(p, central - forward),
             "backward": _pnorm(p, central - backward)}
    roundoff = 4 * EPS32 * max(1.0, float(np.max(np.abs(logp0)))) / h
    err = max(max(diffs.values()), MIN_FD_REL_ERROR * size, roundoff)
    root = max(0.0, size - 2 * err)
    quad = size * size
    value = root * root
    worst = max(diffs, key=diffs.get)
    return LowerCheck(
        value=float(value), kind="lower_estimate", quadratic_form=float(quad),
        relative_margin=float(1 - value / quad) if quad > 0 else 0.0, queries=4,
        detail=f"{NOT_CERTIFIED}; largest discrepancy along v: central h vs {worst} "
        f"({err / size if size > 0 else 0.0:.2e} relative)",
    )


def with_fd_check(cert: LowerCheck, oracle, x0: np.ndarray, p: np.ndarray, v: np.ndarray, h: float) -> LowerCheck:
    """Beside a certified value: v^T F v re-measured by central differences along v (2 queries).

    An independent check of the gradient graph, never the bound itself.
    """
    if cert.quadratic_form <= 0:
        return cert
    unit = np.asarray(v, dtype=np.float64).reshape(-1)
    unit = unit / np.linalg.norm(unit)
    fd = fd_quadratic_form(oracle, x0, p, unit, h)
    rel = abs(fd - cert.quadratic_form) / cert.quadratic_form
    return LowerCheck(**{**cert.to_dict(), "queries": 2, "fd_check": fd, "fd_check_relative_difference": rel})
