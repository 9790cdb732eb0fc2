"""Power iteration, Lanczos, Hutchinson, deflation, lower bound and finite differences against closed forms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fimaudit
from fimaudit.estimators.core import exact
from fimaudit.estimators.fd import choose_step, jvp
from fimaudit.estimators.hutchinson import hutchinson
from fimaudit.estimators.power import fisher_operator, fresh_probes, lanczos_top, power_fixed, power_fresh
from fimaudit.estimators.source import FiniteDifferences
from fimaudit.estimators.subspace import LearntSubspace, dct_lowfreq_basis, deflated_sketch, sketch
from fimaudit.model import LogProbOracle, load_model

from . import builders as B


@pytest.fixture(scope="module")
def linear_case(tmp_path_factory):
    """Linear softmax model with a clear spectral gap, its point and closed-form Fisher matrix."""
    tmp = tmp_path_factory.mktemp("lin")
    rng = np.random.default_rng(11)
    k, d = 6, 40
    w = rng.standard_normal((k, d)) * 0.3
    w[0] *= 4.0  # one dominant class direction: lambda_1 well above lambda_2
    b = rng.standard_normal(k) * 0.3
    path = B.save(B.linear_model(w, b), tmp / "lin.onnx")
    x = rng.uniform(0, 1, size=d)
    oracle = LogProbOracle(load_model(path), "logits")
    p = np.exp(oracle.logp(x[None])[0])
    return oracle, x, p, B.linear_reference(w, b, x)


def test_power_fixed_equals_sketch_on_same_probes(linear_case):
    oracle, x, p, f = linear_case
    for probes in ("gaussian", "orthogonal"):
        a = power_fixed(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), 25, np.random.default_rng(3), probes=probes, check_lower_bound=False)
        s = sketch(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), 25, np.random.default_rng(3), probes=probes, check_lower_bound=False)
        assert a.lambda_max == pytest.approx(s.lambda_max, rel=1e-6)
        assert a.queries == s.queries == 50


def test_power_fresh_is_a_lower_estimate_within_budget(linear_case):
    oracle, x, p, f = linear_case
    lam = B.lam_max(f)
    rng = np.random.default_rng(0)
    source = FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p), rng=rng, vjp_probes=fresh_probes(400))
    est = power_fresh(source, 400, rng)
    assert est.queries <= 400
    assert est.lambda_max <= lam * (1 + 1e-3)
    assert est.lambda_max >= 0.2 * lam  # d = 40: fresh ZO gradients still find the top direction roughly


def test_lanczos_matches_dense_spectrum(linear_case):
    oracle, x, p, f = linear_case
    est = exact(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)))
    s_cols = np.column_stack([jvp(oracle, x, e[None, :], 1e-2)[0] for e in np.eye(x.size)])
    top = lanczos_top(fisher_operator(s_cols, p), x.size, 3, np.random.default_rng(0))
    ref = np.linalg.eigvalsh(f)[::-1][:3]
    np.testing.assert_allclose(top, ref, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(est.top_eigenvalues[:3], ref, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_interval_coverage(linear_case, kind):
    oracle, x, p, f = linear_case
    tr = float(np.trace(f))
    covered = 0
    for seed in range(100):
        est = hutchinson(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), 120, np.random.default_rng(seed), probes=kind, rse_target=0.0)
        assert est.queries <= 120 and est.stopped_by == "budget"
        covered += est.ci[0] <= tr <= est.ci[1]
    assert covered >= 90


def test_hutchinson_stops_on_relative_error_target(linear_case):
    oracle, x, p, f = linear_case
    est = hutchinson(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), 100000, np.random.default_rng(0), rse_target=0.05)
    assert est.stopped_by == "target"
    assert est.se <= 0.05 * est.trace
    assert est.queries < 100000


def test_deflation_is_exact_when_subspace_holds_the_row_space(linear_case):
    oracle, x, p, f = linear_case
    w = np.linalg.eigh(f)[1][:, -6:].T  # rows span S's row space (rank <= K)
    est = deflated_sketch(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), w, 5, np.random.default_rng(0), check_lower_bound=False)
    assert est.lambda_max == pytest.approx(B.lam_max(f), rel=1e-4)


def test_deflation_is_unbiased_with_any_subspace(linear_case):
    oracle, x, p, f = linear_case
    q = dct_lowfreq_basis((40,), 8)
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=1e-12)
    traces = [
        deflated_sketch(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)), q, 10, np.random.default_rng(s), probes="gaussian",
                        check_lower_bound=False).trace
        for s in range(200)
    ]
    assert np.mean(traces) == pytest.approx(np.trace(f), rel=0.05)


def test_dct_basis_is_orthonormal_for_images():
    q = dct_lowfreq_basis((2, 5, 6), 20)
    np.testing.assert_allclose(q @ q.T, np.eye(20), atol=1e-12)
    first = q[0].reshape(2, 5, 6)  # the constant image of channel 0
    np.testing.assert_allclose(first[0], 1 / np.sqrt(30))
    assert not first[1].any()


def test_learnt_subspace_recovers_shared_directions():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((50, 3)))[0].T
    learnt = LearntSubspace(50)
    for _ in range(20):
        learnt.add(rng.standard_normal(3) @ basis)
    got = learnt.basis(3)
    np.testing.assert_allclose(np.abs(np.linalg.svd(got @ basis.T)[1]), 1.0, atol=1e-8)


def test_lower_bound_never_exceeds_exact(tmp_path):
    rng = np.random.default_rng(12)
    params = B.random_mlp(rng, d=60, hidden=20, k=5, gain=2.0)
    model = B.save(B.mlp_model(*params), tmp_path / "m.onnx")
    x = rng.uniform(-1, 1, size=(8, 60)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    refs = [B.lam_max(B.mlp_reference(*params, xi)) for xi in x]
    for method in ("exact", "sketch", "power", "power-fresh", "deflated"):
        budget = 200 if method != "exact" else 130
        res = fimaudit.scan(model, tmp_path / "d.npz", method=method, budget=budget, seed=1, gradients="fd")
        for s, r in zip(res.samples, refs):
            assert s.lower_estimate is not None and s.lower_estimate <= r, (method, s.lower_estimate, r)
            assert s.queries <= budget


def test_tanh_mlp_d12288_within_goal_at_budget_2000(tmp_path):
    rng = np.random.default_rng(13)
    d = 12288
    params = B.random_mlp(rng, d=d, hidden=24, k=10, gain=3.0)
    model = B.save(B.mlp_model(*params, sample_shape=(3, 64, 64)), tmp_path / "m.onnx")
    x = rng.uniform(0, 1, size=(8, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    refs = np.array([B.lam_max_factor(B.mlp_reference(*params, xi, factor=True)) for xi in x])
    res = fimaudit.scan(model, tmp_path / "d.npz", budget=2000, seed=0, gradients="fd")  # black-box goal
    assert res.run.method_used == "sketch"
    errs = np.abs(np.array([s.lambda_max for s in res.samples]) - refs) / refs
    assert np.median(errs) <= 0.05 and np.percentile(errs, 90) <= 0.12, errs
    assert all(s.queries <= 2000 for s in res.samples)
    assert all(s.lower_estimate <= r for s, r in zip(res.samples, refs))


def test_kl_check_and_saved_directions(tmp_path):
    rng = np.random.default_rng(14)
    params = B.random_mlp(rng, d=30, hidden=10, k=4, gain=2.0)
    model = B.save(B.mlp_model(*params), tmp_path / "m.onnx")
    x = rng.uniform(-1, 1, size=(5, 30)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    out = tmp_path / "dirs.npy"
    res = fimaudit.scan(model, tmp_path / "d.npz", method="exact", save_direction=str(out))
    dirs = np.load(out)
    assert dirs.shape == (5, 30)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-5)
    for s, v, xi in zip(res.samples, dirs, x):
        assert s.kl_ratio == pytest.approx(1.0, abs=0.05)
        f = B.mlp_reference(*params, xi)
        assert float(v @ f @ v) == pytest.approx(B.lam_max(f), rel=2e-3)  # the worst direction


# ------------------------------------------------------------------ finite differences
def _relu_model(w: np.ndarray, tmp_path):
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gemm", ["r", "W"], ["z"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "relu.onnx"))
    return tmp_path / "relu.onnx"


def test_central_differences_average_one_sided_derivatives_at_relu_ties(tmp_path):
    """z = W relu(x) at x with exact zeros (a constant background): J = W diag(d), d = 1, 0, or 1/2 at ties."""
    rng = np.random.default_rng(15)
    w = rng.standard_normal((4, 12))
    oracle = LogProbOracle(load_model(_relu_model(w, tmp_path)), "logits")
    x = np.array([0.5, -0.5, 0.0] * 4)
    p = np.exp(oracle.logp(x[None])[0])
    est = exact(FiniteDifferences(oracle, x, 1e-2, logp0=np.log(p)))
    slope = np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5))
    j = w.astype(np.float32).astype(np.float64) * slope[None, :]
    assert est.lambda_max == pytest.approx(B.lam_max(B.fisher_from_jacobian(j, p)), rel=1e-4)


def test_step_choice_balances_roundoff_and_curvature(tmp_path):
    """On a smooth model the chosen h gives an exact-mode error near the best over a wide grid."""
    rng = np.random.default_rng(16)
    params = B.random_mlp(rng, d=40, hidden=16, k=5, gain=3.0)
    model = B.save(B.mlp_model(*params), tmp_path / "m.onnx")
    oracle = LogProbOracle(load_model(model), "logits")
    x = rng.uniform(-1, 1, size=40)
    p = np.exp(oracle.logp(x[None])[0])
    lam = B.lam_max(B.mlp_reference(*params, x))
    step = choose_step(oracle, x, float(np.sqrt(np.mean(x * x))), np.random.default_rng(0))
    err_at = lambda h: abs(exact(FiniteDifferences(oracle, x, h, logp0=np.log(p))).lambda_max - lam) / lam  # noqa: E731
    grid = [10.0 ** e for e in np.arange(-5, 0.5, 0.5)]
    best = min(err_at(h) for h in grid)
    assert err_at(step.h) <= max(10 * best, 1e-4)
    assert err_at(1e-5) > err_at(step.h)  # round-off at tiny steps
    assert err_at(1.0) > err_at(step.h)  # curvature at large steps


def test_scan_hutchinson_trace_within_budget(tmp_path):
    rng = np.random.default_rng(17)
    w = rng.standard_normal((5, 30))
    b = rng.standard_normal(5)
    model = B.save(B.linear_model(w, b), tmp_path / "lin.onnx")
    x = rng.uniform(0, 1, size=(12, 30)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = fimaudit.scan(model, tmp_path / "d.npz", method="sketch", budget=300, trace_budget=120, trace_rse=0.05)
    covered = 0
    for s, xi in zip(res.samples, x):
        tr = float(np.trace(B.linear_reference(w, b, xi)))
        assert s.queries <= 300 and s.trace_method.startswith("hutchinson-rademacher")
        covered += s.trace_ci[0] <= tr <= s.trace_ci[1]
    assert covered >= 10
