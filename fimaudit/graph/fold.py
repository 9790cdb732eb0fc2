"""The one BatchNorm fold: a Conv/Gemm followed by a BatchNormalization becomes one Conv/Gemm.

Weights and BatchNorm statistics may be initializers or Constant nodes; the input graph is never
mutated. Used by the closed-form bounds (a tighter per-layer norm) and the weight measures.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def batchnorm_scale(gamma: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray | None:
    """Per-channel slope gamma / sqrt(var + eps) of BatchNormalization in inference mode.

    None for statistics no real BatchNorm has (negative or NaN variance, non-finite gamma): such a
    layer is neither folded nor bounded.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    denom = np.asarray(var, dtype=np.float64) + eps
    if not (np.all(np.isfinite(denom)) and np.all(denom > 0) and np.all(np.isfinite(gamma))):
        return None
    return gamma / np.sqrt(denom)


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
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in consts:
            continue
        cons = consumers.get(node.output[0], [])
        if len(cons) != 1 or cons[0].op_type != "BatchNormalization" or node.output[0] in graph_outputs:
            continue
        bn = cons[0]
        if len(bn.input) < 5 or not all(i in consts for i in bn.input[1:5]):
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in consts:
            continue  # a computed bias: leave the pair alone
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.input[1:5])
        scale = batchnorm_scale(gamma, var, next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5))
        if scale is None:
            continue
        w = consts[node.input[1]]
        w64 = w.astype(np.float64)
        if node.op_type == "Conv":
            w2 = w64 * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        else:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w2 = w64 * (scale[:, None] if trans_b else scale[None, :])
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
