"""Trust, but check: the derivative graphs against central differences before a scan uses them.

Along a few seeded random directions v at the first point(s), the forward graph's S v and
the reverse graph's uᵀ(S v) (through Sᵀu) are compared with central differences of the
model itself at steps h and h/2 (MATH §2). A disagreement beyond the finite-difference
error refuses the graph; the graph is then bisected to name the suspect operator: the first
node whose output tangent disagrees with central differences of that tensor while its inputs
agree (forward rules), or the node whose local adjoint identity Σ⟨c_i, ẋ_i⟩ = ⟨ḡ, ẏ⟩ fails
(reverse rules).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..estimators.fd import paired_differences
from .graph import COTANGENT, TANGENT, with_outputs
from .reference import Float64Logp, onnxruntime_can_run
from .source import GraphEngine

_EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class GraphCheck:
    """The self-check's figures; ``passed`` False comes with the reason and the suspect operator."""

    passed: bool
    directions: int
    step: float  # the central-difference step of the row closest to failing
    jvp_error: float  # max over directions of |graph S v - FD(h/2)| / |FD(h/2)|
    vjp_error: float  # the same for uᵀ S v through the reverse graph
    fd_discrepancy: float  # max |FD(h) - FD(h/2)| / |FD(h/2)|: the finite-difference error scale
    tolerance: float  # relative tolerance the errors were held to
    rows: int = 0  # (sample, direction) pairs compared
    inconclusive: int = 0  # rows where no step's central differences were accurate enough to judge
    second_opinion: str | None = None  # what the float64 re-judgement of refused or inconclusive rows found
    verified: int = 0  # rows where the graph conclusively agreed (float32 or float64 central differences)
    suspect: str | None = None  # "Conv (node 'conv_3')"
    reason: str | None = None
    status: str = ""  # passed | failed | inconclusive (no row verified: never evidence that the graph is right)
    zero_rows: int = 0  # rows where the graph's derivatives and every central difference are exactly 0

    def to_dict(self) -> dict:
        return asdict(self)


def _tol(fd_h: np.ndarray, fd_h2: np.ndarray, scale: float, h: float, floor: float) -> np.ndarray:
    """Per row: allowed |graph - FD(h/2)| from the step discrepancy, float32 rounding and a relative floor."""
    axes = tuple(range(1, fd_h.ndim))
    disc = np.sqrt(np.sum((fd_h - fd_h2) ** 2, axis=axes))
    size = np.sqrt(np.sum(fd_h2**2, axis=axes))
    rounding = 8.0 * _EPS32 * scale * np.sqrt(fd_h[0].size) / h
    return 2.0 * disc + rounding + floor * size


