"""The one logit walk and the one BatchNorm fold, each checked against an independent answer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fimaudit.graph import bounds_from_proto
from fimaudit.graph.fold import fold_batchnorm
from fimaudit.metrics.weights import path_norm
from fimaudit.model.spec import logit_output, onnx_producers


def _gemm_bn(rng, constant_nodes: bool, tail: tuple[str, ...] = ()):
    w = rng.standard_normal((4, 6)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    gamma, beta = rng.uniform(0.3, 3, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    consts = {"W": w, "B": bias, "g": gamma, "b": beta, "m": mean, "v": var}
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["z"], transB=1),
             helper.make_node("BatchNormalization", ["z", "g", "b", "m", "v"], ["y"], epsilon=1e-5)]
    last = "y"
    for i, op in enumerate(tail):
        nodes.append(helper.make_node(op, [last], [f"t{i}"], **({"axis": 1} if "Softmax" in op else {})))
        last = f"t{i}"
    inits = [numpy_helper.from_array(a, n) for n, a in consts.items()]
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a, n)) for n, a in consts.items()] + nodes
        inits = []
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    return m, last, scale[:, None] * w.astype(np.float64)


@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
def test_fold_is_exact_and_bounds_use_it(constant_nodes):
    m, out, folded_w = _gemm_bn(np.random.default_rng(3), constant_nodes)
    folded = fold_batchnorm(m)
    assert [n.op_type for n in folded.graph.node if n.op_type != "Constant"] == ["Gemm"]
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 1  # input untouched
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    run = lambda mm: ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(folded), run(m), rtol=1e-4, atol=1e-5)
    # The bound of a folded affine map is exactly its spectral norm (separate factors would give more).
    res = bounds_from_proto(m, "x", out, (6,))
    assert res.lipschitz == pytest.approx(np.linalg.norm(folded_w, 2), rel=1e-5)
    assert any("folded" in n for n in res.notes)


def test_logit_walk_looks_through_shape_ops_to_the_softmax():
    m, out, folded_w = _gemm_bn(np.random.default_rng(5), False, tail=("Softmax", "Flatten", "Identity"))
    walk = logit_output(onnx_producers(m), out)
    assert walk == logit_output(onnx_producers(m), out) and walk.final_op == "Softmax" and walk.logits == "y"
    plain = logit_output(onnx_producers(m), "y")
    assert plain.final_op == "BatchNormalization" and plain.logits == "y"
    assert logit_output({}, "x").final_op is None
    # Every user sees the same tensor: the bound excludes the softmax, the path norm sums the logits.
    res = bounds_from_proto(m, "x", out, (6,))
    assert res.excluded_output_op == "Softmax"
    assert res.lipschitz == pytest.approx(np.linalg.norm(folded_w, 2), rel=1e-5)
    # Path norm of one folded affine layer: sum of squared weights times ones plus squared biases.
    pn_softmax = path_norm(m, "x", out, (6,))
    pn_logits = path_norm(m, "x", "y", (6,))
    assert pn_softmax == pytest.approx(pn_logits, rel=1e-6)
