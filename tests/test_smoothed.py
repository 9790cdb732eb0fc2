"""Fisher information of the Gaussian-smoothed model (fimaudit.estimators.smoothed) against closed forms."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import norm

import fimaudit
from fimaudit.cli import app
from fimaudit.errors import ConfigError
from fimaudit.estimators import smoothed as sm
from fimaudit.estimators.smoothed import default_sigma, smoothed_fisher
from fimaudit.model import LogProbOracle, load_model
from fimaudit.report.html import render_html
from fimaudit.report.markdown import render_markdown
from fimaudit.report.terminal import render_text
from fimaudit.results import ScanResult

from .builders import _model, linear_model, save


def step_model(w: np.ndarray, b: float):
    """p(x) = [step(w.x + b), 1 - step(w.x + b)] exactly: Sign, then p0 = (1 + s)/2, p1 = (1 - s)/2 (probabilities)."""
    d = w.size
    nodes = [helper.make_node("Flatten", ["x"], ["xf"], axis=1),
             helper.make_node("Gemm", ["xf", "W", "b"], ["u"], transB=1),
             helper.make_node("Sign", ["u"], ["s"]),
             helper.make_node("Mul", ["s", "half"], ["hs"]),
             helper.make_node("Add", ["half", "hs"], ["p0"]),
             helper.make_node("Sub", ["half", "hs"], ["p1"]),
             helper.make_node("Concat", ["p0", "p1"], ["p"], axis=1)]
    inits = [numpy_helper.from_array(w.reshape(1, -1).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([b], np.float32), "b"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                  [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])], inits)


D_STEP, SIGMA_STEP, B_STEP = 400, 0.2, 0.1
T_POINTS = (0.0, 0.4, -0.8, 1.2, -1.6)


@pytest.fixture(scope="module")
def step_case(tmp_path_factory):
    rng = np.random.default_rng(11)
    w = rng.standard_normal(D_STEP).astype(np.float32).astype(np.float64)
    path = save(step_model(w, B_STEP), tmp_path_factory.mktemp("smooth") / "step.onnx")
    model = load_model(path)
    return w, LogProbOracle(model, "probabilities"), rng


def step_point(w: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """A float32-exact point with (w.x + b) / (sigma |w|) = t (to float32 rounding, far below the tolerances)."""
    x = rng.standard_normal(w.size)
    x = x + (t * SIGMA_STEP * np.linalg.norm(w) - (w @ x + B_STEP)) * w / (w @ w)
    return x.astype(np.float32).astype(np.float64)


def step_truth(w: np.ndarray, x: np.ndarray) -> float:
    """lambda_max(F_sigma) = tr(F_sigma) = phi(t)^2 / (sigma^2 Phi(t)(1 - Phi(t))), t = (w.x + b)/(sigma |w|).

    p_sigma = [Phi(t), 1 - Phi(t)], J_sigma = phi(t)/(sigma |w|) [1, -1]^T w^T, so F_sigma =
    phi^2/(sigma^2 |w|^2) (1/Phi + 1/(1 - Phi)) w w^T: rank one, its eigenvalue is its trace.
    """
    t = (w @ x + np.float32(B_STEP)) / (SIGMA_STEP * np.linalg.norm(w))
    big_phi, phi = norm.cdf(t), norm.pdf(t)
    return float(phi ** 2 / (SIGMA_STEP ** 2 * big_phi * (1 - big_phi)))


def step_errors(w, oracle, rng, seeds=range(3), budget=2000):
    """Relative errors of lambda_max and trace, CI hits and the queries, over the points and seeds."""
    errs, tr_errs, hits, queries = [], [], [], []
    points = [step_point(w, t, rng) for t in T_POINTS]
    for i, x in enumerate(points):
        truth = step_truth(w, x)
        for seed in seeds:
            est = smoothed_fisher(oracle, x, SIGMA_STEP, budget, (seed, i))
            errs.append(est.lambda_max / truth - 1)
            tr_errs.append(est.trace / truth - 1)
            hits.append(est.lambda_max_ci[0] <= truth <= est.lambda_max_ci[1])
            queries.append(est.queries)
    return np.array(errs), np.array(tr_errs), np.array(hits), np.array(queries)


def test_step_model_closed_form_at_default_budget(step_case):
    w, oracle, _ = step_case
    errs, tr_errs, _, queries = step_errors(w, oracle, np.random.default_rng(3), seeds=range(6))
    assert np.all(queries == 2000)  # 1000 antithetic pairs: never above the budget
    # measured: median |error| 5.4% over 150 estimates (30 seeds x 5 points), mean -0.6% +- 0.6% (unbiased)
    assert np.median(np.abs(errs)) <= 0.08, errs
    assert abs(np.mean(errs)) <= 0.05, errs
    assert np.allclose(errs, tr_errs, atol=1e-9)  # rank one: lambda_max = trace


@pytest.mark.parametrize("jac", [False, True], ids=["gram-path", "jacobian-path"])
def test_step_model_catches_the_plug_in_bias(step_case, monkeypatch, jac):
    """Without the U-statistic's bias correction (the within-block terms kept, divided by m^2) the check fails."""
    w, oracle, _ = step_case
    monkeypatch.setattr(sm, "_use_jac", lambda k, m: jac)
    monkeypatch.setattr(sm, "_PLUG_IN", True)  # the plug-in J_hat J_hat^T: E|e|^2 = d not removed
    errs, _, hits, _ = step_errors(w, oracle, np.random.default_rng(3), seeds=range(2))
    assert np.median(errs) > 0.2 and hits.mean() < 0.5  # biased up by about d/m = 40%


