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

from dataclasses import asdict, dataclass

import numpy as np

from .graph import COTANGENT, LOGP, TANGENT, with_outputs
from .source import GraphEngine

_EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class GraphCheck:
    """The self-check's figures; ``passed`` False comes with the reason and the suspect operator."""

    passed: bool
    directions: int
    step: float
    jvp_error: float  # max over directions of |graph S v - FD(h/2)| / |FD(h/2)|
    vjp_error: float  # the same for uᵀ S v through the reverse graph
    fd_discrepancy: float  # max |FD(h) - FD(h/2)| / |FD(h/2)|: the finite-difference error scale
    tolerance: float  # relative tolerance the errors were held to
    suspect: str | None = None  # "Conv (node 'conv_3')"
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _fd(logp, x: np.ndarray, v: np.ndarray, h: float) -> np.ndarray:
    rows = np.concatenate([x + h * v, x - h * v], axis=0)
    out = logp(rows)
    n = x.shape[0]
    return (out[:n] - out[n:]) / (2.0 * h)


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
) -> GraphCheck:
    """Compare the graphs with central differences at model-input rows ``x`` (n, *shape) along seeded directions."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    shape = x.shape[1:]
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    h = float(step) if step is not None else 1e-2 * rms
    v = rng.standard_normal((directions,) + x.shape)
    v /= np.sqrt(np.sum(v**2, axis=tuple(range(2, v.ndim)), keepdims=True))
    v = v.reshape((-1,) + shape)  # direction-major: rows (dir, sample)
    xr = np.tile(x, (directions,) + (1,) * len(shape))
    fd_h = _fd(engine.logp, xr, v, h)
    fd_h2 = _fd(engine.logp, xr, v, h / 2)
    lp, sv = engine.jvp(xr, v)
    scale = float(np.max(np.abs(lp))) + 1.0
    tol = _tol(fd_h, fd_h2, scale, h, floor)
    size = np.linalg.norm(fd_h2, axis=1)
    denom = np.maximum(size, 1e-30)
    jvp_err = np.linalg.norm(sv - fd_h2, axis=1)
    # The reverse graph: uᵀ S v = (Sᵀ u)ᵀ v for random cotangents u.
    u = rng.standard_normal(fd_h2.shape)
    _, g = engine.vjp(xr, u)
    rev = np.sum(g.reshape(g.shape[0], -1) * v.reshape(v.shape[0], -1), axis=1)
    fwd_fd = np.sum(u * fd_h2, axis=1)
    unorm = np.linalg.norm(u, axis=1)
    vjp_err = np.abs(rev - fwd_fd)
    vjp_tol = tol * unorm
    disc = np.linalg.norm(fd_h - fd_h2, axis=1) / denom
    tolerance = float(np.max(tol / denom))
    jvp_bad = jvp_err > tol
    vjp_bad = vjp_err > vjp_tol
    passed = not (np.any(jvp_bad) or np.any(vjp_bad))
    suspect = reason = None
    if not passed:
        mode = "forward" if np.any(jvp_bad) else "reverse"
        row = int(np.argmax(jvp_err / tol if mode == "forward" else vjp_err / vjp_tol))
        if bisect:
            suspect = (
                _bisect_forward(engine, xr[row : row + 1], v[row : row + 1], h, floor)
                if mode == "forward"
                else _bisect_reverse(engine, xr[row : row + 1], v[row : row + 1], u[row : row + 1], h, floor)
            )
        what = "S v from the forward-mode graph" if mode == "forward" else "uᵀ S v from the reverse-mode graph"
        err = jvp_err[row] / denom[row] if mode == "forward" else vjp_err[row] / max(unorm[row] * denom[row], 1e-30)
        reason = (
            f"{what} disagrees with central differences (relative error {err:.2g}, finite-difference error "
            f"{disc[row]:.2g})" + (f"; suspect operator {suspect}" if suspect else "")
        )
    return GraphCheck(
        passed=passed,
        directions=int(directions),
        step=h,
        jvp_error=float(np.max(jvp_err / denom)),
        vjp_error=float(np.max(vjp_err / np.maximum(unorm * denom, 1e-30))),
        fd_discrepancy=float(np.max(disc)),
        tolerance=tolerance,
        suspect=suspect,
        reason=reason,
    )


def _intermediate_fd(engine: GraphEngine, x: np.ndarray, v: np.ndarray, h: float, names: list[str]):
    """Central differences of every named intermediate tensor at steps h and h/2."""
    sub = engine.variant(logp_model=with_outputs(engine.graphs.logp_model, names))
    rows = np.concatenate([x + h * v, x - h * v, x + h / 2 * v, x - h / 2 * v], axis=0)
    outs = sub.run("logp_model", names, rows)
    fd_h = {k: (o[0] - o[1]) / (2 * h) for k, o in zip(names, outs)}
    fd_h2 = {k: (o[2] - o[3]) / h for k, o in zip(names, outs)}
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
    graphs = engine.graphs
    values = sorted({o for _, _, ins, outs in graphs.order for o in ins + outs})
    fd_h, fd_h2, scale = _intermediate_fd(engine, x, v, h, [n for n in values if n != graphs.input_name])
    fd_h2[graphs.input_name] = v.astype(np.float64)
    fd_h[graphs.input_name] = v.astype(np.float64)
    names = sorted({c for pairs in graphs.contributions.values() for _, c in pairs} | set(graphs.cotangents.values()))
    sub = engine.variant(reverse=with_outputs(graphs.reverse, names))
    got = dict(zip(names, sub.run("reverse", names, x, {COTANGENT: u})))
    for name, op, ins, outs in reversed(graphs.order):
        pairs = graphs.contributions.get(name)
        if not pairs:
            continue
        out_terms = [(graphs.cotangents[o], o) for o in outs if o in graphs.cotangents]
        rhs = sum(float(np.sum(got[c] * fd_h2[o])) for c, o in out_terms)
        lhs = sum(float(np.sum(got[c] * fd_h2[i])) for i, c in pairs)
        err_scale = sum(
            float(np.linalg.norm(got[c]) * (np.linalg.norm(fd_h[i] - fd_h2[i]) * 2 + 5 * floor * np.linalg.norm(fd_h2[i])
                                          + 8 * _EPS32 * scale.get(i, 1.0) * np.sqrt(fd_h2[i].size) / h))
            for i, c in pairs
        ) + sum(
            float(np.linalg.norm(got[c]) * (np.linalg.norm(fd_h[o] - fd_h2[o]) * 2 + 5 * floor * np.linalg.norm(fd_h2[o])
                                          + 8 * _EPS32 * scale.get(o, 1.0) * np.sqrt(fd_h2[o].size) / h))
            for c, o in out_terms
        )
        if abs(lhs - rhs) > err_scale + 1e-12:
            return _label(op, name)
    return None


__all__ = ["GraphCheck", "check_graph", "LOGP"]
