"""Sound bounds on the model's outputs over a set of inputs: IBP and CROWN on the ONNX graph (docs/verify.md).

Public API: ``BoundGraph`` (the engine), ``InputSet`` (perturbation sets in attack space), ``BoxSet`` (a box in
model-input units), ``Box`` (intervals), ``domain_bounds`` (logit bounds over the whole input box),
``supported_ops`` / ``relaxed_ops`` (read from the operator table, ``fimaudit.ops``).
"""

from __future__ import annotations

from .engine import BoundGraph, Bounds, relaxed_ops, supported_ops
from .intervals import Box
from .sets import BoxSet, InputSet


def domain_bounds(model, input_range, pre=None, method: str = "ibp") -> Box:
    """Interval of the logits over the whole input box ``input_range`` (attack space; ``pre`` maps it to the
    model input). Finite for attention and LayerNorm models (eps > 0 in LayerNorm). ``model``: a loaded
    ``fimaudit.model.Model`` or a ``BoundGraph``."""
    g = model if isinstance(model, BoundGraph) else BoundGraph.from_model(model)
    s = InputSet.domain(g.sample_shape, input_range, pre)
    b = g.intervals(s, refine=(method == "crown") and "auto")
    return b[g.logit_name]


__all__ = ["BoundGraph", "Bounds", "Box", "BoxSet", "InputSet", "domain_bounds", "relaxed_ops", "supported_ops"]