def test_step_model_catches_the_independent_pair_count(step_case, monkeypatch):
    """Orthogonal blocks with the independent draws' denominator m (m - 1): pairs within a block have
    e_j . e_k = 0 (mean 0, not J J^T), so that denominator is biased down by the within-block share
    (m^2 - sum_B |B|^2) / (m (m - 1)) = 0.90 at m = 1000 in blocks of 100. The right denominator is unbiased."""
    w, oracle, _ = step_case
    good, _, _, _ = step_errors(w, oracle, np.random.default_rng(3), seeds=range(4))
    monkeypatch.setattr(sm, "_pairs", lambda sizes: int(np.sum(sizes)) * (int(np.sum(sizes)) - 1))
    bad, _, _, _ = step_errors(w, oracle, np.random.default_rng(3), seeds=range(4))
    assert np.allclose(bad + 1, (good + 1) * 900_000 / 999_000, rtol=1e-6)  # the same draws, rescaled
    se = good.std(ddof=1) / np.sqrt(good.size)
    assert abs(good.mean()) <= 3 * se + 0.01 and bad.mean() < good.mean() - 0.06


def test_orthogonal_blocks_are_gaussian_and_orthogonal():
    """Rows of a block are mutually orthogonal; each row is N(0, I_d) (uniform direction, chi_d norm)."""
    d = 50
    e = sm._block((0, 0), 3, 20, d)
    h = e @ e.T
    assert np.allclose(h - np.diag(np.diag(h)), 0, atol=1e-9)
    rows = np.concatenate([sm._block((s, 0), 0, 20, d) for s in range(200)])  # 4000 rows
    assert abs(np.mean(np.sum(rows ** 2, axis=1)) - d) < 4 * np.sqrt(2 * d / rows.shape[0])  # chi^2_d mean
    assert np.allclose(np.cov(rows.T), np.eye(d), atol=0.12)  # covariance I (sd of an entry ~ 0.016)
    assert sm._block_size(1000, 400, 10) == 100 and sm._block_size(4000, 30, 10) == 30


def test_step_model_interval_coverage(step_case):
    """The 95% jackknife interval covers the closed form at about its nominal rate (30 seeds x 5 points)."""
    w, oracle, _ = step_case
    errs, _, hits, _ = step_errors(w, oracle, np.random.default_rng(4), seeds=range(30))
    # unbiased: measured mean -0.6% +- 0.6% (standard error) over these 150 estimates
    assert abs(errs.mean()) <= 3 * errs.std(ddof=1) / np.sqrt(errs.size), errs.mean()
    # measured 0.987 (148 of 150) with orthogonal blocks (0.973 with independent draws); binomial sd at 0.95 is 0.018
    assert 0.88 <= hits.mean() <= 1.0, hits.mean()


