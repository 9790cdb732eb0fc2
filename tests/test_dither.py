"""Points where F is not defined: with exact input ties the scan evaluates a seeded dithered point, and every source then agrees."""

from __future__ import annotations

import numpy as np
import pytest

import fimaudit
from fimaudit.errors import ConfigError
from fimaudit.estimators.exact_source import exact_from_source

from . import nets as N


@pytest.fixture(scope="module")
def pool_case(tmp_path_factory):
    """Conv (positive bias) -> ReLU -> 2x2 MaxPool -> Gemm on 8x8 images with a 75% constant background.

    In the background every pooled window holds four equal values: a max-pool tie at x.
    """
    tmp = tmp_path_factory.mktemp("dither")
    rng = np.random.default_rng(7)
    net = N.conv_net(rng, c=1, side=8, c_out=4, k=5, pool=True)
    net.layers[0] = ("conv", net.layers[0][1], np.abs(net.layers[0][2]) + 0.1, 1, 1)
    x = np.zeros((20, 1, 8, 8), dtype=np.float32)
    x[:, :, 2:6, 2:6] = rng.uniform(0.2, 1, size=(20, 1, 4, 4))
    np.savez(tmp / "d.npz", x=x)
    return net, net.onnx(tmp / "pool.onnx"), tmp / "d.npz", x


def _lams(res):
    return np.array([s.lambda_max for s in res.samples])


def test_ties_are_dithered_by_default_and_sources_agree(pool_case):
    net, path, data, x = pool_case
    ex = fimaudit.scan(path, data, method="exact", seed=2, bounds=False)
    sk = fimaudit.scan(path, data, method="sketch", budget=2 * 64 + 6, seed=2, bounds=False)  # k = d orthogonal
    d = ex.run.dither_used
    assert d["source"] == "auto" and d["tie_share"] == pytest.approx(0.75) and d["sigma"] > 0
    # per sample: 3% of that sample's own RMS (the rule in scan.DITHER_RULE)
    own = np.array([0.03 * np.sqrt(np.mean(row.astype(np.float64) ** 2)) for row in x])
    assert np.allclose([s.dither for s in ex.samples], own, rtol=1e-12)
    assert d["samples"] == len(x) and d["sigma"] == pytest.approx(np.median(own))
    assert any("dithered point" in n and "--no-dither" in n for n in ex.notes)
    e, k = _lams(ex), _lams(sk)
    rel = np.abs(e - k) / e
    assert np.median(rel) <= 1e-3 and np.percentile(rel, 90) <= 1e-2, rel
    # the same seeded point, measured by an exact (float32) Jacobian source and in float64
    pts = np.stack([row.astype(np.float64) + own[i] * np.random.default_rng([2, 4, i]).standard_normal(row.shape)
                    for i, row in enumerate(x)])
    graph = np.array([exact_from_source(src, src.p, np.random.default_rng(0)).estimate.lambda_max
                      for src in (N.NumpySource(net, p) for p in pts)])
    refs = np.array([net.fisher_reference(p)[0] for p in pts])
    assert np.median(np.abs(graph - refs) / refs) <= 1e-5
    assert np.median(np.abs(e - graph) / graph) <= 1e-3 and np.median(np.abs(k - graph) / graph) <= 1e-3
    # and the ONNX gradient graph, chosen by the scan after its self-check at the dithered points
    gr = fimaudit.scan(path, data, gradients="graph", seed=2, bounds=False)
    assert gr.run.dither_used["sigma"] == d["sigma"]
    assert np.median(np.abs(_lams(gr) - refs) / refs) <= 1e-4
    assert np.median(np.abs(e - _lams(gr)) / _lams(gr)) <= 1e-3


def test_no_dither_keeps_x_where_estimators_disagree(pool_case):
    net, path, data, x = pool_case
    ex = fimaudit.scan(path, data, method="exact", seed=2, bounds=False, no_dither=True)
    sk = fimaudit.scan(path, data, method="sketch", budget=2 * 64 + 6, seed=2, bounds=False, no_dither=True)
    assert ex.run.dither_used["sigma"] is None and all(s.dither is None for s in ex.samples)
    assert ex.run.dither_used["kept_at_ties"] == list(range(len(x)))
    assert "F is not defined at x for samples 0, 1, 2" in ex.notes[0] and "not F" in ex.notes[0]
    e, k = _lams(ex), _lams(sk)
    assert np.median(np.abs(e - k) / e) > 3e-3  # F is not defined at x: directions see different one-sided mixtures


