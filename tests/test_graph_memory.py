"""How the gradient graphs hold memory: weights once, sessions closed when done, rows per run bounded.

None of this may change a number: the graphs read their initializers from one shared pool
(handed to onnxruntime as external initializers), a closed session reopens on demand, and
a point's cotangent rows split over several runs give the same S as one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fimaudit.autodiff import GraphEngine, build_graphs, check_graph
from fimaudit.autodiff import source as source_mod
from fimaudit.autodiff.graph import POOL_SIZE
from fimaudit.model import load_model

ROOT = Path(__file__).resolve().parents[1]
F32 = TensorProto.FLOAT


def _conv_net():
    """Conv -> Relu -> MaxPool -> Gemm with 5 classes: weights above the pool size, a bias below it."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "K"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "kb"),
             numpy_helper.from_array((rng.standard_normal((5, 100)) * 0.2).astype(np.float32), "W")]
    nodes = [helper.make_node("Conv", ["x", "K", "kb"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, ["N", 1, 10, 10])],
                          [helper.make_tensor_value_info("y", F32, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _graphs(model=None):
    model = model or _conv_net()
    return build_graphs(model, input_name="x", output_name="y", sample_shape=(1, 10, 10), fixed_batch=None, kind="logits")


def test_graphs_hold_large_initializers_once():
    graphs = _graphs()
    assert set(graphs.weights) >= {"W"}  # 500 elements: pooled; "kb" (4) stays in the graph
    assert all(v.size >= POOL_SIZE for v in graphs.weights.values())
    for model in (graphs.primal, graphs.reverse, graphs.forward, graphs.fisher, graphs.logp_model):
        assert all(int(np.prod(t.dims)) < POOL_SIZE for t in model.graph.initializer)
    # The reverse rule's flipped kernel is a rule constant: in the pool when large, never twice.
    names = [t.name for m in (graphs.reverse, graphs.fisher) for t in m.graph.initializer]
    assert not set(names) & set(graphs.weights)


def test_complete_model_runs_like_the_engine():
    """``complete`` puts the pooled initializers back: a plain onnxruntime session gives the engine's log p."""
    graphs = _graphs()
    engine = GraphEngine(graphs, device="cpu")
    x = np.random.default_rng(0).standard_normal((3, 1, 10, 10))
    full = graphs.complete(graphs.logp_model)
    session = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    (lp,) = session.run(None, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(lp, engine.logp(x), rtol=1e-6, atol=1e-6)


def test_released_sessions_reopen_with_the_same_numbers():
    engine = GraphEngine(_graphs(), device="cpu")
    x = np.random.default_rng(1).standard_normal((2, 1, 10, 10))
    v = np.random.default_rng(2).standard_normal(x.shape)
    before = engine.jvp(x, v)[1]
    check_graph(engine, x, np.random.default_rng(0))  # closes the forward and log p sessions when done
    assert "forward" not in engine.open_graphs and "logp_model" not in engine.open_graphs and "reverse" in engine.open_graphs
    np.testing.assert_array_equal(engine.jvp(x, v)[1], before)
    engine.release()
    assert not engine.open_graphs


@pytest.mark.parametrize("with_p", [False, True])
def test_rows_split_over_runs_give_the_same_jacobian(with_p):
    """Fewer rows per run than a point's cotangent rows: several runs per point, the same S."""
    graphs = _graphs()
    assert graphs.multi
    x = np.random.default_rng(4).standard_normal((3, 1, 10, 10))
    wide = GraphEngine(graphs, device="cpu")
    lp, s = wide.jacobians(x)
    p = np.exp(lp) if with_p else None
    lp, s = wide.jacobians(x, p)
    narrow = GraphEngine(graphs, device="cpu", max_rows=2)
    rows, run = [], narrow._run_multi
    narrow._run_multi = lambda pts, u: (rows.append(u.shape[0]), run(pts, u))[1]
    lp2, s2 = narrow.jacobians(x, p)
    np.testing.assert_allclose(s2, s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lp2, lp, rtol=1e-6, atol=1e-6)
    assert rows and max(rows) <= 2 and sum(rows) == 3 * (4 if with_p else 5)


def test_rows_per_run_follow_the_activation_size(monkeypatch):
    graphs = _graphs()
    per_row = graphs.activation_bytes()
    assert per_row >= 4 * 4 * 10 * 10  # at least the convolution's output
    ref = GraphEngine(graphs, device="cpu")
    assert ref.max_rows == 256 and ref.arena
    monkeypatch.setattr(source_mod, "GRAPH_RUN_BYTES", 3 * per_row)
    monkeypatch.setattr(source_mod, "ARENA_ROW_BYTES", per_row - 1)
    engine = GraphEngine(graphs, device="cpu")
    assert engine.max_rows == 3 and not engine.arena
    x = np.random.default_rng(5).standard_normal((7, 1, 10, 10))
    u = np.random.default_rng(6).standard_normal((7, 5))
    np.testing.assert_allclose(engine.vjp(x, u)[1], ref.vjp(x, u)[1], rtol=1e-5, atol=1e-6)
    assert engine.passes == 3


def test_zoo_model_weights_pooled():
    """A shipped model: every weight tensor in the pool, none in the derivative graphs."""
    model = load_model(ROOT / "sample_models" / "resnet_small.onnx", device="cpu")
    graphs = build_graphs(model.proto, input_name=model.info.input.name, output_name=model.info.output.name,
                          sample_shape=model.info.sample_shape, fixed_batch=None, kind="logits")
    big = {t.name for t in model.proto.graph.initializer if int(np.prod(t.dims)) >= POOL_SIZE}
    assert big and big <= set(graphs.weights)
    for name in big:
        np.testing.assert_array_equal(graphs.weights[name],
                                      numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == name)))
