"""Randomized-smoothing certificates against closed forms on a linear two-class model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from fimaudit import certify as C
from fimaudit.certify import CertifyConfig, CertifyResult, certify, lower_confidence_bound, radius_from_counts
from fimaudit.errors import ConfigError

from . import builders as B

SIGMA = 0.25


def linear_two_class(d: int, seed: int = 3):
    """Weights exactly representable in float32; returns (w, b, normal, offset) of the boundary."""
    rng = np.random.default_rng(seed)
    w = np.round(rng.standard_normal((2, d)) * 8) / 8
    b = np.array([0.25, -0.25])
    normal = w[0] - w[1]  # class 0 wins where normal . x + offset > 0
    return w, b, normal, b[0] - b[1]


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certify")
    d = 6
    w, b, normal, offset = linear_two_class(d)
    model = B.save(B.linear_model(w, b, sample_shape=(d,)), tmp / "lin.onnx")
    unit = normal / np.linalg.norm(normal)
    base = np.random.default_rng(9).standard_normal(d)
    base = base - (normal @ base + offset) / (normal @ normal) * normal  # a point on the boundary
    dists = np.array([0.05, -0.2, 0.4, 0.8, 0.0])  # signed distance to the boundary
    x = base[None] + dists[:, None] * unit[None]
    y = np.where(dists >= 0, 0, 1)
    np.savez(tmp / "d.npz", x=x, y=y)
    return tmp, model, tmp / "d.npz", np.abs(dists)


def expected_radius(p: float, n: int, alpha: float) -> float:
    """The certificate the exact p_A would give if n_A hit its mean: sigma Phi^-1(LCB(p n, n))."""
    return SIGMA * norm.ppf(beta.ppf(alpha, p * n, n - p * n + 1))


def test_counts_match_closed_form_p_a_and_radius_converges_to_distance(linear):
    _, model, data, dist = linear
    radii = {}
    for n in (1000, 100_000):
        res = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n0=50, n=n, alpha=0.001))
        radii[n] = res
        for s, r in zip(res.samples, dist):
            p_exact = norm.cdf(r / SIGMA)  # P(x + sigma eps on x's side) for a hyperplane
            if r == 0:
                continue
            assert s.selected == s.base_prediction == s.label
            se = np.sqrt(p_exact * (1 - p_exact) / n)
            assert abs(s.n_a / n - p_exact) <= 5 * se + 1 / n
            # n_a within 5 SE of its mean: the radius sits between the certificates of p -+ 5 SE
            if not s.abstain:
                lo = expected_radius(max(p_exact - 5 * se, 0.5), n, 0.001)
                # capped at p = 1 (n_a = n, all draws on x's side: likely far from the boundary), not below it
                hi = expected_radius(min(p_exact + 5 * se, 1.0), n, 0.001)
                assert lo - 1e-9 <= s.radius <= hi + 1e-9
                assert s.radius <= r + 1e-9  # never above the true radius (here, at this seed)
            assert s.queries == 1 + 50 + n
    big = radii[100_000].samples
    # As the bound tightens the certificate approaches the distance to the hyperplane.
    for s_small, s_big, r in zip(radii[1000].samples, big, dist):
        if r in (0.2, 0.4):
            assert s_big.radius > (s_small.radius or 0.0)
            assert s_big.radius == pytest.approx(r, abs=0.02)


def test_point_on_the_boundary_abstains(linear):
    _, model, data, dist = linear
    res = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n0=50, n=20_000))
    on = res.samples[4]
    assert dist[4] == 0 and on.abstain and on.prediction is None and on.radius is None
    assert on.correct is False
    assert abs(on.n_a / 20_000 - 0.5) < 0.02
    assert res.summary.abstain_rate == pytest.approx(0.2)


def test_abstention_near_one_half_from_counts():
    n = 10_000
    # p_A barely above 1/2: the bound cannot clear 1/2 at this n, so CERTIFY abstains.
    p_lower, radius, abstain = radius_from_counts(np.array([5000, 5050, 5200, 10_000]), n, SIGMA, 0.001)
    assert abstain.tolist() == [True, True, False, False]
    assert np.isnan(radius[:2]).all() and np.all(radius[2:] > 0)
    # n_a = n: the bound is alpha^(1/n) exactly
    assert p_lower[3] == pytest.approx(0.001 ** (1 / n), rel=1e-12)
    assert radius[3] == pytest.approx(SIGMA * norm.ppf(0.001 ** (1 / n)), rel=1e-9)


def test_clopper_pearson_is_the_exact_binomial_tail():
    """The bound b solves P(Bin(n, b) >= n_a) = alpha (its defining property, not scipy's formula)."""
    n_a = np.array([1, 7, 60, 99, 500, 9990])
    n = np.array([10, 10, 100, 100, 1000, 10_000])
    b = lower_confidence_bound(n_a, n, 0.01)
    assert np.allclose(binom.sf(n_a - 1, n, b), 0.01, rtol=1e-6)
    assert lower_confidence_bound(0, 10, 0.01) == 0.0


@pytest.mark.parametrize("alpha", [0.001, 0.05])
@pytest.mark.parametrize("p_a", [0.6, 0.9, 0.999])
def test_certificate_exceeds_the_true_radius_at_most_alpha_of_the_time(alpha, p_a):
    """1000 seeded runs with the exact p_A: the certified radius > sigma Phi^-1(p_A) at rate <= alpha."""
    n, runs = 1000, 1000
    true_radius = SIGMA * norm.ppf(p_a)
    n_a = np.random.default_rng([7, int(alpha * 1e4), int(p_a * 1e3)]).binomial(n, p_a, size=runs)
    _, radius, abstain = radius_from_counts(n_a, n, SIGMA, alpha)
    wrong = np.sum(~abstain & (radius > true_radius))
    assert wrong <= binom.ppf(0.999, runs, alpha)
    # and it is not vacuous: most runs certify a radius within reach of the true one
    assert np.mean(~abstain) > 0.9


def test_results_do_not_depend_on_batch_or_noise_chunk(linear, monkeypatch):
    _, model, data, _ = linear
    cfg = dict(model=str(model), data=str(data), sigma=SIGMA, n0=30, n=3000, samples=3)
    a = certify(CertifyConfig(**cfg, max_batch=256))
    monkeypatch.setattr(C, "NOISE_VALUES", 6 * 37)  # 37-row noise chunks
    b = certify(CertifyConfig(**cfg, max_batch=7))
    assert a.samples == b.samples
    assert a.summary.queries_total == b.summary.queries_total


def test_data_space_noise_and_radius_in_stored_units(tmp_path):
    """Model input u = (2x - 1)/0.5 = 4x - 2: a data-unit radius is the input-unit radius / 4."""
    d = 4
    w, b, normal, offset = linear_two_class(d, seed=5)
    model = B.save(B.linear_model(w, b, sample_shape=(d,)), tmp_path / "lin.onnx")
    unit = normal / np.linalg.norm(normal)
    u0 = -(offset / (normal @ normal)) * normal + 0.3 * unit  # model-input point at distance 0.3
    x = ((u0 + 2) / 4)[None]
    np.save(tmp_path / "x.npy", x)
    common = dict(model=str(model), data=str(tmp_path / "x.npy"), scale=2.0, mean=(1.0,), std=(0.5,), n=50_000)
    inp = certify(CertifyConfig(**common, sigma=SIGMA))
    dat = certify(CertifyConfig(**common, sigma=SIGMA / 4, space="data"))
    assert inp.units["space"] == "input" and dat.units["space"] == "data"
    # Noise sigma/4 in data units is noise sigma in input units: the same draws, the same counts.
    assert dat.samples[0].n_a == inp.samples[0].n_a
    assert dat.samples[0].radius == pytest.approx(inp.samples[0].radius / 4, rel=1e-9)
    assert inp.samples[0].radius == pytest.approx(0.3, abs=0.03)


def test_result_round_trip_and_certified_accuracy(linear):
    _, model, data, _ = linear
    res = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n=2000, radii=(0.0, 0.1, 0.3)))
    d = json.loads(json.dumps(res.to_dict()))
    again = CertifyResult.from_dict(d)
    assert again.samples == res.samples and again.summary == res.summary
    assert d["kind"] == "certify" and d["schema_version"] == C.SCHEMA_VERSION
    # Certified accuracy by hand: certified, right class, radius >= r, over all samples.
    for row in res.summary.certified_accuracy:
        hand = np.mean([(not s.abstain) and s.prediction == s.label and s.radius >= row.radius for s in res.samples])
        assert row.accuracy == pytest.approx(hand)
        assert res.certified_accuracy(row.radius) == pytest.approx(hand)
    with pytest.raises(ValueError):
        CertifyResult.from_dict(d | {"kind": "scan"})


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(sigma=0.0), "--sigma"),
        (dict(sigma=float("nan")), "--sigma"),
        (dict(n=0), "--n0 and --n"),
        (dict(alpha=0.7), "--alpha"),
        (dict(radii=(-1.0,)), "--radii"),
        (dict(n=5, alpha=0.001), "too small to certify"),
        (dict(space="pixels"), "--space"),
    ],
)
def test_bad_options_are_one_line_errors(linear, bad, match):
    _, model, data, _ = linear
    with pytest.raises(ConfigError, match=match):
        certify(CertifyConfig(model=str(model), data=str(data), **bad))