def _smoothed_reference(w, b, x, sigma, n=200_000, seed=99):
    """float64 Monte-Carlo reference for a linear softmax model: p_sigma = E[softmax(W(x + sigma eps) + b)] and
    J_sigma = E[(diag(p) - p p^T) W] at the draws (the exact gradient averaged: no Stein identity involved)."""
    rng = np.random.default_rng(seed)
    k = w.shape[0]
    p_sum, j_sum = np.zeros(k), np.zeros((k, k))  # J_sigma = C W with C = E[diag(p) - p p^T]
    for _ in range(n // 10_000):
        z = (x[None, :] + sigma * rng.standard_normal((10_000, x.size))) @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p_sum += p.sum(axis=0)
        j_sum += np.diag(p.sum(axis=0)) - p.T @ p
    p_sig, c = p_sum / n, j_sum / n
    jac = c @ w
    g = (jac @ jac.T) / np.sqrt(np.outer(p_sig, p_sig))
    ev = np.linalg.eigvalsh(g)
    return float(ev[-1]), float(np.trace(g))


def test_linear_softmax_against_monte_carlo(tmp_path):
    rng = np.random.default_rng(5)
    k, d, sigma = 3, 30, 0.5
    w = (rng.standard_normal((k, d)) * 0.4).astype(np.float32).astype(np.float64)
    b = np.zeros(k)
    oracle = LogProbOracle(load_model(save(linear_model(w, b), tmp_path / "lin.onnx")), "logits")
    lam_err, tr_err = [], []
    for i in range(4):
        x = rng.standard_normal(d).astype(np.float32).astype(np.float64)
        lam_ref, tr_ref = _smoothed_reference(w, b, x, sigma)
        for seed in range(3):
            est = smoothed_fisher(oracle, x, sigma, 8000, (seed, i))
            lam_err.append(est.lambda_max / lam_ref - 1)
            tr_err.append(est.trace / tr_ref - 1)
    lam_err, tr_err = np.abs(lam_err), np.abs(tr_err)
    assert np.median(lam_err) <= 0.06 and np.median(tr_err) <= 0.06, (lam_err, tr_err)


def test_draws_do_not_depend_on_the_batch(step_case):
    w, oracle, rng = step_case
    x = step_point(w, 0.3, np.random.default_rng(8))
    a = smoothed_fisher(oracle, x, SIGMA_STEP, 400, (0, 1), block=256)
    b = smoothed_fisher(oracle, x, SIGMA_STEP, 400, (0, 1), block=6)
    assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-12) and a.lambda_max_ci == pytest.approx(b.lambda_max_ci)


@pytest.mark.parametrize("jac", [False, True], ids=["gram-path", "jacobian-path"])
def test_gram_regenerated_equals_kept(step_case, monkeypatch, jac):
    w, oracle, _ = step_case
    monkeypatch.setattr(sm, "_use_jac", lambda k, m: jac)
    x = step_point(w, -0.2, np.random.default_rng(9))
    a = smoothed_fisher(oracle, x, SIGMA_STEP, 200, (1, 2), block=40)
    monkeypatch.setattr(sm, "GRAM_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(sm, "JAC_STORE_ELEMENTS", 0)
    b = smoothed_fisher(oracle, x, SIGMA_STEP, 200, (1, 2), block=40)
    assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-10) and a.trace == pytest.approx(b.trace, rel=1e-10)


def test_default_sigma_rule():
    x = np.array([3.0, -4.0, 0.0, 0.0])
    sigma, rule = default_sigma(x, (0.0, 1.0))
    assert sigma == pytest.approx(0.05 * 2.5) and "5% of the sample's RMS" in rule
    sigma0, rule0 = default_sigma(np.zeros(4), (0.0, 255.0))
    assert sigma0 == pytest.approx(0.05 * 255) and "all-zero" in rule0
    with pytest.raises(ValueError):
        smoothed_fisher(None, x, 0.0, 100, (0,))


# ----------------------------------------------------------------------------- scan --smoothing
ZOO = Path(__file__).resolve().parent.parent / "sample_models"
SCHEMA = json.loads(resources.files("fimaudit.report").joinpath("scan.schema.json").read_text())


