"""ONNX graph -> typed operation graph -> recognised blocks and composed Lipschitz upper bounds."""

from .bounds import BoundResult, bounds_from_proto, bounds_job, compute_bounds
from .parse import OpGraph, parse

__all__ = ["BoundResult", "bounds_from_proto", "bounds_job", "compute_bounds", "OpGraph", "parse"]