def test_each_sample_draws_its_own_noise(tmp_path, linear):
    """The same point at two indices gets independent draws (a seed per sample, not one stream)."""
    _, model, data, _ = linear
    x = np.load(data)["x"][[0, 0, 0]]
    np.save(tmp_path / "same.npy", x)
    res = certify(CertifyConfig(model=str(model), data=str(tmp_path / "same.npy"), sigma=SIGMA, n=4000))
    assert len({s.n_a for s in res.samples}) == 3


def test_terminal_rendering_shows_the_table_and_facts(linear):
    from fimaudit.report.certify import render_certify_text

    _, model, data, _ = linear
    res = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n=2000, radii=(0.0, 0.3)))
    text = render_certify_text(res)
    row = res.summary.certified_accuracy[1]
    assert "sigma = 0.25" in text and f"{100 * row.accuracy:.1f}%" in text
    assert "n = 2000 estimation draws" in text and "abstained on 20.0%" in text


def test_cli_certify_json_and_exit_codes(linear, tmp_path):
    from typer.testing import CliRunner

    from fimaudit.cli import app

    _, model, data, _ = linear
    runner = CliRunner()
    args = ["certify", str(model), "--data", str(data), "--sigma", "0.25", "--n", "3000", "--n0", "20",
            "--radii", "0,0.1"]
    res = runner.invoke(app, args + ["-q", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    api = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n=3000, n0=20, radii=(0.0, 0.1)))
    assert [s.to_dict() for s in api.samples] == rep["samples"]
    assert [r["radius"] for r in rep["summary"]["certified_accuracy"]] == [0.0, 0.1]
    res = runner.invoke(app, args + ["--json", str(tmp_path / "c.json")], catch_exceptions=False)
    assert res.exit_code == 0 and "certified accuracy" in res.stdout
    assert CertifyResult.from_dict(json.loads((tmp_path / "c.json").read_text())).samples == api.samples
    # missing --sigma, and an option that needs Dask where it is not installed: one line, exit 2
    res = runner.invoke(app, ["certify", str(model), "--data", str(data)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "--sigma" in res.stderr
    bad = runner.invoke(app, args + ["--json", str(tmp_path / "bad.json"), "--alpha", "1"])
    assert bad.exit_code == 2 and not (tmp_path / "bad.json").exists()


def test_cli_workers_without_dask_is_one_line(linear, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from fimaudit.cli import app

    _, model, data, _ = linear
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = CliRunner().invoke(app, ["certify", str(model), "--data", str(data), "--sigma", "0.25", "--workers", "2"])
    assert res.exit_code == 2 and res.stderr.strip().count("\n") == 0
    assert "pip install 'fimaudit[distributed]'" in res.stderr


def test_policy_values_by_name(linear):
    """What an audit policy reads: certified_accuracy[r=R] at listed and unlisted radii, and the rates."""
    _, model, data, _ = linear
    res = certify(CertifyConfig(model=str(model), data=str(data), sigma=SIGMA, n=2000, radii=(0.0, 0.25)))
    assert res.metric("certified_accuracy[r=0.25]") == res.summary.certified_accuracy[1].accuracy
    hand = np.mean([(not s.abstain) and s.prediction == s.label and s.radius >= 0.1 for s in res.samples])
    assert res.metric("certified_accuracy[r=0.1]") == pytest.approx(hand)
    assert res.metric("abstain_rate") == res.summary.abstain_rate
    assert set(res.metrics()) >= {"certified_accuracy[r=0]", "certified_accuracy[r=0.25]", "smoothed_accuracy"}
    for bad in ("certified_accuracy[r=-1]", "certified_accuracy[r=x]", "lambda_max"):
        with pytest.raises(ConfigError):
            res.metric(bad)


def test_report_re_renders_a_saved_certify_json(linear, tmp_path):
    """`fimaudit report saved.json` prints what `certify` printed; --format json gives the saved report back."""
    from typer.testing import CliRunner

    from fimaudit.cli import app

    _, model, data, _ = linear
    runner = CliRunner()
    saved = tmp_path / "c.json"
    res = runner.invoke(app, ["certify", str(model), "--data", str(data), "--sigma", "0.25", "--n", "500", "--n0", "20",
                              "--radii", "0,0.1", "--json", str(saved)], env={"COLUMNS": "110"}, catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    text = runner.invoke(app, ["report", str(saved)], catch_exceptions=False)
    assert text.exit_code == 0, text.stderr
    assert "certified accuracy" in text.stdout and text.stdout == res.stdout
    again = runner.invoke(app, ["report", str(saved), "--format", "json"], catch_exceptions=False)
    assert json.loads(again.stdout) == json.loads(saved.read_text())
    md = runner.invoke(app, ["report", str(saved), "--format", "markdown"])
    assert md.exit_code == 2 and "text, json" in md.stderr and md.stderr.count("\n") == 1
