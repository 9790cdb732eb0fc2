"""The metric suite against closed forms and direct numpy computations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from fimaudit.cli import app
from fimaudit.metrics.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from fimaudit.metrics.performance import performance
from fimaudit.metrics.weights import fold_batchnorm, layers, norm_measures, path_norm, sharpness_sigma

ZOO = Path(__file__).resolve().parent.parent / "sample_models"


def relu_mlp(w1, b1, w2, b2) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w1.shape[1]])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", w2.shape[0]])],
        [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture()
def mlp():
    rng = np.random.default_rng(31)
    w1, b1 = rng.standard_normal((5, 4)), rng.standard_normal(5)
    w2, b2 = rng.standard_normal((3, 5)), rng.standard_normal(3)
    f = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    return relu_mlp(w1, b1, w2, b2), (f(w1), f(b1), f(w2), f(b2))


def test_norms_of_two_layer_model(mlp):
    model, (w1, b1, w2, b2) = mlp
    gamma = 0.7
    m = norm_measures(model, gamma)
    s1, s2 = np.linalg.norm(w1, 2), np.linalg.norm(w2, 2)
    f1, f2 = np.linalg.norm(w1), np.linalg.norm(w2)
    assert m["spectral_product"] == pytest.approx(s1 * s2, rel=1e-9)
    assert m["log_spectral_sum"] == pytest.approx(np.log(s1) + np.log(s2), rel=1e-9)
    assert m["spectral_over_margin"] == pytest.approx((s1 * s2) ** 2 / gamma**2, rel=1e-9)
    assert m["frobenius_product"] == pytest.approx(f1 * f2, rel=1e-9)
    assert m["frobenius_over_margin"] == pytest.approx((f1 * f2) ** 2 / gamma**2, rel=1e-9)
    assert m["fro_spec_ratio_sum"] == pytest.approx(f1**2 / s1**2 + f2**2 / s2**2, rel=1e-9)
    nuc = np.linalg.norm(w1, "nuc") * np.linalg.norm(w2, "nuc")
    assert m["nuclear_product"] == pytest.approx(nuc, rel=1e-9)


def test_path_norm_equals_sum_over_paths(mlp):
    model, (w1, b1, w2, b2) = mlp
    total = 0.0
    for i, j, k in itertools.product(range(4), range(5), range(3)):  # input -> hidden -> output paths
        total += w1[j, i] ** 2 * w2[k, j] ** 2
    for j, k in itertools.product(range(5), range(3)):  # paths starting at a hidden bias
        total += b1[j] ** 2 * w2[k, j] ** 2
    total += np.sum(b2**2)  # output biases
    assert path_norm(model, "x", "z", (4,)) == pytest.approx(total, rel=1e-5)


def test_batchnorm_folding_preserves_outputs():
    rng = np.random.default_rng(32)
    k = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-5)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [numpy_helper.from_array(a, n) for a, n in ((k, "K"), (gamma, "g"), (beta, "b"), (mean, "m"), (var, "v"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folded = fold_batchnorm(m)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert any(n.op_type == "BatchNormalization" for n in m.graph.node)  # the input is not mutated
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    run = lambda mm: ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(folded), run(m), rtol=1e-4, atol=1e-5)
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    np.testing.assert_allclose(layers(folded)[0].matrix, (k * scale[:, None, None, None]).reshape(3, -1), rtol=1e-5)


def test_performance_against_numpy():
    rng = np.random.default_rng(33)
    z = rng.standard_normal((200, 4)) * 2
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = rng.integers(0, 4, 200)
    m = performance(logp, y)
    p = np.exp(logp)
    rows = np.arange(200)
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(p[rows, y])))
    assert m["entropy_mean"] == pytest.approx(np.mean(-np.sum(p * np.log(p), axis=1)))
    margins = np.array([z[i, y[i]] - max(z[i, j] for j in range(4) if j != y[i]) for i in range(200)])
    assert m["margin_p10"] == pytest.approx(np.percentile(margins, 10))
    assert 0 <= m["ece"] <= 1 and 0 <= m["f1_macro"] <= 1


def test_sharpness_reproducible_and_monotone(mlp):
    model, (w1, b1, w2, b2) = mlp
    rng = np.random.default_rng(34)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = np.argmax(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, axis=1)
    a = sharpness_sigma(model, "x", "z", x, y, np.random.default_rng(1), target=0.1, tol=0.01)
    b = sharpness_sigma(model, "x", "z", x, y, np.random.default_rng(1), target=0.1, tol=0.01)
    assert a == b
    small = sharpness_sigma(model, "x", "z", x, y, np.random.default_rng(1), target=0.05, tol=0.01, draws=5)
    large = sharpness_sigma(model, "x", "z", x, y, np.random.default_rng(1), target=0.3, tol=0.01, draws=5)
    assert small["sigma"] < a["sigma"] < large["sigma"]
    assert abs(a["accuracy_drop"] - 0.1) <= 0.01 + 1e-12


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_keep_shape_dtype_range(name):
    rng = np.random.default_rng(35)
    x = rng.uniform(0, 1, size=(3, 1, 12, 12))
    np.testing.assert_array_equal(corrupt(x, name, 0, rng), x)
    prev = None
    for sev in SEVERITIES:
        out = corrupt(x, name, sev, np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == np.float64
        assert out.min() >= 0 and out.max() <= 1
        change = float(np.mean(np.abs(out - x)))
        assert change > 0
        if prev is not None and name not in ("pixelate", "impulse_noise", "shot_noise"):
            assert change >= prev * 0.8  # broadly more damage at higher severity
        prev = change


def test_metrics_cli_json(tmp_path):
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["metrics", str(ZOO / "mlp_small.onnx"), "--data", str(ZOO / "fmnist_test_1000_28.npz"),
                                 "--scale", "1/255", "--samples", "200", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(out.read_text())
    for key in ("accuracy", "log_loss", "entropy_mean", "margin_p10", "spectral_product", "spectral_over_margin",
                "frobenius_product", "path_norm", "sharpness_sigma"):
        assert key in rep["metrics"], key
    assert set(rep["corruptions"]) == set(CORRUPTIONS)
    assert all(set(v) == {"0", "1", "2", "3", "4", "5"} for v in rep["corruptions"].values())


def test_spatial_corruptions_only_for_image_shaped_samples():
    from fimaudit.metrics.corruptions import CORRUPTIONS, SPATIAL, applicable

    assert applicable((1, 28, 28)) == tuple(CORRUPTIONS)
    for shape in ((784, 1), (784,), (32, 32, 3)):  # a vector, a rank-3 vector, channels last
        assert not set(applicable(shape)) & set(SPATIAL)


def test_path_norm_on_a_fixed_batch_model(mlp):
    """Found by bench/fuzz.py: a fixed batch axis (here 7) refused the single row path_norm fed (internal error)."""
    model, _ = mlp
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in list(fixed.graph.input) + list(fixed.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 7
    assert path_norm(fixed, "x", "z", (4,)) == pytest.approx(path_norm(model, "x", "z", (4,)), rel=1e-6)


def test_metrics_on_a_model_that_runs_one_row_only(mlp, tmp_path):
    """Found by bench/fuzz.py: a Flatten(axis=0) before the first Gemm runs one row at a time; the weight
    measures' own sessions met onnxruntime's refusal as an internal error. Now: a result or one line."""
    from typer.testing import CliRunner

    from fimaudit.cli import app

    from .test_bad_input import assert_one_line_error

    model, _ = mlp
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node[0].input[0] = "xf"
    m.graph.node.insert(0, helper.make_node("Flatten", ["x"], ["xf"], axis=0))
    onnx.save(m, tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", x=rng.uniform(0, 1, (6, 4)).astype(np.float32), y=rng.integers(0, 3, 6))
    res = CliRunner().invoke(app, ["metrics", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                                   "--samples", "6", "--no-corruptions", "-q"])
    if res.exit_code != 0:
        assert "internal error" not in assert_one_line_error(res)
