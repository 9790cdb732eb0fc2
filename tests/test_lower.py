"""Lower bounds on lambda_max never exceed it: FD lower estimates (margin measured along v) and certified exact bounds.

ReLU MLPs, a sigmoid MLP and a conv net whose Jacobians are known in float64 (tests/nets.py);
240 samples per mode.
"""

from __future__ import annotations

import numpy as np
import pytest

import fimaudit
from fimaudit.estimators.exact_source import exact_from_source
from fimaudit.estimators.lower import certified_from_jacobian, fd_lower_estimate
from fimaudit.model import LogProbOracle, load_model

from . import nets as N

SAMPLES = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lower")
    rng = np.random.default_rng(5)
    nets = {
        "relu_a": N.relu_mlp(rng, 24, (32, 32), 5),
        "relu_b": N.relu_mlp(rng, 40, (64,), 10, gain=2.0),
        "sigmoid": N.sigmoid_mlp(rng, 30, 24, 4),
        "conv": N.conv_net(rng),
    }
    out = {}
    for name, net in nets.items():
        x = rng.uniform(0, 1, size=(SAMPLES, *net.in_shape)).astype(np.float32)
        np.savez(tmp / f"{name}.npz", x=x)
        refs = np.array([net.fisher_reference(xi)[0] for xi in x])
        out[name] = (net, net.onnx(tmp / f"{name}.onnx"), tmp / f"{name}.npz", x, refs)
    return out


@pytest.mark.parametrize("method,budget", [("exact", 2000), ("sketch", 60), ("auto", 2000), ("auto", 70)])
def test_fd_lower_estimate_never_exceeds_exact_lambda(corpus, method, budget):
    checked = violations = 0
    for name, (net, path, data, _, refs) in corpus.items():
        res = fimaudit.scan(path, data, method=method, budget=budget, seed=1, bounds=False, gradients="fd")
        for s, r in zip(res.samples, refs):
            assert s.lower_bound is None and s.lower_check["kind"] == "lower_estimate"
            assert "not certified" in s.lower_check["detail"]
            checked += 1
            violations += int(s.lower_estimate > r)
    assert checked >= 200 and violations == 0, (method, violations)


def test_fd_margin_is_needed_along_v(corpus):
    """The raw central-difference v^T F v along the exact direction does exceed lambda_max on ReLU nets."""
    net, path, data, x, refs = corpus["relu_a"]
    res = fimaudit.scan(path, data, method="exact", seed=1, bounds=False, gradients="fd")
    raw = np.array([s.lower_check["quadratic_form"] for s in res.samples])
    assert np.sum(raw > refs) >= 5  # what the margin measured along v removes


def test_fd_lower_estimate_is_tight_on_a_smooth_model(corpus):
    net, path, data, x, refs = corpus["sigmoid"]
    oracle = LogProbOracle(load_model(path), "logits")
    for xi, r in zip(x[:10], refs[:10]):
        _, s, p = net.fisher_reference(xi)
        g = np.sqrt(p)[:, None] * (s @ s.T) * np.sqrt(p)[None, :]
        u = np.linalg.eigh(g)[1][:, -1]
        v = s.T @ (np.sqrt(p) * u)
        est = fd_lower_estimate(oracle, xi, np.log(p), v / np.linalg.norm(v), 1e-2)
        assert est.value <= r and est.value >= 0.98 * r and est.queries == 4


def test_certified_bound_from_a_float32_exact_source(corpus):
    """Graph mode: S from a float32 Jacobian, the bound from float64 Rayleigh quotients; never above, >= 0.99."""
    checked = 0
    for name, (net, path, data, x, refs) in corpus.items():
        oracle = LogProbOracle(load_model(path), "logits")
        for i, (xi, r) in enumerate(zip(x, refs)):
            src = N.NumpySource(net, xi, np.float32)
            res = exact_from_source(src, src.p, np.random.default_rng(i), oracle=oracle, x0=xi, h=1e-3)
            low = res.lower
            assert low.certified and low.value <= r, (name, i, low.value, r)
            assert low.value >= 0.99 * r
            assert res.path == "rows" and low.fd_check is not None
            checked += 1
    assert checked >= 200


def test_certified_bound_subtracts_a_real_rounding_margin():
    """At the float32 rounding level, the margin is what keeps the value below lambda_max."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 300))
    p = np.array([0.4, 0.3, 0.2, 0.1])
    lam = float(np.linalg.eigvalsh(np.sqrt(p)[:, None] * (s @ s.T) * np.sqrt(p)[None, :])[-1])
    u = np.linalg.eigh(np.sqrt(p)[:, None] * (s @ s.T) * np.sqrt(p)[None, :])[1][:, -1]
    v = s.T @ (np.sqrt(p) * u)
    s32 = s.astype(np.float32).astype(np.float64)  # what a float32 graph would return
    cert = certified_from_jacobian(s32, p, v)
    assert cert.value <= lam and cert.value >= lam * (1 - 1e-3)
    assert cert.quadratic_form > cert.value


def test_graph_mode_bound_is_certified_and_never_above(corpus):
    """--gradients graph: the certified bound from the exact S, the FD re-measurement only reported beside it."""
    checked = 0
    for name, (net, path, data, _, refs) in corpus.items():
        res = fimaudit.scan(path, data, gradients="graph", seed=1, bounds=False)
        assert res.run.gradients_used["source"] == "graph"
        for s, r in zip(res.samples, refs):
            assert s.lower_estimate is None and s.lower_check["kind"] == "certified"
            assert s.lower_bound <= r and s.lower_bound >= 0.99 * r, (name, s.lower_bound, r)
            assert s.lambda_max == pytest.approx(r, rel=1e-4)
            assert s.lower_check["fd_check"] is not None and s.exact["path"] == "rows"
            checked += 1
    assert checked >= 200