def test_explicit_sigma_and_untied_inputs(pool_case, tmp_path):
    net, path, data, x = pool_case
    res = fimaudit.scan(path, data, method="exact", seed=2, bounds=False, dither=0.01, samples=2)
    assert res.run.dither_used == {"sigma": 0.01, "source": "user", "tie_share": pytest.approx(0.75), "samples": 2}
    with pytest.raises(ConfigError):
        fimaudit.scan(path, data, dither=0.01, no_dither=True, samples=1)
    np.savez(tmp_path / "u.npz", x=np.random.default_rng(0).uniform(size=(2, 1, 8, 8)).astype(np.float32))
    plain = fimaudit.scan(path, tmp_path / "u.npz", method="exact", bounds=False)
    assert plain.run.dither_used["sigma"] is None and plain.run.tie_share == 0.0


def test_cli_no_dither_and_conflict(pool_case, tmp_path):
    import json

    from .test_bad_input import assert_one_line_error, run_cli

    net, path, data, x = pool_case
    out = tmp_path / "r.json"
    res = run_cli("scan", str(path), "--data", str(data), "--samples", "2", "--no-dither", "--no-bounds", "-q",
                  "--json", str(out))
    assert res.exit_code == 0, res.stderr
    assert json.loads(out.read_text())["samples"][0]["dither"] is None
    res = run_cli("scan", str(path), "--data", str(data), "--samples", "2", "--no-bounds")
    assert res.exit_code == 0 and "dither" in res.stdout and "automatic: exact input ties" in res.stdout
    assert_one_line_error(run_cli("scan", str(path), "--data", str(data), "--dither", "0.1", "--no-dither"), "--no-dither")


@pytest.mark.parametrize("sigma", ["1e-320", "1e-30"])
def test_dither_below_float32_resolution_is_refused(pool_case, tmp_path, sigma):
    """Found by bench/fuzz.py: a denormal --dither made the step h <= sigma/10 underflow (internal error)."""
    from .test_bad_input import assert_one_line_error, run_cli

    net, path, data, x = pool_case
    out = tmp_path / "r.json"
    res = run_cli("scan", str(path), "--data", str(data), "--samples", "2", "--budget", "40", "--dither", sigma,
                  "--json", str(out))
    assert_one_line_error(res, "float32 resolution")
    assert not out.exists()


def test_a_samples_result_does_not_depend_on_the_others_scanned(pool_case, tmp_path):
    """Sample i's JSON entry is the same with 10 or 20 samples scanned, and under any --max-batch.

    The data mix tied (constant background) and untied samples of very different scales, so a
    rule that looked at the whole set (its RMS, its median tie share) would move sample 4.
    """
    import json

    from typer.testing import CliRunner

    from fimaudit.cli import app

    net, path, data, x = pool_case
    rng = np.random.default_rng(3)
    mixed = x.copy()
    mixed[10:] = rng.uniform(0, 1, size=mixed[10:].shape) * 5.0  # untied, five times the scale
    np.savez(tmp_path / "mixed.npz", x=mixed)
    runner = CliRunner()

    def entries(*args):
        res = runner.invoke(app, ["scan", str(path), "--data", str(tmp_path / "mixed.npz"), "--no-bounds", "-q",
                                  "--json", "-", *args])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        return [{k: v for k, v in s.items() if k not in ("seconds",)} for s in out["samples"]]

    for method in (["--method", "exact", "--gradients", "fd", "--budget", "200"], []):
        ten = entries("--samples", "10", *method)
        twenty = entries("--samples", "20", *method)
        small_batch = entries("--samples", "20", "--max-batch", "3", *method)
        assert ten == twenty[:10] and twenty == small_batch
        assert ten[4]["dither"] is not None and twenty[15]["dither"] is None  # tied sample dithered, untied kept


@pytest.mark.parametrize("gradients", ["auto", "fd"])
def test_no_dither_at_kinks_says_in_one_line_what_was_computed(pool_case, tmp_path, gradients):
    """--no-dither at exact ties: one stderr line and the first note name the samples and what was computed."""
    from typer.testing import CliRunner

    from fimaudit.cli import app

    net, path, data, x = pool_case
    mixed = x[:4].copy()
    mixed[2] = np.random.default_rng(1).uniform(0.2, 1, size=mixed[2].shape)  # no ties: F is defined there
    np.savez(tmp_path / "m.npz", x=mixed)
    res = CliRunner().invoke(app, ["scan", str(path), "--data", str(tmp_path / "m.npz"), "--no-dither", "--no-bounds",
                                   "--gradients", gradients, "-q", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if "not defined" in ln]
    assert len(lines) == 1 and "samples 0, 1, 3 " in lines[0] and "--no-dither" in lines[0]
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["notes"][0] in lines[0]
    used = rep["run"]["gradients_used"]["source"]
    assert ("finite-difference estimates" in lines[0]) == (used == "fd")
    assert ("gradient graph's one-sided derivatives" in lines[0]) == (used == "graph")
    clean = CliRunner().invoke(app, ["scan", str(path), "--data", str(tmp_path / "m.npz"), "--no-bounds", "-q"])
    assert clean.exit_code == 0 and "not defined" not in clean.stderr  # dithered by default: F is defined
