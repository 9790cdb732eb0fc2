"""Input layout (NCHW/NHWC) from the graph or the shape, and per-channel --mean/--std on either layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fimaudit.data import Preprocess
from fimaudit.errors import ConfigError
from fimaudit.model.layout import detect_layout
from fimaudit.scan import ScanConfig, scan

from . import builders as B


def conv_net(sample_shape, front=(), conv_input="x", channels=3, rng=None) -> onnx.ModelProto:
    """``front`` nodes (ending in ``conv_input``) -> Conv(3x3) -> GlobalAveragePool -> Gemm to 4 classes."""
    rng = rng or np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((5, channels, 3, 3)) * 0.5).astype(np.float32), "K"),
        numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 1, 1, 3), "m_nhwc"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = list(front) + [
        helper.make_node("Conv", [conv_input, "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("GlobalAveragePool", ["t"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["z"], transB=1),
    ]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", B.OPSET)])
    model.ir_version = B.IR
    onnx.checker.check_model(model)
    return model


def tf_style_front():
    """What a TensorFlow export does: normalise in NHWC, then Transpose to NCHW for the Conv."""
    return [
        helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xc", "m_nhwc"], ["xs"]),
        helper.make_node("Div", ["xs", "two"], ["xd"]),
        helper.make_node("Identity", ["xd"], ["xi"]),
        helper.make_node("Transpose", ["xi"], ["xt"], perm=[0, 3, 1, 2]),
    ]


def layout_of(model: onnx.ModelProto, shape, requested="auto"):
    return detect_layout(model, "x", tuple(shape), requested)


def test_nchw_conv_read_from_graph():
    lay, notes = layout_of(conv_net((3, 8, 8)), (3, 8, 8))
    assert (lay.name, lay.channel_axis, lay.channels, lay.height, lay.width, lay.source) == ("nchw", 0, 3, 8, 8, "graph")
    assert "directly" in lay.evidence and not notes


def test_nhwc_through_transpose_and_normalisation_beats_the_shape():
    # (3, 8, 3) gives the shape heuristic no clue (it would say NCHW): only the graph can tell.
    model = conv_net((3, 8, 3), tf_style_front(), conv_input="xt")
    lay, _ = layout_of(model, (3, 8, 3))
    assert (lay.name, lay.channel_axis, lay.channels, lay.height, lay.width, lay.source) == ("nhwc", 2, 3, 3, 8, "graph")
    assert "Transpose perm [0, 3, 1, 2]" in lay.evidence and "Sub" in lay.evidence


def test_gating_is_not_normalisation_so_the_shape_decides():
    # x * x is not an affine normalisation: the trace stops and the shape heuristic answers.
    front = [helper.make_node("Mul", ["x", "x"], ["xx"]), helper.make_node("Transpose", ["xx"], ["xt"], perm=[0, 3, 1, 2])]
    lay, _ = layout_of(conv_net((8, 8, 3), front, conv_input="xt"), (8, 8, 3))
    assert lay.source == "shape" and lay.name == "nhwc" and "no Conv reads the input" in lay.evidence


@pytest.mark.parametrize(
    "shape, name, source_clue",
    [((28, 28, 1), "nhwc", "last"), ((1, 28, 28), "nchw", "first"), ((32, 32, 3), "nhwc", "last"),
     ((3, 32, 32), "nchw", "first"), ((5, 5, 5), "nchw", "no clue")],
)
def test_no_conv_models_fall_back_to_the_shape(shape, name, source_clue):
    w = np.random.default_rng(1).standard_normal((3, int(np.prod(shape))))
    lay, notes = layout_of(B.linear_model(w, np.zeros(3), sample_shape=shape), shape)
    assert lay.name == name and lay.source == "shape" and source_clue in lay.evidence
    assert bool(notes) == (source_clue == "no clue")  # an unclear layout is said in the report


def test_layout_option_overrides_with_a_note_and_is_refused_without_image_axes():
    lay, notes = layout_of(conv_net((3, 8, 8)), (3, 8, 8), "nhwc")
    assert lay.name == "nhwc" and lay.source == "option" and "overrides the graph" in notes[0]
    w = np.ones((2, 784))
    with pytest.raises(ConfigError, match="--layout nchw applies to image inputs"):
        layout_of(B.linear_model(w, np.zeros(2)), (784,), "nchw")
    with pytest.raises(ConfigError, match="--layout must be"):
        layout_of(conv_net((3, 8, 8)), (3, 8, 8), "chw")


@pytest.mark.parametrize("shape, side", [((784,), 28), ((784, 1), 28), ((10,), None), ((3072,), None), ((2, 8),
                                                                                                          None)])
def test_inputs_without_image_axes(shape, side):
    w = np.ones((2, int(np.prod(shape))))
    lay, _ = layout_of(B.linear_model(w, np.zeros(2), sample_shape=shape), shape)
    assert lay.name == "flat" and lay.channel_axis is None and lay.height == side


def test_preprocess_per_channel_on_either_axis_against_a_hand_computation():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, size=(2, 4, 5, 3))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    got = Preprocess(1 / 255, mean, std, channel_axis=2).apply(x, (4, 5, 3))
    want = np.empty_like(x)
    for c in range(3):
        want[..., c] = (x[..., c] / 255 - mean[c]) / std[c]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    xc = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(Preprocess(1 / 255, mean, std, 0).apply(xc, (3, 4, 5)), want.transpose(0, 3, 1, 2))
    diag = Preprocess(1 / 255, mean, std, 2).jacobian_diag((4, 5, 3))
    np.testing.assert_allclose(diag[1, 2], [1 / 255 / s for s in std])
    with pytest.raises(ConfigError, match="channel axis"):
        Preprocess(1.0, mean, std, 0).check((4, 5, 3))


def _scan_points(model_path, data_path, **kw) -> list[float]:
    res = scan(ScanConfig(model=str(model_path), data=str(data_path), method="exact", budget=10**6, bounds=False,
                          lower_bound=False, **kw))
    return [s.lambda_max for s in res.samples]


def test_per_channel_mean_std_on_an_nhwc_model_equals_normalising_by_hand(tmp_path):
    model = B.save(conv_net((6, 5, 3), tf_style_front(), conv_input="xt"), tmp_path / "nhwc.onnx")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(3, 6, 5, 3))
    mean, std = (0.2, 0.5, 0.7), (0.3, 1.5, 0.6)
    np.save(tmp_path / "raw.npy", x)
    np.save(tmp_path / "normalised.npy", (x - np.array(mean)) / np.array(std))  # channels last, by hand
    by_option = _scan_points(model, tmp_path / "raw.npy", mean=mean, std=std)
    by_hand = _scan_points(model, tmp_path / "normalised.npy")
    np.testing.assert_allclose(by_option, by_hand, rtol=1e-6)


def test_attack_inputs_take_per_channel_mean_std_on_nhwc(tmp_path):
    """attack/metrics/clever: the oracle sees (x*scale - mean)/std with channels last."""
    from fimaudit.evidence import AttackConfig, load_attack_inputs

    model = B.save(conv_net((6, 5, 3), tf_style_front(), conv_input="xt"), tmp_path / "nhwc.onnx")
    x = np.random.default_rng(4).integers(0, 256, size=(3, 6, 5, 3)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]))
    mean, std = (0.2, 0.5, 0.7), (0.3, 1.5, 0.6)
    m, oracle, _, xa, _, _, _ = load_attack_inputs(AttackConfig(model=str(model), data=str(tmp_path / "d.npz"), scale=1 / 255,
                                                          mean=mean, std=std, device="cpu"))
    u = (x / 255 - np.array(mean)) / np.array(std)
    z = m.run(u.astype(np.float32)).astype(np.float64)
    want = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    np.testing.assert_allclose(oracle.logp(xa), want, atol=1e-5)


# ----------------------------------------------------------------- the third-party corpus
def _corpus() -> list[Path]:
    root = os.environ.get("FIMAUDIT_REALMODELS")
    if not root:
        pytest.skip("FIMAUDIT_REALMODELS is not set (the third-party model corpus is not on this machine)")
    models = sorted(Path(root).glob("*.onnx"))
    assert models, f"FIMAUDIT_REALMODELS={root} holds no .onnx files"
    return models


def _sample_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def test_corpus_image_models_get_square_images_with_few_channels():
    """Every rank-4 corpus model: the detected channel axis leaves a square image of 1 or 3 channels."""
    nhwc = 0
    for path in _corpus():
        proto = onnx.load(str(path))
        shape = _sample_shape(proto)
        lay, _ = detect_layout(proto, proto.graph.input[0].name, shape)
        if len(shape) != 3:
            assert lay.name == "flat", path.name
            continue
        assert lay.channels in (1, 3) and lay.height == lay.width, (path.name, lay)
        if any(n.op_type == "Conv" for n in proto.graph.node):
            assert lay.source == "graph", (path.name, lay)
        nhwc += lay.name == "nhwc"
    assert nhwc >= 1, "the corpus should hold a channels-last model"


def test_corpus_nhwc_models_take_per_channel_mean_std(tmp_path):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    done = 0
    for path in _corpus():
        proto = onnx.load(str(path))
        shape = _sample_shape(proto)
        if len(shape) != 3 or shape[-1] != 3 or shape[0] == 3:
            continue  # channels last only
        with np.load(path.with_suffix(".npz")) as z:
            x = z["x"][:2].astype(np.float64)
        np.save(tmp_path / "raw.npy", x * np.array(std) + np.array(mean))  # undo the normalisation by hand
        np.save(tmp_path / "x.npy", x)
        res = [scan(ScanConfig(model=str(path), data=str(tmp_path / f), method="sketch", budget=40, bounds=False, **kw))
               for f, kw in (("raw.npy", {"mean": mean, "std": std}), ("x.npy", {}))]
        assert [s.predicted for s in res[0].samples] == [s.predicted for s in res[1].samples]
        np.testing.assert_allclose([s.lambda_max for s in res[0].samples], [s.lambda_max for s in res[1].samples],
                                   rtol=1e-3)
        assert res[0].config["preprocess"]["layout"]["name"] == "nhwc"
        done += 1
    assert done >= 1


def test_whitebox_gradients_take_per_channel_mean_std_on_nhwc(tmp_path):
    """Exact attack-space VJPs on a channels-last model with per-channel std equal central differences."""
    from fimaudit.evidence import AttackConfig, gradient_oracle, load_attack_inputs

    model = B.save(conv_net((6, 5, 3), tf_style_front(), conv_input="xt"), tmp_path / "nhwc.onnx")
    x = np.random.default_rng(5).integers(0, 256, size=(2, 6, 5, 3)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    m, oracle, kind, xa, _, pre, _ = load_attack_inputs(AttackConfig(
        model=str(model), data=str(tmp_path / "d.npz"), scale=1 / 255, mean=(0.2, 0.5, 0.7), std=(0.3, 1.5, 0.6),
        device="cpu"))
    wb, record = gradient_oracle(m, oracle, kind, pre, xa, "graph", 0)
    assert wb is not None, record
    u = np.random.default_rng(6).standard_normal((len(xa), oracle.logp(xa[:1]).shape[1]))
    got = wb.vjp_at(xa, u)
    h = 1e-3
    want = np.zeros_like(xa)
    for idx in np.ndindex(xa.shape[1:]):
        e = np.zeros_like(xa)
        e[(slice(None),) + idx] = h
        d = (oracle.logp(xa + e) - oracle.logp(xa - e)) / (2 * h)
        want[(slice(None),) + idx] = np.sum(d * u, axis=1)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3 * np.abs(want).max())
