"""The CLI through typer's CliRunner: reports, schema, determinism, gates, budget, re-rendering."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import fimaudit
from fimaudit.cli import app
from fimaudit.results import ScanResult
from fimaudit.scan import plan

from . import builders as B

runner = CliRunner()
SCHEMA = json.loads(resources.files("fimaudit.report").joinpath("scan.schema.json").read_text())
VOLATILE = ("timing",)


def strip_volatile(d):
    if isinstance(d, dict):
        return {k: strip_volatile(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, list):
        return [strip_volatile(v) for v in d]
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    params = B.random_mlp(rng, d=50, hidden=12, k=5, gain=2.0)
    model = B.save(B.mlp_model(*params, sample_shape=(2, 5, 5)), tmp / "mlp.onnx")
    x = rng.integers(0, 256, size=(12, 2, 5, 5)).astype(np.uint8)
    y = rng.integers(0, 5, size=12)
    np.savez(tmp / "d.npz", x=x, y=y)
    return tmp, model, tmp / "d.npz"


def scan_json(*args):
    res = runner.invoke(app, ["scan", *map(str, args), "-q", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_json_report_matches_schema_and_issue_fields(setup):
    tmp, model, data = setup
    rep = scan_json(model, "--data", data, "--scale", "1/255", "--method", "sketch", "--budget", "61")
    jsonschema.validate(rep, SCHEMA)
    assert rep["schema_version"] == "2.0" and rep["kind"] == "scan"
    assert rep["run"]["method_used"] == "sketch" and rep["run"]["samples_scanned"] == 12
    assert not {"method_used", "data_source", "tie_share"} & set(rep["config"])  # run outputs are not options
    assert rep["model"]["input"]["name"] == "x" and rep["model"]["output"]["classes"] == 5
    for key in ("index", "label", "predicted", "lambda_max", "lambda_max_ci", "trace", "trace_se", "queries", "method"):
        assert key in rep["samples"][0]
    for key in ("mean", "median", "p90", "max"):
        assert key in rep["summary"]["lambda_max"] and key in rep["summary"]["trace"]
    assert rep["config"]["seed"] == 0 and rep["config"]["budget"] == 61
    assert rep["summary"]["accuracy"] is not None
    assert len(rep["samples"]) == 12
    lam = [s["lambda_max"] for s in rep["samples"]]
    assert rep["summary"]["lambda_max"]["median"] == pytest.approx(float(np.median(lam)))
    assert rep["summary"]["lambda_max"]["p90"] == pytest.approx(float(np.percentile(lam, 90)))
    assert rep["summary"]["queries_total"] == sum(s["queries"] for s in rep["samples"]) + rep["summary"]["calibration_queries"]


def test_same_seed_same_report_different_seed_differs(setup):
    tmp, model, data = setup
    args = (model, "--data", data, "--method", "sketch", "--budget", "41")
    a = scan_json(*args, "--seed", "7")
    b = scan_json(*args, "--seed", "7")
    c = scan_json(*args, "--seed", "8")
    assert strip_volatile(a) == strip_volatile(b)
    assert [s["lambda_max"] for s in a["samples"]] != [s["lambda_max"] for s in c["samples"]]


def test_fail_above_gate(setup):
    tmp, model, data = setup
    rep = scan_json(model, "--data", data, "--samples", "4")
    med = rep["summary"]["lambda_max"]["median"]
    base = ["scan", str(model), "--data", str(data), "--samples", "4", "-q"]
    failed = runner.invoke(app, base + ["--fail-above", str(med * 0.5)])
    assert failed.exit_code == 1 and "gate failed: median lambda_max" in failed.stderr  # said even with -q
    passed = runner.invoke(app, base + ["--fail-above", str(med * 2)])
    assert passed.exit_code == 0 and "gate failed" not in passed.stderr


def test_terminal_output_and_progress(setup):
    tmp, model, data = setup
    res = runner.invoke(app, ["scan", str(model), "--data", str(data), "--samples", "3"], catch_exceptions=False)
    assert res.exit_code == 0
    assert "lambda_max(F)" in res.stdout and "CPUExecutionProvider" in res.stdout
    assert "queries" in res.stdout


def test_synthetic_inputs_carry_a_prominent_note(setup):
    tmp, model, _ = setup
    rep = scan_json(model, "--samples", "2")
    assert rep["run"]["data_source"] == "synthetic"
    assert any(n.startswith("NOT REPRESENTATIVE") for n in rep["notes"])


def test_report_rerenders_saved_json(setup):
    tmp, model, data = setup
    out = tmp / "saved.json"
    res = runner.invoke(app, ["scan", str(model), "--data", str(data), "--samples", "3", "-q", "--json", str(out)])
    assert res.exit_code == 0
    md = runner.invoke(app, ["report", str(out), "--format", "markdown"])
    assert md.exit_code == 0 and "| lambda_max(F) |" in md.stdout
    again = runner.invoke(app, ["report", str(out), "--out", str(tmp / "again.json")])
    assert again.exit_code == 0
    assert json.loads((tmp / "again.json").read_text()) == json.loads(out.read_text())
    (tmp / "bogus.json").write_text('{"schema_version": "9.0"}')
    bad = runner.invoke(app, ["report", str(tmp / "bogus.json")])
    assert bad.exit_code == 2 and "schema_version" in bad.stderr


def test_api_returns_result_object(setup):
    tmp, model, data = setup
    res = fimaudit.scan(model, data, samples=2, seed=3)
    assert isinstance(res, ScanResult)
    assert ScanResult.from_dict(res.to_dict()).to_dict() == res.to_dict()


def test_log_probability_output_detected(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6))
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["z"], transB=1), helper.make_node("LogSoftmax", ["z"], ["lp"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("lp", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "lp.onnx"))
    x = rng.uniform(size=(3, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = fimaudit.scan(tmp_path / "lp.onnx", tmp_path / "d.npz", method="exact")
    assert res.model["output"]["kind"] == "log-probabilities"
    for s, xi in zip(res.samples, x):
        assert s.lambda_max == pytest.approx(B.lam_max(B.linear_reference(w, np.zeros(4), xi)), rel=1e-4)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    d=st.integers(1, 400),
    extra=st.integers(0, 3000),
    method=st.sampled_from(["auto", "sketch", "exact", "power", "power-fresh", "deflated"]),
    sub_share=st.one_of(st.none(), st.floats(0, 0.25)),
)
def test_plan_never_exceeds_budget(d, extra, method, sub_share):
    # Every generated case is one the planner must accept (no refusal is let through): exact gets at
    # least 2d+1, the others at least 40 with a subspace of at most a quarter of the budget.
    budget = (2 * d + 1 if method == "exact" else 40) + extra
    sub = None if sub_share is None else int(sub_share * budget)
    chosen = plan(method, d, budget, lower_bound=True, subspace_dim=sub)
    assert chosen.cost() <= budget
    if method == "auto":
        assert chosen.method == ("exact" if 2 * d + 1 <= budget else "sketch")


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=st.integers(40, 140),
    seed=st.integers(0, 10),
    probes=st.sampled_from(["gaussian", "orthogonal"]),
    method=st.sampled_from(["auto", "sketch", "power", "power-fresh", "deflated"]),
)
def test_no_sample_spends_more_than_budget(setup, budget, seed, probes, method):
    # Budgets of 40+ are enough for every method here (d = 50): a refusal fails the test.
    tmp, model, data = setup
    res = fimaudit.scan(model, data, samples=3, budget=budget, seed=seed, probes=probes, method=method, gradients="fd")
    assert len(res.samples) == 3
    assert all(s.queries <= budget for s in res.samples)
    assert max(s.queries for s in res.samples) > budget // 2  # the budget is used, not sidestepped
    graph = fimaudit.scan(model, data, samples=3, budget=budget, seed=seed, method="auto")  # K - 1 rows + checks
    assert all(5 <= s.queries <= budget for s in graph.samples)


def test_gradient_graph_rows_are_counted_queries(setup):
    """The graph's exact path: K - 1 VJP rows, the centre query, the lower bound's two FD queries and the KL check's one."""
    tmp, model, data = setup
    res = fimaudit.scan(model, data, samples=3, budget=100, seed=0, gradients="graph", bounds=False, scale=1 / 255)
    k = 5
    assert [s.queries for s in res.samples] == [(k - 1) + 1 + 2 + 1] * 3
    rng = np.random.default_rng(4)
    many = B.save(B.linear_model(rng.standard_normal((12, 6)), rng.standard_normal(12)), tmp / "k12.onnx")
    np.save(tmp / "k12.npy", rng.standard_normal((2, 6)).astype(np.float32))
    with pytest.raises(fimaudit.FimauditError, match="below the 15 queries"):  # 11 VJP rows + 4
        fimaudit.scan(many, tmp / "k12.npy", samples=1, budget=12, gradients="graph", bounds=False)
    ok = fimaudit.scan(many, tmp / "k12.npy", samples=1, budget=15, gradients="graph", bounds=False)
    assert ok.samples[0].queries == 15


