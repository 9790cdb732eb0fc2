"""graph/parse.py catches only the onnx/onnxruntime errors it expects; a bug in the probe propagates."""

import numpy as np
import pytest

import importlib

parse = importlib.import_module("fimaudit.graph.parse")
from fimaudit.graph.parse import Node

from . import builders as B


@pytest.fixture(scope="module")
def mlp():
    m = B.mlp_model(*B.random_mlp(np.random.default_rng(0), d=6, hidden=4, k=3), sample_shape=(6,))
    m.ir_version = 8  # what B.save writes: an IR onnxruntime reads
    return m


def test_runtime_shapes_of_a_model_onnxruntime_runs(mlp):
    name = mlp.graph.node[-1].output[0]
    assert parse._runtime_shapes(mlp, mlp.graph.input[0].name, (6,), [name]) == {name: (1, 3)}


def test_onnxruntime_refusals_give_no_shapes_but_bugs_propagate(mlp, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def refuses(*a, **k):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : no kernel")

    monkeypatch.setattr(parse, "probe_session", refuses)
    assert parse._runtime_shapes(mlp, mlp.graph.input[0].name, (6,), ["z"]) == {}

    def buggy(*a, **k):
        raise AttributeError("a bug in fimaudit")

    monkeypatch.setattr(parse, "probe_session", buggy)
    with pytest.raises(AttributeError):
        parse._runtime_shapes(mlp, mlp.graph.input[0].name, (6,), ["z"])


def test_a_malformed_constant_stays_unknown_and_a_bug_propagates(monkeypatch):
    node = Node(0, "r", "Reshape", "", ("a", "s"), ("b",), {})
    consts = {"a": np.zeros((2, 3)), "s": np.array([4, 4])}  # 6 values cannot take shape (4, 4)
    assert parse._fold_constant(node, consts, {}) == [None]
    monkeypatch.setattr(parse.np, "concatenate", lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    cat = Node(1, "c", "Concat", "", ("a", "a"), ("c",), {"axis": 0})
    with pytest.raises(KeyError):
        parse._fold_constant(cat, {"a": np.zeros(2)}, {})
