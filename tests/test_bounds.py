"""Closed-form bounds: per-operation constants against dense computations, soundness on the zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import fimaudit
from fimaudit.cli import app
from fimaudit.graph import bounds_from_proto, compute_bounds
from fimaudit.graph.linear_ops import avgpool_operator_norm, conv_operator_norm, pool_overlap_factor

from . import builders as B

ZOO = Path(__file__).resolve().parent.parent / "sample_models"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())["models"]


def dense_conv(kernel, in_shape, stride=1, pads=(0, 0, 0, 0), dilation=1, groups=1) -> np.ndarray:
    """Explicit matrix of an ONNX Conv by applying it to every basis image (loops, float64)."""
    c, h, w = in_shape
    o, cg, kh, kw = kernel.shape
    oh = (h + pads[0] + pads[2] - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + pads[1] + pads[3] - dilation * (kw - 1) - 1) // stride + 1
    cols = []
    for idx in range(c * h * w):
        e = np.zeros(c * h * w)
        e[idx] = 1
        x = np.pad(e.reshape(c, h, w), ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        out = np.zeros((o, oh, ow))
        for oc in range(o):
            g = oc // (o // groups)
            for i in range(oh):
                for j in range(ow):
                    patch = x[g * cg:(g + 1) * cg, i * stride: i * stride + dilation * (kh - 1) + 1: dilation,
                              j * stride: j * stride + dilation * (kw - 1) + 1: dilation]
                    out[oc, i, j] = np.sum(patch * kernel[oc])
        cols.append(out.ravel())
    return np.array(cols).T


@pytest.mark.parametrize(
    "cfg",
    [
        dict(stride=1, pads=(1, 1, 1, 1), dilation=1, groups=1),
        dict(stride=2, pads=(1, 1, 1, 1), dilation=1, groups=1),
        dict(stride=2, pads=(0, 1, 1, 0), dilation=1, groups=1),
        dict(stride=1, pads=(2, 2, 2, 2), dilation=2, groups=1),
        dict(stride=1, pads=(1, 1, 1, 1), dilation=1, groups=2),
        dict(stride=3, pads=(0, 0, 0, 0), dilation=1, groups=1),
    ],
    ids=["s1p1", "s2p1", "s2-asym-pad", "dilated", "groups2", "s3-valid"],
)
def test_conv_norm_equals_svd_of_explicit_matrix(cfg):
    rng = np.random.default_rng(0)
    groups = cfg["groups"]
    kernel = rng.standard_normal((4, 4 // groups, 3, 3))
    in_shape = (4, 7, 8)
    dense = dense_conv(kernel, in_shape, cfg["stride"], cfg["pads"], cfg["dilation"], groups)
    exact = np.linalg.norm(dense, 2)
    ours, fft = conv_operator_norm(kernel, in_shape, (cfg["stride"],) * 2, cfg["pads"], (cfg["dilation"],) * 2, groups)
    assert ours == pytest.approx(exact, rel=1e-5)
    assert ours >= exact
    assert fft >= exact * (1 - 1e-9)  # the FFT value is an upper bound as applied


def test_fft_is_exact_for_circular_friendly_stride1():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 3, 3))
    ours, fft = conv_operator_norm(kernel, (3, 16, 16), (1, 1), (1, 1, 1, 1))
    assert fft >= ours and fft <= ours * 1.2  # zero padding vs the circular embedding: close on large images


def test_pooling_constants():
    assert pool_overlap_factor((8, 8), (2, 2), (2, 2), (0, 0, 0, 0)) == 1
    assert pool_overlap_factor((9, 9), (3, 3), (2, 2), (0, 0, 0, 0)) == 4
    # average pooling as an explicit matrix
    dense = dense_conv(np.ones((1, 1, 2, 2)) / 4, (1, 6, 6), stride=2)
    assert avgpool_operator_norm(1, (6, 6), (2, 2), (2, 2), (0, 0, 0, 0), True) == pytest.approx(
        np.linalg.norm(dense, 2), rel=1e-6)
    assert np.linalg.norm(dense, 2) == pytest.approx(0.5)  # 1/k for non-overlapping k x k


def _model(nodes, in_shape, out_shape, inits, in_name="x", out_name="z"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", *out_shape])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _bound(m, in_shape):
    return bounds_from_proto(m, "x", m.graph.output[0].name, tuple(in_shape))


def test_two_layer_closed_form_and_activations():
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((16, 10))
    w2 = rng.standard_normal((4, 16))
    for act, slope in [("Relu", 1.0), ("Tanh", 1.0), ("Sigmoid", 0.25)]:
        m = _model(
            [helper.make_node("Gemm", ["x", "W1"], ["a"], transB=1), helper.make_node(act, ["a"], ["t"]),
             helper.make_node("Gemm", ["t", "W2"], ["z"], transB=1)],
            (10,), (4,), [numpy_helper.from_array(w1.astype(np.float32), "W1"),
                          numpy_helper.from_array(w2.astype(np.float32), "W2")])
        res = _bound(m, (10,))
        ref = np.linalg.norm(w1.astype(np.float32), 2) * slope * np.linalg.norm(w2.astype(np.float32), 2)
        assert res.lipschitz == pytest.approx(ref, rel=1e-5)
        assert res.fim_upper == pytest.approx(ref**2 / 2, rel=1e-5)
        assert res.family == "mlp"


def test_residual_and_concat_composition():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    s = float(np.linalg.norm(w, 2))
    res_m = _model([helper.make_node("MatMul", ["x", "W"], ["f"]), helper.make_node("Add", ["x", "f"], ["z"])],
                   (6,), (6,), [numpy_helper.from_array(w, "W")])
    assert _bound(res_m, (6,)).lipschitz == pytest.approx(1 + s, rel=1e-6)
    cat_m = _model([helper.make_node("MatMul", ["x", "W"], ["f"]), helper.make_node("Concat", ["x", "f"], ["z"], axis=1)],
                   (6,), (12,), [numpy_helper.from_array(w, "W")])
    assert _bound(cat_m, (6,)).lipschitz == pytest.approx(np.sqrt(1 + s * s), rel=1e-6)


def test_final_softmax_is_excluded():
    w = np.eye(3, dtype=np.float32) * 2
    m = _model([helper.make_node("MatMul", ["x", "W"], ["l"]), helper.make_node("Softmax", ["l"], ["z"], axis=1)],
               (3,), (3,), [numpy_helper.from_array(w, "W")])
    res = _bound(m, (3,))
    assert res.lipschitz == pytest.approx(2.0, rel=1e-6) and res.excluded_output_op == "Softmax"


def test_unknown_op_gives_null_with_reason():
    m = _model([helper.make_node("Sin", ["x"], ["z"])], (3,), (3,), [])
    res = _bound(m, (3,))
    assert res.lipschitz is None and res.fim_upper is None and "Sin" in res.reason


def test_mobilenet_style_block_gets_bound_or_reason():
    """HardSwish activations and squeeze-and-excitation gating: a reason, never an error."""
    wts = B.mobile_weights(np.random.default_rng(4))
    res = _bound(B.mobile_model(wts), (3, 16, 16))
    assert res.lipschitz is None and "gating" in res.reason
    assert any(b.kind == "squeeze-excitation" for b in res.blocks)
    # without the gate (plain HardSwish network) the bound is finite and HardSwish counts 1.5
    res2 = _bound(B.mobile_model(wts, gated=False), (3, 16, 16))
    assert res2.lipschitz is not None
    k1, w = wts["K1"], wts["W"]
    conv = conv_operator_norm(k1.astype(np.float64), (3, 16, 16), (2, 2), (1, 1, 1, 1))[0]
    assert res2.lipschitz == pytest.approx(conv * 1.5 / 8 * np.linalg.norm(w, 2), rel=1e-4)


def test_gelu_erf_form_and_layernorm_decomposed():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    c = lambda v, n: numpy_helper.from_array(np.array(v, dtype=np.float32), n)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("Div", ["a", "s2"], ["ad"]),
        helper.make_node("Erf", ["ad"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["a", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["gelu"]),
        helper.make_node("ReduceMean", ["gelu"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["gelu", "mu"], ["cen"]),
        helper.make_node("Pow", ["cen", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["cen", "sd"], ["z"]),
    ]
    inits = [numpy_helper.from_array(w, "W"), c(np.sqrt(2), "s2"), c(1.0, "one"), c(0.5, "half"), c(2.0, "two"),
             c(1e-4, "eps")]
    res = _bound(_model(nodes, (4,), (4,), inits), (4,))
    assert res.lipschitz is not None
    sw = float(np.linalg.norm(w, 2))
    # GELU slope 1.1289; centring (sum rule: 1 + 1/2) ; normalisation 1/sqrt(eps) = 100
    assert res.lipschitz == pytest.approx(sw * 1.12891 * 1.5 * 100, rel=1e-3)
    assert any(b.kind == "layernorm" for b in res.blocks)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_zoo_family_recognised_and_bound_sound(entry):
    res = compute_bounds(ZOO / entry["file"])
    assert res.family == entry["family"]
    if entry["family"] == "transformer":
        assert res.fim_upper is None and "attention" in res.reason
        return
    assert res.fim_upper is not None and np.isfinite(res.fim_upper)
    pp = entry["preprocess"]
    n = 20
    scan = fimaudit.scan(ZOO / entry["file"], ZOO / entry["data"], samples=n, method="exact", budget=2 * 9216 + 4,
                         scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],), bounds=False)
    worst = max(s.lambda_max for s in scan.samples)
    assert worst <= res.fim_upper, (worst, res.fim_upper)


def test_bounds_cli_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["bounds", str(ZOO / "resnet_small.onnx"), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"lipschitz", "fim_upper", "reason", "blocks"}
    assert all(set(b) >= {"name", "kind", "lipschitz"} for b in data["blocks"])
    assert any(b["kind"].startswith("resnet-residual") for b in data["blocks"])
    bad = runner.invoke(app, ["bounds", str(tmp_path / "none.onnx")])
    assert bad.exit_code == 2 and bad.stderr.startswith("fimaudit: error:")


def test_large_convolutions_fall_back_to_sound_cheaper_bounds(monkeypatch):
    """Above the size limits the FFT bound, then the reshaped-kernel bound, replace the exact norm."""
    from fimaudit.graph import linear_ops as L

    rng = np.random.default_rng(7)
    kernel = rng.standard_normal((4, 2, 3, 3))
    for stride in (1, 2, 3):
        exact = np.linalg.norm(dense_conv(kernel, (2, 7, 7), stride, (1, 1, 1, 1)), 2)
        assert L.conv_reshaped_bound(kernel, (stride, stride)) >= exact
        monkeypatch.setattr(L, "MAX_SPARSE_ENTRIES", 0)
        fft_only, _ = L.conv_operator_norm(kernel, (2, 7, 7), (stride, stride), (1, 1, 1, 1))
        assert "FFT" in L.conv_norm_method(kernel, (2, 7, 7), (stride, stride), (1, 1, 1, 1))
        monkeypatch.setattr(L, "MAX_FFT_FLOPS", 0)
        cheap, _ = L.conv_operator_norm(kernel, (2, 7, 7), (stride, stride), (1, 1, 1, 1))
        assert exact <= fft_only <= cheap + 1e-12  # the FFT path returns min(FFT, reshaped)
        monkeypatch.undo()


@pytest.mark.parametrize(
    "kernel_shape,in_shape,stride,pads,dilation,groups",
    [
        ((4, 2, 3, 3), (2, 7, 7), 1, (1, 1, 1, 1), 1, 1),
        ((4, 2, 3, 3), (2, 8, 6), 2, (1, 1, 1, 1), 1, 1),
        ((3, 2, 3, 2), (2, 7, 8), 2, (0, 2, 1, 0), 1, 1),  # asymmetric padding
        ((4, 1, 3, 3), (4, 6, 6), 1, (1, 1, 1, 1), 1, 4),  # depthwise
        ((6, 2, 3, 3), (4, 7, 7), 2, (2, 2, 2, 2), 2, 2),  # groups, dilation
        ((3, 2, 1, 1), (2, 5, 5), 2, (1, 1, 1, 1), 1, 1),  # padding wider than the kernel
        ((2, 3, 5, 5), (3, 9, 9), 2, (2, 2, 2, 2), 1, 1),
    ],
)
def test_fft_gram_bound_is_sound_against_explicit_svd(kernel_shape, in_shape, stride, pads, dilation, groups):
    """The circulant/Gram bound on the minimal grid is >= the exact norm of the convolution as applied."""
    from fimaudit.graph import linear_ops as L

    rng = np.random.default_rng(sum(kernel_shape) + stride)
    for _ in range(3):
        kernel = rng.standard_normal(kernel_shape)
        exact = np.linalg.norm(dense_conv(kernel, in_shape, stride, pads, dilation, groups), 2)
        bound = L.conv_norm_fft(kernel, in_shape[1:], (stride, stride), pads, (dilation, dilation), groups)
        assert bound >= exact, (bound, exact)
        assert bound <= 3.0 * exact  # a bound, but not a vacuous one


def test_gram_bound_is_certified_not_an_estimate():
    """Gram iteration is >= sigma_max for every block, and within rank^(1/2^(t+1)) of it.

    Blocks with nearly equal top singular values are where an estimate (power iteration, a
    Rayleigh quotient) lands below sigma_max: this test fails for one.
    """
    from fimaudit.graph import linear_ops as L

    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((40, 12, 12)) + 1j * rng.standard_normal((40, 12, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((40, 9, 9)) + 1j * rng.standard_normal((40, 9, 9)))
    sig = np.sort(rng.uniform(0.5, 2.0, (40, 9)), axis=1)[:, ::-1]
    sig[:, 1] = sig[:, 0] * (1 - 1e-4)  # near-degenerate top pair
    mats = u[:, :, :9] @ (sig[:, :, None] * v)
    exact = np.linalg.svd(mats, compute_uv=False)[:, 0]
    for iters in (1, 3, L.GRAM_ITERS):
        bound = L.gram_spectral_bound(mats, iters)
        assert np.all(bound >= exact), iters
        assert np.all(bound <= exact * 9 ** (1 / 2 ** (iters + 1)) * (1 + 1e-9))
    real = rng.standard_normal((20, 50))
    assert L.gram_spectral_bound(real) >= np.linalg.norm(real, 2)
    assert L.gram_spectral_bound(np.zeros((3, 4, 5))).tolist() == [0.0] * 3
