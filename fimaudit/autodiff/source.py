"""The gradient-graph Jacobian source: exact products with S from the derivative graphs, batched over samples.

``GraphEngine`` holds the onnxruntime sessions of one model's derivative graphs and runs any
number of rows (points with their tangents or cotangents) in batches; it counts rows and
passes. ``GradientGraph`` binds the engine to one point ``x0`` in estimation space and
implements the ``JacobianSource`` protocol of ``fimaudit.estimators.source``: ``jvp`` by the
forward-mode graph, ``vjp`` by the reverse-mode graph, ``jacobian`` from the K VJPs that
give S exactly (MATH §1). Estimation space may differ from model input by the affine
preprocessing u = a ⊙ x + b; then S_x = S_u diag(a).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..model.runner import BatchRunner, RunCounts
from ..model.session import open_session
from .graph import COTANGENT, GRAD, JVP_OUT, LOGP, TANGENT, DerivativeGraphs


# Rows per run: at most this many bytes of primal activations (the reverse graph keeps them for the
# backward pass; ResNet-50 at 224 px has 145 MB per row, so 3 rows a run rather than 256).
GRAPH_RUN_BYTES = 512 * 1024 * 1024
# Above this many bytes of primal activations per row, the sessions keep no memory arena between
# runs (the arena holds the largest run's tensors for the session's life; without it they go back
# to the system after each run, for a few percent of speed).
ARENA_ROW_BYTES = 64 * 1024 * 1024


class GraphEngine:
    """Sessions of the derivative graphs; batched log p, VJPs, JVPs, exact S and F v for many rows."""

    def __init__(self, graphs: DerivativeGraphs, *, device: str = "auto", threads: int = 0, max_rows: int = 256):
        self.graphs = graphs
        self.device = device
        self.threads = threads
        per_row = graphs.activation_bytes()
        self.max_rows = int(graphs.batch) if graphs.batch is not None else max(1, min(int(max_rows), GRAPH_RUN_BYTES // per_row))
        self.arena = per_row <= ARENA_ROW_BYTES
        self._providers: dict[str, str] = {}
        self._runners: dict[str, BatchRunner] = {}  # one per open graph session (``model.runner``), counts shared
        self.counts = RunCounts()

    @property
    def rows(self) -> int:
        """Rows evaluated (a row = one point through one derivative pass)."""
        return self.counts.rows

    @property
    def passes(self) -> int:
        """Session runs."""
        return self.counts.passes

    @property
    def seconds(self) -> float:
        return self.counts.seconds

    @property
    def n_classes(self) -> int:
        return self.graphs.n_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.graphs.sample_shape

    @property
    def provider(self) -> str:
        self._runner("reverse")
        return self._providers["reverse"]

    def variant(self, **models) -> GraphEngine:
        """An engine over the same graphs with some models replaced (extra outputs for bisection)."""
        graphs = dataclasses.replace(self.graphs, **models)
        return GraphEngine(graphs, device=self.device, threads=self.threads, max_rows=self.max_rows)

    @property
    def open_graphs(self) -> frozenset[str]:
        """The graphs whose sessions are open now."""
        return frozenset(self._runners)

    def release(self, *which: str) -> None:
        """Close the sessions of graphs ``which`` (all when none is named); a later run opens them again."""
        for name in which or tuple(self._runners):
            self._runners.pop(name, None)

    def open(self, which: str) -> None:
        """Open the session of graph ``which`` now (it opens on first use otherwise)."""
        self._runner(which)

    def _runner(self, which: str) -> BatchRunner:
        if which not in self._runners:
            session, provider = open_session(getattr(self.graphs, which), self.device, self.threads, self.graphs.weights,
                                             arena=self.arena)
            self._providers[which] = provider
            self._runners[which] = BatchRunner(session, self.graphs.input_dtype, batch=self.max_rows,
                                               fixed_batch=self.graphs.batch, what="the gradient graph", counts=self.counts)
        runner = self._runners[which]
        runner.batch = self.max_rows
        return runner

    def run(self, which: str, outputs: list[str], x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list:
        """Evaluate ``outputs`` of graph ``which`` on rows ``x`` (and row-aligned ``extra`` feeds), float64."""
        return self._runner(which).run(outputs, {self.graphs.input_name: x, **(extra or {})})

    def logp(self, x: np.ndarray) -> np.ndarray:
        (lp,) = self.run("logp_model", [LOGP], x)
        return lp

    def vjp(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``x`` (n, *shape), cotangents ``u`` (n, K) -> (log p (n, K), Sᵀu (n, *shape))."""
        return tuple(self.run("reverse", [LOGP, GRAD], x, {COTANGENT: u}))  # type: ignore[return-value]

    def jvp(self, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``x`` and tangents ``v`` (n, *shape) -> (log p, S v (n, K))."""
        return tuple(self.run("forward", [LOGP, JVP_OUT], x, {TANGENT: v}))  # type: ignore[return-value]

    def fisher(self, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One fused pass: (log p, S v, F v = Sᵀ diag(p) S v) for each row."""
        return tuple(self.run("fisher", [LOGP, JVP_OUT, GRAD], x, {TANGENT: v}))  # type: ignore[return-value]

    def vjp_point(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many cotangents ``u`` (m, K) at one point ``x`` (1, *shape): (log p (K,), Sᵀu (m, *shape)).

        With a symbolic batch the model runs once for all m rows (``multi``); otherwise the point
        is repeated per row.
        """
        u = np.atleast_2d(u)
        if not self.graphs.multi:
            lp, g = self.vjp(np.repeat(x, u.shape[0], axis=0), u)
            return lp[0], g
        lps, grads = [], []
        for start in range(0, u.shape[0], self.max_rows):
            lp, g = self._run_multi(x, u[start : start + self.max_rows])
            lps.append(lp[0])
            grads.append(g)
        return lps[0], np.concatenate(grads)

    def jacobians(self, x: np.ndarray, p: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact S for each of N points, batched. Returns (log p (N, K), S (N, K, d)).

        Without ``p``: K VJPs per point (rows e_k). With the points' probabilities ``p`` (N, K):
        K - 1 VJPs, since pᵀS = 0 (the probabilities sum to one): the row of the most probable
        class j is rebuilt as S_j = -(Σ_{k≠j} p_k S_k) / p_j (p_j >= 1/K, so no rounding is
        amplified). With a symbolic batch the reverse graph takes all of a point's cotangent rows
        and runs the model once per point; a fixed-batch graph gets each point repeated.
        """
        n, k = x.shape[0], self.n_classes
        eye = np.eye(k)
        if p is None or k < 2:
            drop = None
            u = np.tile(eye, (n, 1))
        else:
            p = np.asarray(p, dtype=np.float64).reshape(n, k)
            drop = np.argmax(p, axis=1)
            keep = np.broadcast_to(np.arange(k), (n, k)) != drop[:, None]
            u = np.broadcast_to(eye, (n, k, k))[keep]  # each point's K - 1 rows e_k, k != its dropped class
        m = k if drop is None else k - 1
        if not self.graphs.multi:
            lp, g = self.vjp(np.repeat(x, m, axis=0), u)
            lp, g = lp[::m], g.reshape(n, m, -1)
        elif m > self.max_rows:  # one point's rows take several runs
            lps, grads = [], []
            for i in range(n):
                lp_, g_ = self.vjp_point(x[i : i + 1], u[i * m : (i + 1) * m])
                lps.append(lp_[None])
                grads.append(g_.reshape(1, m, -1))
            lp, g = np.concatenate(lps), np.concatenate(grads)
        else:
            per_run = max(1, self.max_rows // m)
            lps, grads = [], []
            for start in range(0, n, per_run):
                pts = x[start : start + per_run]
                lp_, g_ = self._run_multi(pts, u[start * m : (start + pts.shape[0]) * m])
                lps.append(lp_)
                grads.append(g_.reshape(pts.shape[0], m, -1))
            lp, g = np.concatenate(lps), np.concatenate(grads)
        if drop is None:
            return lp, g
        s = np.empty((n, k, g.shape[2]))
        pts = np.arange(n)
        classes = np.broadcast_to(np.arange(k), (n, k))
        rest = classes[classes != drop[:, None]].reshape(n, k - 1)
        s[pts[:, None], rest] = g
        pg = np.exp(lp)  # the graph's own probabilities at each point: consistent with its gradients
        pj = pg[pts, drop]
        s[pts, drop] = -np.einsum("nm,nmd->nd", np.take_along_axis(pg, rest, axis=1), g) / np.maximum(pj, 1e-300)[:, None]
        for i in np.flatnonzero(pj < 0.5 / k):  # the p given was not this point's: that row directly
            s[i, drop[i]] = self.vjp_point(x[i : i + 1], eye[drop[i] : drop[i] + 1])[1].reshape(-1)
        return lp, s

    def _run_multi(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One reverse run with u.shape[0] / x.shape[0] cotangent rows per point."""
        runner = self._runner("reverse")
        feed = {self.graphs.input_name: np.ascontiguousarray(x, dtype=runner.dtype),
                COTANGENT: np.ascontiguousarray(u, dtype=runner.dtype)}
        lp, g = runner.once([LOGP, GRAD], feed, u.shape[0])
        return lp, g


class GradientGraph:
    """``JacobianSource`` from the derivative graphs at one point ``x0`` (estimation space, flattened or shaped).

    ``to_input``: estimation space -> model input rows (affine; None for identity) and
    ``input_scale``: its diagonal derivative du/dx (scalar or broadcastable to the sample shape).
    """

    rel_error: float | None = 0.0

    def __init__(
        self,
        engine: GraphEngine,
        x0: np.ndarray,
        *,
        logp0: np.ndarray | None = None,
        to_input: Callable[[np.ndarray], np.ndarray] | None = None,
        input_scale: np.ndarray | float | None = None,
    ) -> None:
        self.engine = engine
        self.sample_shape = tuple(engine.sample_shape)
        self.x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        self.d = int(self.x0.size)
        self._to_input = to_input
        scale = np.ones(()) if input_scale is None else np.asarray(input_scale, dtype=np.float64)
        self._scale = np.broadcast_to(scale, self.sample_shape).reshape(-1)
        self._u0 = self._model_rows(self.x0[None, :])
        self._rows0, self._passes0 = engine.rows, engine.passes
        self._S: np.ndarray | None = None
        if logp0 is None:
            logp0 = self.logp(self.x0[None, :])[0]
        self.logp0 = np.asarray(logp0, dtype=np.float64)
        self.p = np.exp(self.logp0)
        self.n_classes = int(self.logp0.size)

    def _model_rows(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float64).reshape((-1,) + self.sample_shape)
        return self._to_input(rows) if self._to_input is not None else rows

    @property
    def queries(self) -> int:
        return self.engine.rows - self._rows0

    @property
    def passes(self) -> int:
        return self.engine.passes - self._passes0

    def logp(self, x: np.ndarray) -> np.ndarray:
        return self.engine.logp(self._model_rows(x))

    def _tile(self, m: int) -> np.ndarray:
        return np.repeat(self._u0, m, axis=0)

    def jvp(self, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(v, dtype=np.float64))
        if self._S is not None:
            return v @ self._S.T
        vu = (v * self._scale).reshape((-1,) + self.sample_shape)
        return self.engine.jvp(self._tile(v.shape[0]), vu)[1]

    def vjp(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        if self._S is not None:
            return u @ self._S
        g = self.engine.vjp_point(self._u0, u)[1]
        return g.reshape(u.shape[0], -1) * self._scale

    def vjp_cost(self, m: int) -> int:
        return int(m)

    def full_jacobian(self) -> np.ndarray:
        """S (K, d) exactly, from K - 1 VJPs and pᵀS = 0 (computed once, then reused by jvp/vjp)."""
        if self._S is None:
            _, s = self.engine.jacobians(self._u0, self.p[None, :])
            self._S = s[0] * self._scale
        return self._S

    def set_jacobian(self, S: np.ndarray) -> None:
        """Adopt an S computed for many samples in one batched run (``GraphEngine.jacobians``), in model-input units."""
        self._S = np.asarray(S, dtype=np.float64).reshape(self.n_classes, -1) * self._scale

    def jacobian(self, coords: np.ndarray) -> np.ndarray:
        return self.full_jacobian()[:, np.asarray(coords, dtype=np.int64)].T

    def fisher_matvec(self, v: np.ndarray) -> np.ndarray:
        """F v = Sᵀ diag(p) S v (rows of ``v``), one fused graph pass, without forming S."""
        v = np.atleast_2d(np.asarray(v, dtype=np.float64))
        if self._S is not None:
            return ((v @ self._S.T) * self.p) @ self._S
        vu = (v * self._scale).reshape((-1,) + self.sample_shape)
        _, _, fv = self.engine.fisher(self._tile(v.shape[0]), vu)
        return fv.reshape(v.shape[0], -1) * self._scale