@pytest.fixture(scope="module")
def step_scan(tmp_path_factory):
    """The step model's scan at 6 points with t = (w.x + b)/(sigma |w|) known, sigma in model-input units."""
    tmp = tmp_path_factory.mktemp("smooth_scan")
    rng = np.random.default_rng(21)
    d = 64
    w = rng.standard_normal(d).astype(np.float32).astype(np.float64)
    path = save(step_model(w, B_STEP), tmp / "step.onnx")
    ts = (0.0, 0.5, -0.5, 1.0, -1.0, 0.2)
    x = []
    for t in ts:
        row = rng.standard_normal(d)
        x.append(row + (t * SIGMA_STEP * np.linalg.norm(w) - (w @ row + B_STEP)) * w / (w @ w))
    x = np.array(x, dtype=np.float32)
    np.savez(tmp / "d.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    truth = np.array([step_truth(w, row.astype(np.float64)) for row in x])
    return path, tmp / "d.npz", truth


def test_scan_smoothing_reports_f_sigma(step_scan):
    path, data, truth = step_scan
    res = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=2000, bounds=False)
    rep = res.to_dict()
    jsonschema.validate(rep, SCHEMA)
    assert ScanResult.from_dict(json.loads(json.dumps(rep))).to_dict() == rep
    lam = np.array([s.lambda_max for s in res.samples])
    assert np.median(np.abs(lam / truth - 1)) <= 0.1, lam / truth
    for s in res.samples:
        assert s.queries == 1999 and s.queries <= 2000 and s.method == "smoothed" and s.probes == 999
        assert s.smoothed["sigma"] == SIGMA_STEP and s.smoothed["queries"] == 1998
        assert s.smoothed["lambda_max"] == s.lambda_max and s.lower_bound is None and s.lower_estimate is None
        lo, hi = s.smoothed["lambda_max_ci"]
        assert lo <= s.lambda_max <= hi
    sm_sum = rep["summary"]["smoothed"]
    assert sm_sum["sigma"] == SIGMA_STEP and sm_sum["source"] == "user" and sm_sum["units"] == "model-input"
    assert sm_sum["lambda_max"]["median"] == pytest.approx(np.median(lam))
    assert rep["run"]["method_used"] == "smoothed" and rep["summary"]["calibration_queries"] == 0
    # the step model is piecewise constant: the scan also spends the behaviour check's queries (fimaudit.piecewise)
    assert rep["piecewise"]["complete"]  # (sample 0 sits on the step: its small steps cross it)
    assert rep["summary"]["queries_total"] == 6 * 1999 + rep["piecewise"]["behaviour"]["queries"]
    assert any(n.startswith("smoothed Fisher F_sigma") for n in res.notes)
    for text in (render_text(res), render_markdown(res), render_html(res)):
        assert "smoothed Fisher F_sigma (sigma = 0.2" in text.replace("Smoothed", "smoothed") and "F_sigma" in text
    # pointwise reports of a smooth model keep their format
    lin = save(linear_model(np.ones((2, 64)) * 0.1, np.zeros(2)), Path(path).parent / "lin.onnx")
    assert "smoothed" not in fimaudit.scan(lin, data, budget=200, bounds=False).to_dict()["samples"][0]


