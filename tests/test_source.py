"""The Jacobian-source protocol and the scan's stages, against closed forms and against the whole scan."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import fimaudit
from fimaudit.estimators import FiniteDifferences, JacobianSource, exact, sketch
from fimaudit.estimators.power import power_fresh
from fimaudit.model import LogProbOracle, load_model
from fimaudit.results import ScanResult

from . import builders as B

scan_mod = importlib.import_module("fimaudit.scan")  # the module; fimaudit.scan is the function


class ClosedFormSource:
    """An exact source from a known log-softmax Jacobian (what a gradient graph provides)."""

    def __init__(self, s: np.ndarray, logp0: np.ndarray) -> None:
        self._s = s
        self.x0 = np.zeros(s.shape[1])
        self.logp0 = logp0
        self.p = np.exp(logp0)
        self.sample_shape = (s.shape[1],)
        self.d = s.shape[1]
        self.n_classes = s.shape[0]
        self.rel_error = 0.0
        self.queries = 0
        self.passes = 0

    def logp(self, x):
        raise NotImplementedError

    def jvp(self, v):
        v = np.atleast_2d(v)
        self.queries += v.shape[0]
        self.passes += 1
        return v @ self._s.T

    def vjp(self, u):
        u = np.atleast_2d(u)
        self.queries += u.shape[0]
        self.passes += 1
        return u @ self._s

    def vjp_cost(self, m):
        return m

    def jacobian(self, coords):
        return self._s[:, coords].T


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    rng = np.random.default_rng(21)
    k, d = 5, 30
    w = rng.standard_normal((k, d)) * 0.5
    w[1] *= 3.0
    b = rng.standard_normal(k) * 0.3
    path = B.save(B.linear_model(w, b), tmp_path_factory.mktemp("src") / "lin.onnx")
    x = rng.uniform(0, 1, size=d)
    oracle = LogProbOracle(load_model(path), "logits")
    w64 = w.astype(np.float32).astype(np.float64)
    p = B.softmax(w64 @ x.astype(np.float32).astype(np.float64) + b.astype(np.float32).astype(np.float64))
    s = w64 - np.outer(np.ones(k), p @ w64)  # d log softmax / dx = (I - 1 p^T) W
    return oracle, x, p, s


def test_finite_differences_jvp_matches_the_closed_form_jacobian(linear):
    oracle, x, p, s = linear
    src = FiniteDifferences(oracle, x, 1e-2)
    assert isinstance(src, JacobianSource)
    assert src.queries == 1 and src.n_classes == 5 and src.d == 30  # the centre query
    np.testing.assert_allclose(src.p, p, rtol=1e-5)
    v = np.random.default_rng(0).standard_normal((7, 30))
    np.testing.assert_allclose(src.jvp(v), v @ s.T, rtol=1e-3, atol=3e-3)  # float32 round-off / h
    assert src.queries == 1 + 14 and src.passes == 2
    np.testing.assert_allclose(src.jacobian(np.arange(30)), s.T, rtol=1e-3, atol=1e-4)


def test_zeroth_order_vjp_is_unbiased_and_costs_what_it_says(linear):
    oracle, x, p, s = linear
    u = np.random.default_rng(1).standard_normal((2, 5))
    src = FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p), vjp_probes=200, rng=np.random.default_rng(2))
    assert src.queries == 0  # logp0 given: no centre query
    runs = [src.vjp(u) for _ in range(50)]
    assert src.queries == 50 * src.vjp_cost(2) == 50 * 400
    mean = np.mean(runs, axis=0)
    ref = u @ s
    # Each run has relative error ~ sqrt(d/m) = 0.39; the mean of 50 ~ 0.055.
    assert np.linalg.norm(mean - ref) / np.linalg.norm(ref) < 0.15
    assert np.linalg.norm(runs[0] - ref) / np.linalg.norm(ref) > 0.15  # a single run is noisy


def test_estimators_are_functions_of_any_source(linear):
    """With an exact source, exact, the sketch at k = d and power iteration give lambda_max exactly."""
    _, _, p, s = linear
    lam = B.lam_max(B.fisher_from_jacobian(s + np.outer(np.ones(5), p @ s), p))  # J and S give the same F
    src = ClosedFormSource(s, np.log(p))
    assert exact(src).lambda_max == pytest.approx(lam, rel=1e-10)
    assert sketch(src, 30, np.random.default_rng(0), probes="orthogonal").lambda_max == pytest.approx(lam, rel=1e-5)
    est = power_fresh(src, 400, np.random.default_rng(0))
    assert est.lambda_max == pytest.approx(lam, rel=1e-6)
    assert est.queries <= 400


@pytest.fixture(scope="module")
def mlp_scan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    rng = np.random.default_rng(22)
    params = B.random_mlp(rng, d=24, hidden=12, k=4, gain=2.0)
    model = B.save(B.mlp_model(*params), tmp / "m.onnx")
    x = rng.uniform(-1, 1, size=(5, 24)).astype(np.float32)
    y = rng.integers(0, 4, size=5)
    np.savez(tmp / "d.npz", x=x, y=y)
    return model, tmp / "d.npz"


@pytest.mark.parametrize("method", ["sketch", "exact", "power-fresh"])
def test_one_sample_alone_equals_the_same_sample_in_the_scan(mlp_scan, method):
    model, data = mlp_scan
    cfg = scan_mod.ScanConfig(model=str(model), data=str(data), method=method, budget=120, seed=3, bounds=False,
                              gradients="fd")
    whole = scan_mod.scan(cfg)
    loaded = scan_mod.load(cfg)
    points = scan_mod.prepare_points(cfg, loaded)
    oracle, calib = scan_mod.calibrate(cfg, loaded.model, points)
    assert not scan_mod.needs_learnt_basis(cfg, calib)
    alone = scan_mod.estimate_sample(oracle, cfg, calib, 3, points.x[3], int(points.labels[3]))
    assert alone.result.to_dict() == whole.samples[3].to_dict()
    assert whole.run.method_used == method and whole.run.samples_scanned == 5


def test_learnt_subspace_needs_its_basis(mlp_scan):
    model, data = mlp_scan
    cfg = scan_mod.ScanConfig(model=str(model), data=str(data), method="deflated", subspace="learnt", budget=120)
    loaded = scan_mod.load(cfg)
    points = scan_mod.prepare_points(cfg, loaded)
    oracle, calib = scan_mod.calibrate(cfg, loaded.model, points)
    assert scan_mod.needs_learnt_basis(cfg, calib)
    with pytest.raises(ValueError):
        scan_mod.estimate_sample(oracle, cfg, calib, 0, points.x[0])
    out = scan_mod.estimate_sample(oracle, cfg, calib, 0, points.x[0], learnt_basis=np.zeros((0, 24)))
    assert out.result.method.startswith("deflated-learnt") and out.result.queries <= 120


def test_a_1_0_report_reads_with_its_run_outputs_from_config(mlp_scan):
    model, data = mlp_scan
    res = fimaudit.scan(model, data, method="sketch", budget=60, bounds=False)
    old = res.to_dict()
    old["schema_version"] = "1.0"
    old["config"].update(old.pop("run"))
    back = ScanResult.from_dict(old)
    assert back.run == res.run
    assert back.config == res.to_dict()["config"]


@pytest.mark.parametrize("probes", ["orthogonal", "gaussian"])
@pytest.mark.parametrize("r", [0, 4])
def test_streamed_sketch_equals_the_unstreamed_one(linear, probes, r):
    """Blocks of 7 probes (directions rebuilt from seeds) = all probes held at once, same seed."""
    from fimaudit.estimators.probes import ProbeStream
    from fimaudit.estimators.subspace import deflated_sketch, dct_lowfreq_basis

    oracle, x, p, s = linear
    src = ClosedFormSource(s, np.log(p))
    q = dct_lowfreq_basis((30,), r)
    k = 45  # more than d: the orthogonal stream repeats with new signs
    got = [deflated_sketch(src, q, k, np.random.default_rng(4), probes=probes, block=b) for b in (7, k)]
    # The unstreamed reference, float64: all k probes, projected, Y = S W', Ritz direction W'^T c.
    rng = np.random.default_rng(4)
    units, scales = ProbeStream(30, k, probes, rng).block(0, k)
    w = units.astype(np.float64) * scales[:, None]
    w = w - (w @ q.T) @ q
    y = s @ w.T
    g = np.diag(np.sqrt(p)) @ (s @ q.T @ q @ s.T + y @ y.T / k) @ np.diag(np.sqrt(p))
    lam = np.linalg.eigvalsh(g)[-1]
    for est in got:
        assert est.lambda_max == pytest.approx(lam, rel=1e-5)
        assert est.trace == pytest.approx(np.trace(g), rel=1e-5)
    a, b = got
    assert a.lambda_max_ci == pytest.approx(b.lambda_max_ci, rel=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)
    if r == 0:
        wn = w / np.linalg.norm(w, axis=1, keepdims=True)
        sn = s @ wn.T
        u = np.linalg.eigh(np.diag(np.sqrt(p)) @ sn @ sn.T @ np.diag(np.sqrt(p)))[1][:, -1]
        v = wn.T @ (sn.T @ (np.sqrt(p) * u))
        np.testing.assert_allclose(np.abs(a.direction @ (v / np.linalg.norm(v))), 1.0, atol=1e-5)


def test_the_preprocessing_rule_flags_chance_accuracy_and_collapsed_predictions():
    from fimaudit.sanity import preprocessing_check

    y = np.arange(20) % 10
    bad = preprocessing_check((y + 1) % 10, y, 10)  # every prediction wrong
    assert not bad.sane and bad.accuracy == 0.0 and "--mean/--std" in bad.note and "--preset" in bad.note
    edge = preprocessing_check(np.where(np.arange(20) < 3, y, (y + 1) % 10), y, 10)  # 15% = 1.5x chance
    assert not edge.sane
    assert preprocessing_check(np.where(np.arange(20) < 4, y, (y + 1) % 10), y, 10).sane  # 20%: above it
    assert preprocessing_check(np.array([1, 2, 3]), np.array([0, 0, 0]), 10).sane  # too few labelled samples
    collapsed = preprocessing_check(np.full(20, 3), None, 10)  # unlabelled: every prediction class 3
    assert not collapsed.sane and "class 3 for 100%" in collapsed.note
    assert preprocessing_check(np.full(20, 3), np.full(20, 3), 10).sane  # the labels are one class too
    assert preprocessing_check(np.arange(20) % 10, None, 10).sane


def test_scan_says_so_when_labels_look_shuffled(mlp_scan, tmp_path):
    model, data = mlp_scan
    with np.load(data) as d:
        x = np.repeat(d["x"], 4, axis=0)
    pred = np.argmax(LogProbOracle(load_model(model), "logits").logp(x.astype(np.float64)), axis=1)
    np.savez(tmp_path / "wrong.npz", x=x, y=(pred + 1) % 4)  # every label wrong: accuracy 0
    res = fimaudit.scan(model, tmp_path / "wrong.npz", method="sketch", budget=30, bounds=False)
    assert res.summary.accuracy == 0.0
    assert any("preprocessing looks wrong" in n and "--scale" in n for n in res.notes)
    np.savez(tmp_path / "right.npz", x=x, y=pred)
    res = fimaudit.scan(model, tmp_path / "right.npz", method="sketch", budget=30, bounds=False)
    assert res.summary.accuracy == 1.0 and not any("near chance" in n for n in res.notes)