def check_graph(
    engine: GraphEngine,
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    directions: int = 3,
    step: float | None = None,
    floor: float = 2e-3,
    bisect: bool = True,
    second_opinion: bool = True,
) -> GraphCheck:
    """Compare the graphs with central differences at model-input rows ``x`` (n, *shape) along seeded directions."""
    x = np.asarray(x, dtype=np.float64)
    shape = x.shape[1:]
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    h = float(step) if step is not None else 1e-2 * rms
    v = rng.standard_normal((directions,) + x.shape)
    v /= np.sqrt(np.sum(v**2, axis=tuple(range(2, v.ndim)), keepdims=True))
    v = v.reshape((-1,) + shape)  # direction-major: rows (dir, sample)
    xr = np.tile(x, (directions,) + (1,) * len(shape))
    # The forward and log p sessions serve only this check (a scan's exact Jacobians use the reverse
    # graph): each is closed once used, so that at most two of the model's graphs hold memory at once.
    lp, sv = engine.jvp(xr, v)
    engine.release("forward")
    u = rng.standard_normal(sv.shape)
    _, g = engine.vjp(xr, u)
    rev = np.sum(g.reshape(g.shape[0], -1) * v.reshape(v.shape[0], -1), axis=1)  # (Sᵀu)ᵀ v
    unorm = np.linalg.norm(u, axis=1)
    scale = float(np.max(np.abs(lp))) + 1.0
    # Three steps (1%, 0.1%, 0.01% of the input's RMS). Near a ReLU/max-pool kink, central
    # differences are wrong until the step is smaller than the distance to the kink, while a
    # wrong rule disagrees at every step; a step is informative when its own error estimate
    # is below half of what it measures. A row fails when it has informative steps and none
    # of them agrees; a row without any is inconclusive.
    steps = np.array([h] if step is not None else [h, h / 10, h / 100])
    fd_h, fd_h2, tol = [], [], []
    engine.open("logp_model")  # so that the timing below is of rows only
    t_fd = time.perf_counter()
    for hh in steps:
        a_, b_ = paired_differences(engine.logp, xr, v, hh), paired_differences(engine.logp, xr, v, hh / 2)
        fd_h.append(a_)
        fd_h2.append(b_)
        tol.append(_tol(a_, b_, scale, hh, floor))
    row_seconds = (time.perf_counter() - t_fd) / (4 * len(steps) * xr.shape[0])  # float32 log p, per row
    engine.release("logp_model")
    fd_h, fd_h2, tol = np.stack(fd_h), np.stack(fd_h2), np.stack(tol)  # (steps, rows, K), (steps, rows)
    size = np.maximum(np.linalg.norm(fd_h2, axis=2), 1e-30)
    informative = tol <= 0.5 * size
    jvp_err = np.linalg.norm(sv[None] - fd_h2, axis=2)
    vjp_err = np.abs(rev[None] - np.sum(u[None] * fd_h2, axis=2))
    vjp_tol = tol * unorm[None]
    jvp_ok = jvp_err <= tol
    vjp_ok = vjp_err <= vjp_tol
    conclusive = informative.any(axis=0)
    jvp_bad = conclusive & ~(jvp_ok & informative).any(axis=0)
    vjp_bad = conclusive & ~(vjp_ok & informative).any(axis=0)
    # Each row's figures come from its best informative step (any step when none is).
    ratio = np.maximum(jvp_err / np.maximum(tol, 1e-300), vjp_err / np.maximum(vjp_tol, 1e-300))
    best = np.argmin(np.where(informative | ~conclusive[None], ratio, np.inf), axis=0)
    rows = np.arange(xr.shape[0])
    jvp_rel = jvp_err[best, rows] / size[best, rows]
    vjp_rel = vjp_err[best, rows] / (unorm * size[best, rows])
    disc = np.linalg.norm(fd_h[best, rows] - fd_h2[best, rows], axis=1) / size[best, rows]
    passed = not (np.any(jvp_bad) or np.any(vjp_bad))
    verified = conclusive & ~jvp_bad & ~vjp_bad
    suspect = reason = second = None
    # Refused rows, and rows float32 central differences could not judge at any step (large
    # inputs, where a step crosses kinks yet a smaller one cancels), go to the float64 evaluator.
    ask = np.flatnonzero(jvp_bad | vjp_bad | ~conclusive) if second_opinion else np.zeros(0, dtype=int)
    if ask.size:
        opinion, second, evaluator = _float64_opinion(engine, xr[ask], v[ask], sv[ask], rev[ask], u[ask], rms,
                                                      float32_row_seconds=row_seconds)
        if opinion is not None:
            agreed, fwd_fail, back_fail = opinion
            refused = jvp_bad[ask] | vjp_bad[ask]
            parts = []
            if np.any(refused):
                parts.append(f"{int(np.sum(agreed & refused))} of {int(np.sum(refused))} refused rows agree")
            if np.any(~refused):
                parts.append(f"{int(np.sum(agreed & ~refused))} of {int(np.sum(~refused))} rows float32 could not judge agree")
            second = f"float64 {evaluator}: " + ", ".join(parts)
            if np.any(agreed & refused):
                second += " (float32 central differences could not resolve a nearby kink)"
            verified[ask[agreed]] = True
            jvp_bad[ask[agreed]] = False
            vjp_bad[ask[agreed]] = False
            # Rows float32 could not judge but float64 judges and finds wrong: refused as well.
            jvp_bad[ask[~refused & fwd_fail]] = True
            vjp_bad[ask[~refused & back_fail]] = True
            passed = not (np.any(jvp_bad) or np.any(vjp_bad))
    if not passed:
        mode = "forward" if np.any(jvp_bad) else "reverse"
        bad = jvp_bad if mode == "forward" else vjp_bad
        row = int(np.flatnonzero(bad)[np.argmax(ratio[best, rows][bad])])
        h_row = float(steps[best[row]])
        if bisect:
            suspect = (
                _bisect_forward(engine, xr[row : row + 1], v[row : row + 1], h_row, floor)
                if mode == "forward"
                else _bisect_reverse(engine, xr[row : row + 1], v[row : row + 1], u[row : row + 1], h_row, floor)
            )
        what = "S v from the forward-mode graph" if mode == "forward" else "uᵀ S v from the reverse-mode graph"
        err = jvp_rel[row] if mode == "forward" else vjp_rel[row]
        reason = (
            f"{what} disagrees with central differences at every informative step (relative error {err:.2g}, "
            f"finite-difference error {disc[row]:.2g})" + (f"; suspect operator {suspect}" if suspect else "")
        )
    worst = int(np.argmax(ratio[best, rows]))
    zero = (np.all(sv == 0, axis=1) & (rev == 0) & np.all(fd_h == 0, axis=(0, 2)) & np.all(fd_h2 == 0, axis=(0, 2)))
    status = "passed" if passed else "failed"
    if passed and not np.any(verified):
        # Nothing was verified (e.g. every derivative is exactly 0, as on a piecewise-constant model, or no step
        # could judge): agreement on nothing is not a pass.
        passed, status = False, "inconclusive"
        reason = (f"none of the {xr.shape[0]} rows could be verified (no step's central differences could judge them, "
                  "or they measured no derivative at all, as on a piecewise-constant model)")
    return GraphCheck(
        passed=passed,
        status=status,
        zero_rows=int(np.sum(zero)),
        directions=int(directions),
        step=float(steps[best[worst]]),
        jvp_error=float(np.max(jvp_rel)),
        vjp_error=float(np.max(vjp_rel)),
        fd_discrepancy=float(np.max(disc)),
        tolerance=float(np.max(tol[best, rows] / size[best, rows])),
        rows=int(xr.shape[0]),
        inconclusive=int(np.sum(~conclusive)),
        second_opinion=second,
        verified=int(np.sum(verified)),
        suspect=suspect,
        reason=reason,
    )


