"""Exact Fisher spectrum from an exact Jacobian source: K VJPs (rows) and Lanczos (many classes) against closed forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fimaudit.estimators.exact_source import exact_from_source

from . import builders as B
from . import nets as N


def _linear(rng, k, d):
    return N.Net((d,), [("dense", rng.standard_normal((k, d)) * 0.5, rng.standard_normal(k))])


@pytest.mark.parametrize("k,path", [(10, "rows"), (100, "lanczos")])
def test_exact_source_matches_linear_softmax_closed_form(k, path):
    """J = W exactly: G and its spectrum in closed form."""
    rng = np.random.default_rng(3)
    d = 48
    net = _linear(rng, k, d)
    w, b = net.layers[0][1], net.layers[0][2]
    for i in range(5):
        x = rng.uniform(0, 1, d).astype(np.float32)
        f = B.linear_reference(w, b, x)
        lam, tr = B.lam_max(f), float(np.trace(f))
        src = N.NumpySource(net, x, np.float32)
        res = exact_from_source(src, src.p, np.random.default_rng(i))
        assert res.path == path
        assert res.estimate.lambda_max == pytest.approx(lam, rel=1e-4)
        assert res.lower.certified and res.lower.value <= lam and res.lower.value >= 0.999 * lam
        top = np.linalg.eigvalsh(f)[::-1][: len(res.estimate.top_eigenvalues)]
        np.testing.assert_allclose(res.estimate.top_eigenvalues, top, rtol=1e-4, atol=1e-6 * lam)
        if path == "rows":
            assert res.estimate.trace == pytest.approx(tr, rel=1e-4) and res.products == k
        else:  # Hutchinson trace from 32 Rademacher probes: within 5 standard errors
            assert abs(res.estimate.trace - tr) <= 5 * res.estimate.trace_se
            assert res.products < 4 * k  # tens of products, not K VJPs plus K JVPs
            assert res.tolerance == pytest.approx(1e-8)
        v = res.estimate.direction
        assert float(v @ f @ v) == pytest.approx(lam, rel=1e-4)  # the top direction really is the top one


def test_exact_source_against_float64_dense_reference_on_a_smooth_model():
    rng = np.random.default_rng(4)
    net = N.sigmoid_mlp(rng, 60, 40, 8)
    errs = []
    for i in range(10):
        x = rng.uniform(0, 1, 60)
        lam, s, p = net.fisher_reference(x)
        f = s.T @ np.diag(p) @ s  # dense d x d reference in float64
        dense = float(np.linalg.eigvalsh(f)[-1])
        assert dense == pytest.approx(lam, rel=1e-10)
        src = N.NumpySource(net, x, np.float32)
        res = exact_from_source(src, src.p, np.random.default_rng(i))
        errs.append(abs(res.estimate.lambda_max - dense) / dense)
        assert res.estimate.trace == pytest.approx(np.trace(f), rel=1e-3)
    assert max(errs) <= 1e-3, errs


@pytest.mark.parametrize("k", [10, 80])
def test_scan_with_the_gradient_graph_matches_the_closed_form(tmp_path, k):
    import fimaudit

    rng = np.random.default_rng(5)
    d = 48
    net = _linear(rng, k, d)
    w, b = net.layers[0][1], net.layers[0][2]
    x = rng.uniform(0, 1, size=(4, d)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = fimaudit.scan(net.onnx(tmp_path / "lin.onnx"), tmp_path / "d.npz", gradients="graph", cross_check=True,
                        bounds=False, budget=2000)
    assert res.run.method_used == ("exact-graph" if k < 64 else "lanczos-graph")
    cross = res.run.cross_check_result
    assert cross["samples"] == 4 and cross["median_relative_error"] < 1e-3  # black-box exact on a linear model
    for s, xi in zip(res.samples, x):
        f = B.linear_reference(w, b, xi)
        assert s.lambda_max == pytest.approx(B.lam_max(f), rel=1e-4)
        assert s.lower_bound <= B.lam_max(f) and s.exact["path"] == ("rows" if k < 64 else "lanczos")
        assert s.trace_method == ("exact" if k < 64 else "hutchinson-rademacher (VJP probes)")
        ratio = s.exact["cross_check"]["relative_error"]
        assert ratio == pytest.approx(abs(s.exact["cross_check"]["lambda_max"] - s.lambda_max) / s.lambda_max)


def test_graph_scan_report_round_trips_and_renders(tmp_path):
    import json

    import jsonschema

    import fimaudit
    from fimaudit.report.html import render_html
    from fimaudit.report.markdown import render_markdown
    from fimaudit.report.terminal import render_text
    from fimaudit.results import ScanResult

    rng = np.random.default_rng(6)
    net = _linear(rng, 4, 12)
    np.savez(tmp_path / "d.npz", x=rng.uniform(0, 1, size=(3, 12)).astype(np.float32))
    res = fimaudit.scan(net.onnx(tmp_path / "l.onnx"), tmp_path / "d.npz", gradients="auto", cross_check=True)
    d = res.to_dict()
    jsonschema.validate(json.loads(json.dumps(d)), json.loads(
        (Path(fimaudit.__file__).parent / "report" / "scan.schema.json").read_text()))
    back = ScanResult.from_dict(d)
    assert back.to_dict() == d
    for text in (render_text(back), render_markdown(back), render_html(back)):
        assert "gradient graph (self-check passed" in text and "certified lower bound" in text
        assert "black-box exact against it" in text


def test_method_exact_with_the_graph_needs_no_2d_plus_1_budget(tmp_path):
    """With the graph exact costs K - 1 VJPs: --method exact is refused only for finite differences."""
    import fimaudit
    from fimaudit.errors import ConfigError

    rng = np.random.default_rng(7)
    k, d = 5, 300
    net = _linear(rng, k, d)
    w, b = net.layers[0][1], net.layers[0][2]
    x = rng.uniform(0, 1, size=(2, d)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    model = net.onnx(tmp_path / "lin.onnx")
    res = fimaudit.scan(model, tmp_path / "d.npz", gradients="graph", method="exact", budget=100, bounds=False)
    assert res.run.method_used == "exact-graph"
    for s, xi in zip(res.samples, x):
        assert s.lambda_max == pytest.approx(B.lam_max(B.linear_reference(w, b, xi)), rel=1e-4)
        assert s.queries <= 100
    assert res.summary.runtime_fraction is not None and res.summary.runtime_fraction > 0
    with pytest.raises(ConfigError, match="2d\\+1"):
        fimaudit.scan(model, tmp_path / "d.npz", gradients="fd", method="exact", budget=100, bounds=False)
