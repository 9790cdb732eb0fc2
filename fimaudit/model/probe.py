"""Expose intermediate tensors of an ONNX model and open one onnxruntime session on it: the one helper behind the
gradient graphs' primal probe (autodiff.graph: every tensor's shape, dtype and inactive values), the gradient-graph
bisection (autodiff.check), the runtime shape probe (graph.parse) and the weight metrics (metrics.weights).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .session import open_session


def with_outputs(model: onnx.ModelProto, names: list[str], *, copy: bool = True, only: bool = False,
                 types: dict | None = None) -> onnx.ModelProto:
    """``model`` (a copy unless ``copy`` is False) that also returns the tensors ``names`` (untyped outputs).

    ``only``: the graph's outputs become exactly ``names``, in that order; ``types``: name -> numpy dtype for the
    new outputs given an element type (no shape) rather than none.
    """
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    if only:
        del out.graph.output[:]
    have = {o.name for o in out.graph.output}
    types = types or {}
    out.graph.output.extend(
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(types[n])), None) if n in types
        else helper.ValueInfoProto(name=n) for n in names if n not in have)
    return out


def open_probe(model: onnx.ModelProto, names: list[str], *, copy: bool = True, only: bool = False,
               types: dict | None = None, device: str = "cpu", threads: int = 0,
               weights: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, object]:
    """(the probe model, its onnxruntime session): ``with_outputs(model, names, ...)`` opened by ``open_session``
    (``weights``: initializers the model leaves out, handed to onnxruntime as arrays). Raises what
    ``create_session`` does."""
    probe = with_outputs(model, names, copy=copy, only=only, types=types)
    session, _ = open_session(probe, device, threads, weights)
    return probe, session


def probe_session(model: onnx.ModelProto, names: list[str], *, copy: bool = True, device: str = "cpu"):
    """An onnxruntime session of ``model`` returning the tensors ``names`` too (raises what ``create_session`` does)."""
    return open_probe(model, names, copy=copy, device=device)[1]