FLOAT64_BUDGET_S = 30.0  # the float64 evaluator is skipped when its projected time exceeds this
FLOAT64_FLOOR = 1e-2  # relative: the float32 graph's own rounding (2e-3 measured on a random 320 px VGG)
# A float64 row costs at least this many float32 rows of the same graph (measured: onnxruntime 4-9x,
# the reference evaluator 59-75x, MobileNet- and ResNet-50-style models at 224 px). When even that
# exceeds the budget, the evaluator is neither built nor timed.
FLOAT64_MIN_SLOWDOWN = {"onnxruntime": 2.0, "reference evaluator": 20.0}


def _float64_opinion(engine: GraphEngine, x, v, sv, rev, u, rms: float, budget_s: float = FLOAT64_BUDGET_S,
                     float32_row_seconds: float | None = None):
    """Per row, from float64 central differences at steps 1e-5..1e-7 of the RMS: (agrees, forward fails, reverse fails).

    A row fails when some step's own h-vs-h/2 error is below 10% of what it measures and no
    step agrees within ``FLOAT64_FLOOR`` (the graph computes in float32; a wrong rule is off
    by O(1)). The float64 copy runs in onnxruntime when it can (``reference.float64_model``),
    else in onnx's numpy reference evaluator. Returns (None, why, evaluator) when neither can
    run the model or its projected time (the faster of two single rows timed, 12 evaluations per row)
    exceeds ``budget_s``.
    """
    graphs = engine.graphs
    evaluator = "onnxruntime" if onnxruntime_can_run(graphs.logp_model, graphs.shapes) is None else "reference evaluator"
    if float32_row_seconds:
        least = float32_row_seconds * FLOAT64_MIN_SLOWDOWN[evaluator] * 12 * x.shape[0]
        if least > budget_s:
            return None, f"float64 {evaluator} skipped: {least:.0f} s or more for this model", evaluator
    try:
        logp = Float64Logp(graphs.logp_model, graphs.input_name, graphs.shapes, weights=graphs.weights,
                           threads=engine.threads)
        evaluator = logp.evaluator
        steps = (1e-5, 1e-6, 1e-7)
        # Timed on the first rows the first step needs (so not wasted), one at a time: the faster
        # of two, since a session's first run also pays one-off costs.
        lead = (x + steps[0] * rms * v)[:2]
        seconds, first = [], []
        for row in lead:
            t0 = time.perf_counter()
            first.append(logp(row[None]))
            seconds.append(time.perf_counter() - t0)
        first = np.concatenate(first, axis=0)
        projected = min(seconds) * 12 * x.shape[0]
        if projected > budget_s:
            return None, f"float64 {evaluator} skipped: about {projected:.0f} s for this model", evaluator
        n = x.shape[0]
        fwd_ok, back_ok, informative = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for rel_step in steps:
            hh = rel_step * rms
            a = paired_differences(logp, x, v, hh, first if rel_step == steps[0] else None)
            b = paired_differences(logp, x, v, hh / 2)
            disc = np.linalg.norm(a - b, axis=1)
            tol = 2 * disc + FLOAT64_FLOOR * np.linalg.norm(b, axis=1) + 1e-9
            measured = np.linalg.norm(b, axis=1) > 0  # a zero difference verifies nothing
            informative |= measured & (disc <= 0.1 * np.linalg.norm(b, axis=1))
            fwd_ok |= measured & (np.linalg.norm(sv - b, axis=1) <= tol)
            back_ok |= measured & (np.abs(rev - np.sum(u * b, axis=1)) <= tol * np.linalg.norm(u, axis=1))
            if np.all(fwd_ok & back_ok):
                break
        ok = fwd_ok & back_ok
        return (ok, informative & ~fwd_ok, informative & fwd_ok & ~back_ok), None, evaluator
    except Exception as exc:  # an operator the reference evaluator lacks: no second opinion
        return None, f"float64 {evaluator} cannot run this model ({type(exc).__name__})", evaluator