def test_scan_of_the_step_model_smooths_automatically(step_scan):
    """No --smoothing on a piecewise-constant model: F_sigma at each sample's default_sigma, never the pointwise F.
    Against the closed form at the automatic sigmas, the tolerance of the --smoothing test above (measured: median
    |relative error| 2.1%, sigmas 0.043 to 0.052)."""
    path, _, _ = step_scan
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).astype(np.float64).ravel()
    rng = np.random.default_rng(5)
    rows = []
    for t in (0.0, 0.5, -0.5, 1.0, -1.0, 0.2):  # t at the automatic sigma, which depends on the row itself
        row = rng.standard_normal(w.size)
        for _ in range(20):
            row = row + (t * default_sigma(row)[0] * np.linalg.norm(w) - (w @ row + B_STEP)) * w / (w @ w)
        rows.append(row)
    x = np.array(rows, dtype=np.float32).astype(np.float64)
    data = Path(path).parent / "auto.npz"
    np.savez(data, x=x.astype(np.float32), y=np.zeros(len(x), dtype=np.int64))
    res = fimaudit.scan(path, data, budget=2000, bounds=False)
    sigmas = np.array([default_sigma(row)[0] for row in x])
    t = (x @ w + np.float32(B_STEP)) / (sigmas * np.linalg.norm(w))
    big_phi = norm.cdf(t)
    truth = norm.pdf(t) ** 2 / (sigmas ** 2 * big_phi * (1 - big_phi))
    lam = np.array([s.lambda_max for s in res.samples])
    assert np.median(np.abs(lam / truth - 1)) <= 0.1, lam / truth
    sm_sum = res.summary.smoothed
    assert sm_sum["source"] == "auto" and sm_sum["sigma"] == pytest.approx(np.median(sigmas))
    assert sm_sum["because"] == "the model is piecewise-constant (Sign x1)"
    assert [s.smoothed["sigma"] for s in res.samples] == pytest.approx(sigmas)
    assert res.run.method_used == "smoothed" and all(s.queries <= 2000 for s in res.samples)
    assert res.notes[0].startswith("smoothed Fisher F_sigma (sigma = ") and "sigma chosen automatically: sigma = 5%" \
        in res.notes[0] and "because the model is piecewise-constant (Sign x1)" in res.notes[0]
    assert "sigma chosen automatically, because the model is piecewise-constant" in " ".join(render_text(res).split())
    # an option of the pointwise estimator, or a budget too small for the smoothed one: the pointwise scan, nulled
    for opts in ({"method": "sketch"}, {"budget": 30}):
        pointwise = fimaudit.scan(path, data, bounds=False, **{"budget": 2000, **opts})
        assert pointwise.summary.smoothed is None and all(s.lambda_max is None for s in pointwise.samples)
        assert any("automatic smoothed Fisher F_sigma of this piecewise-constant model was not computed" in n
                   for n in pointwise.notes)


def test_scan_smoothing_samples_are_independent(step_scan):
    path, data, _ = step_scan
    all6 = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=300, bounds=False)
    first2 = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=300, bounds=False, samples=2, max_batch=7)
    assert [s.to_dict() for s in first2.samples] == [s.to_dict() for s in all6.samples[:2]]


