"""Choosing the Jacobian source for a scan: ``--gradients auto|graph|fd``, with the self-check's verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, UnsupportedModelError
from .check import GraphCheck, check_graph
from .emit import GradientUnsupported
from .graph import build_graphs
from .source import GradientGraph, GraphEngine

GRADIENT_MODES = ("auto", "graph", "fd")


@dataclass(frozen=True)
class GradientChoice:
    """Which source a scan uses, and why: the build time, the self-check's figures or the refusal reason."""

    requested: str
    source: str  # "graph" or "fd"
    engine: GraphEngine | None
    check: GraphCheck | None
    reason: str | None  # why the graph is not used (None when it is)
    build_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "source": self.source,
            "reason": self.reason,
            "build_seconds": round(self.build_seconds, 4),
            "check": self.check.to_dict() if self.check is not None else None,
        }

    def at(
        self,
        x0: np.ndarray,
        *,
        logp0: np.ndarray | None = None,
        to_input: Callable[[np.ndarray], np.ndarray] | None = None,
        input_scale: np.ndarray | float | None = None,
    ) -> GradientGraph:
        """The gradient-graph source at point ``x0`` (estimation space)."""
        if self.engine is None:
            raise ValueError("no gradient graph was chosen")
        return GradientGraph(self.engine, x0, logp0=logp0, to_input=to_input, input_scale=input_scale)


def build_gradient_source(
    model,
    kind: str,
    mode: str,
    check_points: np.ndarray,
    rng: np.random.Generator,
    *,
    threads: int = 0,
    directions: int = 3,
) -> GradientChoice:
    """Build and self-check the gradient graph of a loaded ``Model`` (``check_points``: model-input rows).

    ``mode`` fd: never build. auto: the graph when it builds and passes the check (an inconclusive
    check, with no row verified, is not a pass: the graph is used unverified only when it and the
    model's central differences are exactly 0 on every row), else the reason. graph: the graph (unverified when
    the check is inconclusive, and the report says so) or a ``FimauditError`` saying why not.
    """
    if mode not in GRADIENT_MODES:
        raise ConfigError(f"--gradients must be one of {', '.join(GRADIENT_MODES)}, not '{mode}'")
    if mode == "fd":
        return GradientChoice(mode, "fd", None, None, "finite differences requested (--gradients fd)")
    info = model.info
    device = "cuda" if model.provider == "CUDAExecutionProvider" else "cpu"
    try:
        graphs = build_graphs(
            model.proto,
            input_name=info.input.name,
            output_name=info.output.name,
            sample_shape=tuple(info.sample_shape),
            fixed_batch=info.fixed_batch,
            kind=kind,
            threads=threads,
        )
        engine = GraphEngine(graphs, device=device, threads=threads)
        check = check_graph(engine, np.asarray(check_points, dtype=np.float64)[:2], rng, directions=directions)
    except GradientUnsupported as exc:
        if mode == "graph":
            raise UnsupportedModelError(f"--gradients graph: {exc}; use --gradients auto or fd") from None
        return GradientChoice(mode, "fd", None, None, f"gradient graph not built: {exc}")
    except Exception as exc:  # a graph onnxruntime refuses is a fallback, never a crash
        message = " ".join(str(exc).split())[:300]
        if mode == "graph":
            raise UnsupportedModelError(f"--gradients graph: the gradient graph does not run: {message}") from None
        return GradientChoice(mode, "fd", None, None, f"gradient graph does not run: {message}")
    if not check.passed and check.status == "inconclusive" and (mode == "graph" or check.zero_rows == check.rows):
        # Used unverified, and the record says so (the check is no evidence either way): when asked for explicitly,
        # or when the graph and the model agree that every derivative is exactly 0 (a piecewise-constant model:
        # its callers flag zero gradients themselves).
        return GradientChoice(mode, "graph", engine, check, None, graphs.build_seconds)
    if not check.passed:
        what = "self-check inconclusive" if check.status == "inconclusive" else "self-check failed"
        if mode == "graph":
            raise UnsupportedModelError(f"--gradients graph: {what}: {check.reason}")
        return GradientChoice(mode, "fd", None, check, f"{what}: {check.reason}", graphs.build_seconds)
    return GradientChoice(mode, "graph", engine, check, None, graphs.build_seconds)
