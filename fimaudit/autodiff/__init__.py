"""Gradients from the graph: reverse- and forward-mode ONNX graphs of log p, their source and self-check."""

from .check import GraphCheck, check_graph
from .emit import GradientUnsupported
from .graph import DerivativeGraphs, build_graphs
from .lanczos import LanczosResult, lanczos_top
from .select import GRADIENT_MODES, GradientChoice, build_gradient_source
from .source import GradientGraph, GraphEngine

__all__ = [
    "GRADIENT_MODES",
    "DerivativeGraphs",
    "GradientChoice",
    "GradientGraph",
    "GradientUnsupported",
    "GraphCheck",
    "GraphEngine",
    "LanczosResult",
    "build_gradient_source",
    "build_graphs",
    "check_graph",
    "lanczos_top",
]
