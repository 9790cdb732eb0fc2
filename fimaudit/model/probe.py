"""Expose intermediate tensors of an ONNX model and open one onnxruntime session on it: the one helper behind the
gradient-graph bisection (autodiff), the runtime shape probe (graph.parse) and the weight metrics (metrics.weights).
"""

from __future__ import annotations

import onnx
from onnx import helper

from .session import create_session


def with_outputs(model: onnx.ModelProto, names: list[str], *, copy: bool = True) -> onnx.ModelProto:
    """``model`` (a copy unless ``copy`` is False) that also returns the tensors ``names`` (untyped outputs)."""
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.ValueInfoProto(name=n) for n in names if n not in have)
    return out


def probe_session(model: onnx.ModelProto, names: list[str], *, copy: bool = True, device: str = "cpu"):
    """An onnxruntime session of ``model`` returning the tensors ``names`` too (raises what ``create_session`` does)."""
    sess, _ = create_session(with_outputs(model, names, copy=copy).SerializeToString(), device=device)
    return sess
