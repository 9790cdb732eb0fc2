"""The one batched onnxruntime runner (fimaudit/model/runner.py) behind the model's queries and the gradient graphs."""

import numpy as np
import onnx
import pytest

from fimaudit.autodiff import GraphEngine, build_graphs
from fimaudit.errors import ModelOutputError
from fimaudit.model import load_model
from fimaudit.model import session as session_mod
from fimaudit.model.probe import open_probe, with_outputs
from fimaudit.model.runner import BatchRunner, RunCounts

from .builders import linear_model, save


class FakeSession:
    """Returns its input's row sums (as a (rows, 1) output) and records every feed it is given."""

    def __init__(self, fail_above: int | None = None):
        self.feeds = []
        self.fail_above = fail_above

    def run(self, outputs, feed):
        self.feeds.append(feed)
        x = feed["x"]
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : batch too large")
        return [x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True) + (feed["u"] if "u" in feed else 0)]


def test_batches_pad_a_fixed_batch_and_count_real_rows_only():
    x = np.arange(7 * 3, dtype=np.float64).reshape(7, 3)
    u = np.ones((7, 1))
    sess = FakeSession()
    r = BatchRunner(sess, np.float32, batch=99, fixed_batch=3, what="the test graph")
    (out,) = r.run(["y"], {"x": x, "u": u})
    np.testing.assert_array_equal(out, x.sum(axis=1, keepdims=True) + 1)
    assert out.dtype == np.float64
    # 3 passes of exactly 3 rows (the last padded with copies of its first row), fed contiguous float32
    assert [f["x"].shape[0] for f in sess.feeds] == [3, 3, 3] and [f["u"].shape[0] for f in sess.feeds] == [3, 3, 3]
    assert all(f["x"].dtype == np.float32 and f["x"].flags["C_CONTIGUOUS"] for f in sess.feeds)
    np.testing.assert_array_equal(sess.feeds[-1]["x"], np.repeat(x[6:7], 3, axis=0).astype(np.float32))
    assert (r.counts.rows, r.counts.passes) == (7, 3)


def test_a_symbolic_batch_splits_rows_and_shares_counts():
    counts = RunCounts()
    a = BatchRunner(FakeSession(), np.float64, batch=4, counts=counts)
    b = BatchRunner(FakeSession(), np.float64, batch=10, counts=counts)
    a.run(["y"], {"x": np.zeros((9, 2))})
    b.run(["y"], {"x": np.zeros((9, 2))})
    assert [f["x"].shape[0] for f in a.session.feeds] == [4, 4, 1]
    assert (counts.rows, counts.passes) == (18, 4)


def test_a_failure_is_one_line_unless_retry_lowers_the_batch():
    sess = FakeSession(fail_above=2)
    r = BatchRunner(sess, np.float32, batch=5, what="the test graph")
    with pytest.raises(ModelOutputError, match=r"^onnxruntime failed while running the test graph: batch too large$"):
        r.run(["y"], {"x": np.zeros((5, 1))})

    def lower(feed, real):
        r.batch = 2
        return True

    (out,) = r.run(["y"], {"x": np.arange(5.0)[:, None]}, retry=lower)
    np.testing.assert_array_equal(out[:, 0], np.arange(5.0))
    assert r.counts.rows == 5  # the failed pass counts nothing


def _linear(tmp_path, batch="N"):
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    return w, b, save(linear_model(w, b, batch=batch), tmp_path / "lin.onnx")


def test_the_model_and_its_gradient_graphs_run_through_the_runner(tmp_path, monkeypatch):
    """Both open their sessions with the shared options (no spinning threads) and count rows in a RunCounts."""
    seen = []
    real = session_mod._options

    def spy(*a, **k):
        so = real(*a, **k)
        seen.append(so.get_session_config_entry("session.intra_op.allow_spinning"))
        return so

    monkeypatch.setattr(session_mod, "_options", spy)
    w, b, path = _linear(tmp_path, batch=2)
    model = load_model(path, device="cpu")
    x = np.random.default_rng(0).standard_normal((5, 4))
    z = model.run(x)
    np.testing.assert_allclose(z, x @ w.T + b, rtol=1e-5, atol=1e-5)
    assert isinstance(model.runner, BatchRunner) and model.max_batch == 2
    assert (model.queries, model.passes) == (5, 3)  # 2 + 2 + 1 real rows, the last pass padded
    graphs = build_graphs(model.proto, input_name=model.info.input.name, output_name=model.info.output.name,
                          sample_shape=model.sample_shape, fixed_batch=2, kind="logits")
    engine = GraphEngine(graphs, device="cpu")
    lp = engine.logp(x)
    np.testing.assert_allclose(lp, z - np.log(np.exp(z).sum(axis=1, keepdims=True)), rtol=1e-5, atol=1e-5)
    assert engine.rows == engine.counts.rows == 5 and engine.passes == (1 if graphs.batch is None else 3)
    assert seen and set(seen) == {"0"}


def test_probe_outputs_only_the_named_tensors_with_types(tmp_path):
    _, _, path = _linear(tmp_path)
    m = onnx.load(str(path))
    probe = with_outputs(m, ["z", "xf"], only=True, types={"z": np.float32})
    assert [o.name for o in probe.graph.output] == ["z", "xf"]
    assert probe.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not probe.graph.output[1].HasField("type")
    assert [o.name for o in m.graph.output] == ["z"]  # the model itself is untouched (copy)
    _, sess = open_probe(m, ["xf"])
    z, xf = sess.run(["z", "xf"], {"x": np.ones((2, 4), np.float32)})
    assert xf.shape == (2, 4)
