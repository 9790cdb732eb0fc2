"""Every shape in which exporters store a classifier: batch axis, input rank, output shape, old Softmax.

Each fixture is the same linear softmax model z = W flatten(x) + b written another way, so
each scan must give the closed-form lambda_max of J = W at every sample.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fimaudit

from . import builders as B

K = 4
BATCHES = {"dim_param": "batch", "dim_value_-1": -1, "dim_value_0": 0, "missing": None, "fixed_1": 1}
SAMPLE_SHAPES = {"rank2": (12,), "rank3": (12, 1), "rank4": (3, 2, 2)}
OUTPUTS = {"NK": None, "NK11": (K, 1, 1), "N1K": (1, K)}


def _dims(batch, rest):
    return [batch, *rest]


def export(w, b, batch, sample_shape, out_rest=None, old_softmax=False) -> onnx.ModelProto:
    """Flatten -> Gemm [-> Reshape to (batch, *out_rest)] [-> Softmax at opset 11]."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], axis=1),
        helper.make_node("Gemm", ["xf", "W", "b"], ["z"], transB=1),
    ]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b")]
    out, out_shape = "z", [K]
    if old_softmax:
        # Opset 11 Softmax flattens to 2-D around axis 1: the class axis must be the last.
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1))
        out = "p"
    if out_rest is not None:
        inits.append(numpy_helper.from_array(np.array([-1, *out_rest], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [out, "shape"], ["y"]))
        out, out_shape = "y", list(out_rest)
    graph = helper.make_graph(
        nodes, "export",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, _dims(batch, sample_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, _dims(batch, out_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11 if old_softmax else 13)])
    return model


def _check_scan(tmp_path, model, sample_shape, w, b, n=3):
    path = B.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, size=(n, *sample_shape)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = fimaudit.scan(path, tmp_path / "d.npz", method="exact", budget=200, seed=0, bounds=False)
    assert res.model["input"]["sample_shape"] == list(sample_shape)
    assert res.model["output"]["classes"] == K
    for s, xi in zip(res.samples, x):
        ref = B.lam_max(B.linear_reference(w, b, xi))
        assert s.lambda_max == pytest.approx(ref, rel=2e-3)
    return res


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(3)
    return rng.standard_normal((K, 12)), rng.standard_normal(K) * 0.3


@pytest.mark.parametrize("batch", list(BATCHES), ids=list(BATCHES))
def test_every_batch_axis_encoding(tmp_path, weights, batch):
    w, b = weights
    res = _check_scan(tmp_path, export(w, b, BATCHES[batch], (12,)), (12,), w, b)
    assert res.run.samples_scanned == 3


@pytest.mark.parametrize("shape", list(SAMPLE_SHAPES), ids=list(SAMPLE_SHAPES))
@pytest.mark.parametrize("batch", ["dim_param", "fixed_1"])
def test_every_input_rank(tmp_path, weights, shape, batch):
    w, b = weights
    _check_scan(tmp_path, export(w, b, BATCHES[batch], SAMPLE_SHAPES[shape]), SAMPLE_SHAPES[shape], w, b)


@pytest.mark.parametrize("out", list(OUTPUTS), ids=list(OUTPUTS))
@pytest.mark.parametrize("batch", ["dim_param", "dim_value_-1", "fixed_1"])
def test_every_output_shape(tmp_path, weights, out, batch):
    w, b = weights
    _check_scan(tmp_path, export(w, b, BATCHES[batch], (12,), OUTPUTS[out]), (12,), w, b)


@pytest.mark.parametrize("out", ["NK", "NK11"])
def test_softmax_before_opset_13(tmp_path, weights, out):
    w, b = weights
    res = _check_scan(tmp_path, export(w, b, "N", (12,), OUTPUTS[out], old_softmax=True), (12,), w, b)
    assert res.model["output"]["kind"] == "probabilities"


def test_a_batch_that_only_runs_one_row_at_a_time(tmp_path, weights):
    """A declared dynamic batch whose graph hard-codes batch 1 (Reshape to [1, -1]): queries go one by one."""
    w, b = weights
    model = export(w, b, "N", (3, 2, 2))
    flat = model.graph.node[0]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "one_row"))
    flat.CopyFrom(helper.make_node("Reshape", ["x", "one_row"], ["xf"]))
    res = _check_scan(tmp_path, model, (3, 2, 2), w, b)
    assert any("one row at a time" in n for n in res.notes)


def test_gated_model_is_declared_unbounded_before_any_norm(tmp_path):
    """Squeeze-and-excitation at 224 x 224: 'no global bound' from the structure, no convolution norm computed."""
    from fimaudit.graph import compute_bounds

    w = B.mobile_weights(np.random.default_rng(0))
    gated = compute_bounds(str(B.save(B.mobile_model(w, spatial=(224, 224)), tmp_path / "g.onnx")))
    assert gated.fim_upper is None and "gating" in gated.reason
    convs = [o for o in gated.ops if o.op == "Conv"]
    assert convs and all(o.lipschitz is None and "not computed" in o.how for o in convs)
    plain = compute_bounds(str(B.save(B.mobile_model(w, gated=False, spatial=(32, 32)), tmp_path / "p.onnx")))
    assert plain.fim_upper is not None and all(o.lipschitz is not None for o in plain.ops if o.op == "Conv")


def test_large_inputs_get_smaller_cpu_batches(tmp_path):
    """At most 32 MiB of input rows per onnxruntime run on the CPU: 55 rows of 3x224x224 float32."""
    from fimaudit.model import load_model

    rng = np.random.default_rng(1)
    big = B.save(B.linear_model(rng.standard_normal((2, 3 * 224 * 224)) * 1e-3, np.zeros(2), sample_shape=(3, 224, 224)),
                 tmp_path / "big.onnx")
    assert load_model(big, device="cpu").max_batch == (32 * 1024 * 1024) // (3 * 224 * 224 * 4) == 55
    small = B.save(B.linear_model(rng.standard_normal((2, 12)), np.zeros(2)), tmp_path / "small.onnx")
    assert load_model(small, device="cpu").max_batch == 256
    assert load_model(small, device="cpu", max_batch=7).max_batch == 7