def test_scan_smoothing_sigma_in_data_units(tmp_path):
    """--space data: sigma in stored-data units. With u = scale * x, p_sigma,data(x) = p_{scale sigma}(scale x) and
    F_sigma,data = scale^2 F_{scale sigma, input}: the same draws give the same numbers."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 12)) * 0.05
    path = save(linear_model(w, np.zeros(3)), tmp_path / "lin.onnx")
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, size=(3, 12)).astype(np.float32))
    data = fimaudit.scan(path, tmp_path / "d.npz", scale="1/255", space="data", smoothing=2.55, budget=401,
                         bounds=False)
    inp = fimaudit.scan(path, tmp_path / "d.npz", scale="1/255", smoothing=0.01, budget=401, bounds=False)
    assert data.summary.smoothed["units"] == "data"
    for a, b in zip(data.samples, inp.samples):
        assert a.lambda_max == pytest.approx(b.lambda_max / 255 ** 2, rel=1e-3)


def test_scan_smoothing_refuses_contradictions(step_scan):
    path, data, _ = step_scan
    for bad in ({"method": "sketch"}, {"dither": 0.1}, {"gradients": "graph"}, {"trace_budget": 10},
                {"fd_step": 0.01}, {"budget": 30}):
        with pytest.raises(ConfigError):
            fimaudit.scan(path, data, smoothing=0.1, **bad)
    with pytest.raises(ConfigError):
        fimaudit.scan(path, data, smoothing=-1.0)
    with pytest.raises(ConfigError, match="float32 resolution"):
        fimaudit.scan(path, data, smoothing=1e-12)


def test_cli_smoothing(step_scan):
    path, data, _ = step_scan
    res = CliRunner().invoke(app, ["scan", str(path), "--data", str(data), "--smoothing", "0.2", "--budget", "101",
                                   "--no-bounds", "-q", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    jsonschema.validate(rep, SCHEMA)
    assert rep["config"]["smoothing"] == 0.2 and rep["summary"]["smoothed"]["draws"] == 50
    shown = CliRunner().invoke(app, ["scan", str(path), "--data", str(data), "--smoothing", "0.2", "--budget", "101",
                                     "--no-bounds"], catch_exceptions=False)
    assert shown.exit_code == 0 and "F_sigma" in shown.stdout and "sigma = 0.2" in shown.stdout


@pytest.mark.skipif(not (ZOO / "mlp_small.onnx").exists(), reason="sample models not present")
def test_f_sigma_approaches_pointwise_f_as_sigma_shrinks():
    """mlp_small (smooth almost everywhere): F_sigma -> F. Measured (4 samples, budget 8001): median |relative
    difference| from the graph's exact F 0.88 at sigma 0.3, 0.16 at 0.1, 0.06 at 0.003 (the estimator's noise)."""
    model, data = ZOO / "mlp_small.onnx", ZOO / "fmnist_test_1000_28.npz"
    ref = fimaudit.scan(model, data, samples=4, scale="1/255", bounds=False)
    lam0 = np.array([s.lambda_max for s in ref.samples])
    diffs, covered = {}, 0
    for sigma in (0.3, 0.1, 0.003):
        res = fimaudit.scan(model, data, samples=4, scale="1/255", smoothing=sigma, budget=8001, bounds=False)
        lam = np.array([s.lambda_max for s in res.samples])
        diffs[sigma] = float(np.median(np.abs(lam / lam0 - 1)))
        if sigma == 0.003:
            covered = sum(s.lambda_max_ci[0] <= v <= s.lambda_max_ci[1] for s, v in zip(res.samples, lam0))
    assert diffs[0.3] > 0.3 and diffs[0.003] < 0.12 and diffs[0.003] < diffs[0.1] < diffs[0.3], diffs
    assert covered >= 3


def test_automatic_sigmas_per_sample(step_scan):
    """The hook for automatic smoothing: each sample's sigma from default_sigma on its own values."""
    from fimaudit.scan import ScanConfig, smoothing_sigmas

    path, data, _ = step_scan
    x = np.load(data)["x"].astype(np.float64)
    sigmas, record = smoothing_sigmas(x, ScanConfig(model=str(path)), auto=True)
    assert np.allclose(sigmas, [default_sigma(row)[0] for row in x], rtol=0)
    assert sigmas[0] == pytest.approx(0.05 * np.sqrt(np.mean(x[0] ** 2)))
    assert record["source"] == "auto" and record["sigma"] == pytest.approx(np.median(sigmas))
    assert "5% of the sample's RMS" in record["rule"]
    sig2, _ = smoothing_sigmas(x[:2], ScanConfig(model=str(path)), auto=True)
    assert np.array_equal(sig2, sigmas[:2])


def test_scan_work_chunks_equal_the_local_scan(step_scan):
    """The per-sample stage as Dask workers run it (ScanWork on a pickled calibration) gives the local values."""
    import pickle

    from fimaudit.scan import ScanConfig, ScanWork, calibrate, load, prepare_points

    path, data, _ = step_scan
    config = ScanConfig(model=str(path), data=str(data), smoothing=SIGMA_STEP, budget=301, bounds=False)
    local = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=301, bounds=False)
    loaded = load(config)
    points = prepare_points(config, loaded)
    _, calib = calibrate(config, loaded.model, points, loaded.pre)
    work = pickle.loads(pickle.dumps(ScanWork(config, calib, None)))
    out = work(loaded.model, [3, 4], points.x[3:5], [0, 0])
    assert [o.result.to_dict() for o in out] == [s.to_dict() for s in local.samples[3:5]]


def test_scan_smoothing_saves_the_worst_direction(step_scan, tmp_path):
    """F_sigma of the step model is rank one along w: the saved direction is +-w/|w| up to the plug-in's noise
    (|cos| about |J|/sqrt(|J|^2 + d E|a|^2 / m), 0.95 here)."""
    path, data, _ = step_scan
    out = tmp_path / "v.npy"
    fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=2000, bounds=False, save_direction=str(out))
    v = np.load(out)
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).reshape(-1)
    cos = np.abs(v @ w) / (np.linalg.norm(v, axis=1) * np.linalg.norm(w))
    assert v.shape == (6, 64) and np.median(cos) >= 0.85, cos  # measured: median 0.96, min 0.94