def _intermediate_fd(engine: GraphEngine, x: np.ndarray, v: np.ndarray, h: float, names: list[str]):
    """Central differences of every named intermediate tensor at steps h and h/2."""
    sub = engine.variant(logp_model=engine.graphs.primal)  # every intermediate (and the extra outputs) exposed
    rows = np.concatenate([x + h * v, x - h * v, x + h / 2 * v, x - h / 2 * v], axis=0)
    outs = sub.run("logp_model", names, rows)
    fd_h = {k: (o[0:1] - o[1:2]) / (2 * h) for k, o in zip(names, outs)}  # rows kept: (1, *shape)
    fd_h2 = {k: (o[2:3] - o[3:4]) / h for k, o in zip(names, outs)}
    scale = {k: float(np.max(np.abs(o))) + 1.0 for k, o in zip(names, outs)}
    return fd_h, fd_h2, scale


def _label(op: str, node: str) -> str:
    return f"{op} (node '{node}')"


def _agree(a: np.ndarray, fd_h: np.ndarray, fd_h2: np.ndarray, scale: float, h: float, floor: float) -> bool:
    tol = 2.0 * np.linalg.norm(fd_h - fd_h2) + 8.0 * _EPS32 * scale * np.sqrt(a.size) / h + 5 * floor * np.linalg.norm(fd_h2)
    return bool(np.linalg.norm(a - fd_h2) <= tol + 1e-12)


def _bisect_forward(engine: GraphEngine, x: np.ndarray, v: np.ndarray, h: float, floor: float) -> str | None:
    graphs = engine.graphs
    values = [o for _, _, _, outs in graphs.order for o in outs if o in graphs.tangents]
    fd_h, fd_h2, scale = _intermediate_fd(engine, x, v, h, values)
    sub = engine.variant(forward=with_outputs(graphs.forward, [graphs.tangents[o] for o in values]))
    tang = dict(zip(values, sub.run("forward", [graphs.tangents[o] for o in values], x, {TANGENT: v})))
    good = {graphs.input_name}
    for name, op, ins, outs in graphs.order:
        if not all(i in good for i in ins):
            continue
        outs = [o for o in outs if o in tang]
        if all(_agree(tang[o][0], fd_h[o][0], fd_h2[o][0], scale[o], h, floor) for o in outs):
            good.update(outs)
        else:
            return _label(op, name)
    return None


def _bisect_reverse(engine: GraphEngine, x: np.ndarray, v: np.ndarray, u: np.ndarray, h: float, floor: float) -> str | None:
    """The node whose local adjoint identity Σ_i ⟨c_i, ẋ_i⟩ = Σ_o ⟨ḡ_o, ẏ_o⟩ fails.

    Called when the forward graph agreed with central differences, so its tangents ẋ serve
    as the reference: the identity then holds to float32 rounding at every correct rule, and
    only the node with the wrong reverse rule breaks it.
    """
    del h, floor
    graphs = engine.graphs
    values = sorted({o for _, _, ins, outs in graphs.order for o in ins + outs if o in graphs.tangents})
    fwd = engine.variant(forward=with_outputs(graphs.forward, [graphs.tangents[o] for o in values]))
    tang = dict(zip(values, fwd.run("forward", [graphs.tangents[o] for o in values], x, {TANGENT: v})))
    tang[graphs.input_name] = v.astype(np.float64)
    names = sorted({c for pairs in graphs.contributions.values() for _, c in pairs} | set(graphs.cotangents.values()))
    rev = engine.variant(reverse=with_outputs(graphs.reverse, names))
    got = dict(zip(names, rev.run("reverse", names, x, {COTANGENT: u})))
    for name, op, _ins, outs in reversed(graphs.order):
        pairs = [(i, c) for i, c in graphs.contributions.get(name, []) if i in tang]
        out_terms = [(graphs.cotangents[o], o) for o in outs if o in graphs.cotangents and o in tang]
        if not pairs or not out_terms:
            continue
        lhs_terms = [got[c] * tang[i].reshape(got[c].shape) for i, c in pairs]
        rhs_terms = [got[c] * tang[o].reshape(got[c].shape) for c, o in out_terms]
        lhs = sum(float(np.sum(t)) for t in lhs_terms)
        rhs = sum(float(np.sum(t)) for t in rhs_terms)
        size = sum(float(np.sum(np.abs(t))) for t in lhs_terms + rhs_terms)
        if abs(lhs - rhs) > 1e-3 * size + 1e-30:
            return _label(op, name)
    return None


__all__ = ["GraphCheck", "check_graph"]