def test_third_party_style_model_scans_without_special_handling(tmp_path):
    """Constant-node weights, HardSwish/HardSigmoid gating and a dynamic spatial shape."""
    m = B.mobile_model(B.mobile_weights(np.random.default_rng(5)), constant_nodes=True, spatial=("H", "W"))
    assert not m.graph.initializer
    onnx.save(m, str(tmp_path / "mobile.onnx"))
    res = runner.invoke(app, ["scan", str(tmp_path / "mobile.onnx"), "--input-shape", "3,12,12", "--samples", "3",
                              "-q", "--json", "-"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    # The default --gradients auto differentiates it (HardSwish/HardSigmoid rules, Constant-node weights).
    assert rep["run"]["method_used"] == "exact-graph" and rep["summary"]["lambda_max"]["count"] == 3
    assert rep["bound"]["fim_upper"] is None and "gating" in rep["bound"]["reason"]


def test_device_cuda_without_cuda_is_a_clear_error(setup):
    from fimaudit.model.session import cuda_available

    tmp, model, data = setup
    res = runner.invoke(app, ["scan", str(model), "--device", "cuda", "-q", "--samples", "1"])
    if cuda_available():
        assert res.exit_code == 0
    else:
        assert res.exit_code == 2 and "CUDA" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_html_report_is_self_contained(setup):
    tmp, model, data = setup
    out = tmp / "r.html"
    res = runner.invoke(app, ["scan", str(model), "--data", str(data), "--samples", "4", "-q", "--report", str(out)])
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<script" not in text
    assert "lambda_max per sample" in text
    import html.parser

    html.parser.HTMLParser().feed(text)  # parses without error


def test_report_rerenders_html_identical_to_the_scans_own(setup):
    """One scan writes JSON and HTML; re-rendering the JSON gives the same page: the renderer is pure."""
    tmp, model, data = setup
    saved, page = tmp / "both.json", tmp / "both.html"
    res = runner.invoke(app, ["scan", str(model), "--data", str(data), "--samples", "4", "-q", "--json", str(saved),
                              "--report", str(page)])
    assert res.exit_code == 0, res.stderr
    again = runner.invoke(app, ["report", str(saved), "--format", "html"])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == page.read_text()


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith("fimaudit ")
    res = runner.invoke(app, [])
    assert res.exit_code == 0 and "scan" in res.stdout and "bounds" in res.stdout