@pytest.mark.parametrize("keep", [True, False], ids=["draws-kept", "draws-regenerated"])
def test_gram_and_jacobian_paths_agree(tmp_path, monkeypatch, keep):
    """The m x m Gram path and the K x d path compute the same U-statistic, intervals and direction."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 40)) * 0.3
    oracle = LogProbOracle(load_model(save(linear_model(w, np.zeros(3)), tmp_path / "lin.onnx")), "logits")
    x = rng.standard_normal(40)
    if not keep:
        monkeypatch.setattr(sm, "GRAM_CACHE_ELEMENTS", 0)
        monkeypatch.setattr(sm, "JAC_STORE_ELEMENTS", 0)
    out = {}
    for name, use in (("gram", False), ("jac", True)):
        monkeypatch.setattr(sm, "_use_jac", lambda k, m, use=use: use)
        out[name] = smoothed_fisher(oracle, x, 0.3, 300, (0, 0), block=32, direction=True)
    g, j = out["gram"], out["jac"]
    assert j.lambda_max == pytest.approx(g.lambda_max, rel=1e-9) and j.trace == pytest.approx(g.trace, rel=1e-9)
    assert j.lambda_max_ci == pytest.approx(g.lambda_max_ci, rel=1e-8) and j.trace_ci == pytest.approx(g.trace_ci, rel=1e-8)
    assert abs(j.direction @ g.direction) == pytest.approx(1.0, abs=1e-9)


def test_wide_intervals_get_a_note(step_scan):
    path, data, _ = step_scan
    small = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=41, bounds=False)
    assert any("intervals are wide" in n for n in small.notes)
    big = fimaudit.scan(path, data, smoothing=SIGMA_STEP, budget=2000, bounds=False)
    assert not any("intervals are wide" in n for n in big.notes)


@pytest.mark.skipif(not (ZOO / "mlp_small.onnx").exists(), reason="sample models not present")
def test_quantized_input_model_pointwise_zero_smoothed_meaningful(tmp_path):
    """mlp_small behind an 8-bit input grid (Round(255 x)/255): piecewise constant, so the pointwise F is 0,
    while F_sigma (sigma = 0.02, about 5 grid steps) equals the float model's F_sigma. Measured over 8 samples:
    pointwise 0 exactly (now not reported: fimaudit.piecewise); smoothed ratio quantized/float 0.992 to 1.009 (the same seeded draws for both)."""
    m = onnx.load(str(ZOO / "mlp_small.onnx"))
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            if name == "input":
                node.input[i] = "xq"
    pre = [helper.make_node("Mul", ["input", "q255"], ["x255"]), helper.make_node("Round", ["x255"], ["xr"]),
           helper.make_node("Div", ["xr", "q255"], ["xq"])]
    for i, node in enumerate(pre):
        m.graph.node.insert(i, node)
    m.graph.initializer.append(numpy_helper.from_array(np.array(255, np.float32), "q255"))
    path = save(m, tmp_path / "mlp_q.onnx")
    data = ZOO / "fmnist_test_1000_28.npz"
    opts = {"samples": 8, "scale": "1/255", "bounds": False}
    pointwise = fimaudit.scan(path, data, budget=30, **opts)  # too small a budget for the automatic F_sigma
    # the pointwise F (0 here) is not reported for a piecewise-constant model (fimaudit.piecewise)
    assert pointwise.piecewise["ops"] == {"Round": 1} and all(s.lambda_max is None for s in pointwise.samples)
    quant = fimaudit.scan(path, data, smoothing=0.02, **opts)
    flt = fimaudit.scan(ZOO / "mlp_small.onnx", data, smoothing=0.02, **opts)
    ratio = np.array([a.lambda_max / b.lambda_max for a, b in zip(quant.samples, flt.samples)])
    assert np.all(np.abs(ratio - 1) <= 0.05), ratio
