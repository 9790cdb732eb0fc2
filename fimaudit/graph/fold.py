"""The one BatchNorm fold: a Conv/Gemm followed by a BatchNormalization becomes one Conv/Gemm.

Which operators take a following BatchNorm, and how its per-channel scale enters their weight, is their entry's
``bn_fold`` in the operator table (``fimaudit.ops``).

Weights and BatchNorm statistics may be initializers or Constant nodes; the input graph is never
mutated. Used by the closed-form bounds (a tighter per-layer norm) and the weight measures.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .. import ops
from ..ops.norm import batchnorm_scale


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            attr = next((a for a in n.attribute if a.name == "value"), None)
            if attr is not None:
                out[n.output[0]] = numpy_helper.to_array(attr.t)
    return out


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every BatchNormalization that directly follows a Conv/Gemm (sole consumer) folded in."""
    foldable = ops.with_flag("bn_fold")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = _constants(m)
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in m.graph.output}
    remove = []
    for node in list(m.graph.node):
        if node.op_type not in foldable or len(node.input) < 2 or node.input[1] not in consts:
            continue
        cons = consumers.get(node.output[0], [])
        if len(cons) != 1 or cons[0].op_type != "BatchNormalization" or node.output[0] in graph_outputs:
            continue
        bn = cons[0]
        if len(bn.input) < 5 or not all(i in consts for i in bn.input[1:5]):
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in consts:
            continue  # a computed bias: leave the pair alone
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.input[1:5])
        scale = batchnorm_scale(gamma, var, next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5))
        if scale is None:
            continue
        w = consts[node.input[1]]
        w2 = ops.TABLE[node.op_type].bn_fold(node, w.astype(np.float64), scale)
        if w2 is None:
            continue
        b = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        b2 = (b - mean) * scale + beta
        wname, bname = node.input[1] + "_bnfold", node.output[0] + "_bnfold_bias"
        m.graph.initializer.append(numpy_helper.from_array(w2.astype(w.dtype), wname))
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(b2, dtype=w.dtype), bname))
        new_inputs = [node.input[0], wname, bname]
        del node.input[:]
        node.input.extend(new_inputs)
        node.output[0] = bn.output[0]
        remove.append(bn)
    for bn in remove:
        m.graph.node.remove(bn)
    return m
