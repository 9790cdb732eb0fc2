"""Gradients from the graph: reverse- and forward-mode ONNX graphs of log p, their source and self-check."""

from .emit import GradientUnsupported
from .graph import DerivativeGraphs, build_graphs

__all__ = ["GradientUnsupported", "DerivativeGraphs", "build_graphs"]
