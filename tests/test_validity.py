"""Per-sample validity: FIM-predicted radius against the minimal adversarial distance, on two-class linear models in closed form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fimaudit.errors import ConfigError
from fimaudit.evidence import ModelSpec, model_validity
from fimaudit.metrics.validity import predicted_radius, spearman_ci, validity

from . import nets as N


@pytest.fixture(scope="module")
def linear2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validity")
    rng = np.random.default_rng(31)
    d = 16
    net = N.Net((d,), [("dense", rng.standard_normal((2, d)), rng.standard_normal(2) * 0.1)])
    x = rng.uniform(0, 1, size=(12, d)).astype(np.float32)
    w = net.layers[0][1].astype(np.float32).astype(np.float64)
    b = net.layers[0][2].astype(np.float32).astype(np.float64)
    z = x.astype(np.float64) @ w.T + b
    y = np.argmax(z, axis=1)
    np.savez(tmp / "d.npz", x=x, y=y)
    m = np.abs(z[:, 0] - z[:, 1])
    dw = np.linalg.norm(w[0] - w[1])
    p0 = 1 / (1 + np.exp(-(z[:, 0] - z[:, 1])))
    lam = p0 * (1 - p0) * dw**2  # F = p0 p1 (w0 - w1)(w0 - w1)^T
    return ModelSpec(str(net.onnx(tmp / "lin2.onnx")), str(tmp / "d.npz"), name="lin2", input_range=(-20.0, 20.0)), \
        lam, m / dw, tmp


def test_model_validity_matches_the_closed_form(linear2):
    spec, lam, dist, _ = linear2
    v = model_validity(spec, samples=12, seed=0, kl_star=0.1, steps=30, search=14)
    assert v["lambda_gradients"] == "graph" and v["distance_gradients"] == "graph"
    got_lam = np.array([s["lambda_max"] for s in v["samples"]])
    got_r = np.array([s["predicted_radius"] for s in v["samples"]])
    got_d = np.array([s["min_distance"] for s in v["samples"]])
    np.testing.assert_allclose(got_lam, lam, rtol=1e-4)
    np.testing.assert_allclose(got_r, np.sqrt(0.2 / lam), rtol=1e-4)
    assert np.all(got_d >= dist * (1 - 1e-4)) and np.all(got_d <= dist * 1.01)
    # r grows with the margin exactly as the distance does: a perfect rank agreement
    assert v["spearman"]["value"] == pytest.approx(1.0) and v["spearman"]["ci"] == pytest.approx([1.0, 1.0])
    assert v["used"] == 12 and v["misclassified"] == 0 and v["not_broken"] == 0


def test_validity_excludes_misclassified_and_unbroken_samples():
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.1, 2, 10)
    dist = 1 / np.sqrt(lam) * rng.uniform(0.9, 1.1, 10)
    dist[0], dist[1] = 0.0, np.inf
    v = validity(lam, dist, rng, kl_star=0.5)
    assert v["used"] == 8 and v["misclassified"] == 1 and v["not_broken"] == 1 and v["spearman"]["n"] == 8
    assert predicted_radius(np.array([0.0]))[0] == np.inf
    anti = spearman_ci(np.arange(10.0), -np.arange(10.0), rng)
    assert anti["value"] == pytest.approx(-1.0) and anti["ci"] == pytest.approx([-1.0, -1.0])
    noise = spearman_ci(rng.standard_normal(200), rng.standard_normal(200), rng)
    assert noise["ci"][0] < 0 < noise["ci"][1]
    with pytest.raises(ConfigError):
        model_validity(ModelSpec("m.onnx", "d.npz"), kl_star=-1.0)


def test_compare_reports_validity(linear2):
    from .test_bad_input import run_cli

    spec, _, _, tmp = linear2
    out = tmp / "c.json"
    res = run_cli("compare", spec.path, spec.path, "--data", spec.data, "--samples", "6", "--no-metrics", "--validity",
                  "--input-range", "-20,20", "--budget", "200", "--clever-samples", "1", "--json", str(out))
    assert res.exit_code == 0, res.stderr
    rep = json.loads(out.read_text())
    assert len(rep["validity"]) == 2 and rep["rows"][0]["validity_spearman"] == pytest.approx(1.0)
    assert "Per-sample validity" in res.stdout
