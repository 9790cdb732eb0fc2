"""``fimaudit compare``: 80-column tables, why rank correlations are missing, partial reports on --timeout,
manifest handling, and ``fimaudit report`` printing what the command printed."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fimaudit import evidence
from fimaudit.cli import app
from fimaudit.evidence import ModelSpec, compare_models
from fimaudit.report.compare import COLUMNS, compare_markdown, compare_tables
from fimaudit.runtime_guard import RunTimeout

from . import builders as B

runner = CliRunner()
LONG = "a_vendor_model_with_a_really_long_name_v2_final"  # longer than the table's name column at 80 columns


def fake_row(name: str, k: int) -> dict:
    """A row as compare_row makes it, with numbers as wide as the real ones get."""
    row = {"model": name, "clean_accuracy": 0.95 - 0.05 * k, "lambda_median": 0.3686 * (k + 1),
           "lambda_p90": 2.165 + k, "trace_median": 0.4767 / (k + 1), "fim_upper": 3.163e14 / (k + 1),
           "preprocessing_sane": True, "notes": [], "ra_pgd_linf": 0.6 - 0.1 * k, "rr_pgd_linf": 0.15,
           "ra_square_linf": 0.5 - 0.05 * k, "rr_square_linf": 0.1, "ra_pgd_l2": 0.65, "rr_pgd_l2": 0.2,
           "clever_l2_median": 0.1854 * (k + 1), "clever_gradients": "graph",
           "adversarial_relative_confidence": 0.5 + 0.1 * k, "timing": {"seconds": 1.0}}
    return row


def fake_report(names: list[str], **kw) -> dict:
    specs = [ModelSpec(f"{n}.onnx", "d.npz", name=n) for n in names]
    rows = {n: fake_row(n, k) for k, n in enumerate(names)}
    evidence_compare_row = evidence.compare_row
    try:
        evidence.compare_row = lambda spec, **_: dict(rows[spec.name])
        return compare_models(specs, boot=50, **kw).to_dict()
    finally:
        evidence.compare_row = evidence_compare_row


def render(rep: dict, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    for item in compare_tables(rep):
        console.print(item)
    return console.file.getvalue()


NAMES = ["mlp_small", "mlp_tanh_noise", "vgg_small_adv", "vit_tiny_meanpool_adv", "densenet96", LONG]


def test_the_tables_fit_80_columns_and_cut_no_cell():
    rep = fake_report(NAMES)
    text = render(rep, 80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text  # rich's ellipsis: a cut cell
    for name in NAMES[:-1]:
        assert name in text
    assert LONG[:20] in text  # too long for its column: wrapped, not cut
    for key in COLUMNS:  # every column is explained in the legend by its JSON key
        assert key in text.replace("\n", " ")
    assert "adversarial_relative_confidence" in text  # the longest metric name fits whole


def with_validity(rep: dict) -> dict:
    rep["validity"] = [{"model": r["model"], "spearman": {"value": 0.61, "ci": [0.2, 0.88], "n": 10},
                        "median_distance_over_radius": 1.234, "lambda_method": "exact", "lambda_gradients": "graph",
                        "distance_gradients": "graph"} for r in rep["rows"]]
    return rep


def test_the_command_and_the_saved_report_print_the_same_text_at_any_width():
    rep = with_validity(fake_report(NAMES))
    text = render(rep, 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert text == render(rep, 120) == render(rep, 200)


def test_an_empty_rank_correlation_table_says_why():
    rep = fake_report(NAMES[:2])
    assert all(v is None for v in rep["correlations"].values())
    for text in (render(rep, 80), compare_markdown(rep)):
        flat = " ".join(text.split())
        assert "need at least 3 models with finite values" in flat and "2 models given" in flat
        assert "Spearman" not in text  # no empty table


def test_metrics_with_fewer_than_three_finite_values_are_left_out_and_named():
    names = ["m0", "m1", "m2", "m3"]
    specs = [ModelSpec(f"{n}.onnx", "d.npz", name=n) for n in names]
    rows = {n: fake_row(n, k) for k, n in enumerate(names)}
    for n in ("m0", "m1"):
        rows[n]["fim_upper"] = math.nan  # e.g. no finite closed-form bound
    evidence_compare_row = evidence.compare_row
    try:
        evidence.compare_row = lambda spec, **_: dict(rows[spec.name])
        rep = compare_models(specs, boot=50).to_dict()
    finally:
        evidence.compare_row = evidence_compare_row
    assert rep["correlations"]["fim_upper"] is None  # 2 finite values: no rank correlation from NaNs
    assert rep["correlations"]["clean_accuracy"]["n"] == 4
    assert "clever_gradients" not in rep["correlations"] and "preprocessing_sane" not in rep["correlations"]
    text = " ".join(render(rep, 80).split())
    assert "left out (fewer than 3 models with finite values): fim_upper" in text


def test_a_timeout_keeps_the_finished_models_in_a_report_marked_partial(monkeypatch):
    names = ["m0", "m1", "m2", "m3"]
    specs = [ModelSpec(f"{n}.onnx", "d.npz", name=n) for n in names]

    def row(spec, **_):
        if spec.name == "m2":
            raise RunTimeout(30.0)  # what --timeout's alarm raises, here without waiting for it
        return fake_row(spec.name, names.index(spec.name))

    monkeypatch.setattr(evidence, "compare_row", row)
    rep = compare_models(specs, boot=50).to_dict()
    assert rep["partial"] is True
    assert [r["model"] for r in rep["rows"]] == ["m0", "m1"]
    assert [u["model"] for u in rep["unfinished"]] == ["m2", "m3"]
    assert "while running" in rep["unfinished"][0]["reason"] and "not started" in rep["unfinished"][1]["reason"]
    assert "--timeout 30 s" in rep["stopped"]["reason"]
    text = " ".join(render(rep, 80).split())
    assert "PARTIAL REPORT" in text and "2 of 4 models finished" in text and "m3: not started" in text
    assert "PARTIAL REPORT" in compare_markdown(rep)


def test_a_complete_run_is_not_marked_partial():
    rep = fake_report(NAMES[:3])
    assert "partial" not in rep and "unfinished" not in rep


# --------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(4)
    paths = []
    for k, name in enumerate(("a", "b", LONG)):
        params = B.random_mlp(rng, d=16, hidden=8, k=3, gain=1.0 + k)
        paths.append(B.save(B.mlp_model(*params, sample_shape=(1, 4, 4)), tmp / f"{name}.onnx"))
    np.savez(tmp / "d.npz", x=rng.uniform(size=(6, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 6))
    return tmp, paths, tmp / "d.npz"


FAST = ["--samples", "3", "--budget", "40", "--clever-samples", "1", "--clever-points", "10", "--no-metrics"]


def test_cli_timeout_writes_the_partial_report_and_report_reprints_it(zoo, monkeypatch):
    tmp, paths, data = zoo
    real = evidence.compare_row

    def row(spec, **kw):
        if spec.name == LONG:
            raise RunTimeout(12.0)
        return real(spec, **kw)

    monkeypatch.setattr(evidence, "compare_row", row)
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp / "partial.json"
    res = runner.invoke(app, ["compare", *map(str, paths), "--data", str(data), *FAST, "--json", str(out)])
    assert res.exit_code == 2, res.stderr
    rep = json.loads(out.read_text())
    assert rep["partial"] is True and [u["model"] for u in rep["unfinished"]] == [LONG]
    assert "PARTIAL REPORT" in res.stdout
    assert "fimaudit: error: compare stopped: --timeout 12 s elapsed; 2 of 3 models finished" in res.stderr
    assert f"partial report written to {out}" in res.stderr
    again = runner.invoke(app, ["report", str(out), "--format", "text"])
    assert again.exit_code == 0
    assert again.stdout == res.stdout  # what the command printed, at 80 columns, is what the report re-renders
    for fmt in ("markdown", "html"):
        page = runner.invoke(app, ["report", str(out), "--format", fmt])
        assert page.exit_code == 0 and "PARTIAL REPORT: --timeout 12 s elapsed" in page.stdout, fmt


def test_cli_complete_run_prints_what_report_reprints(zoo, monkeypatch):
    tmp, paths, data = zoo
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp / "full.json"
    res = runner.invoke(app, ["compare", *map(str, paths), "--data", str(data), *FAST, "--json", str(out)])
    assert res.exit_code == 0, res.stderr
    assert max(len(line) for line in res.stdout.splitlines()) <= 80 and "…" not in res.stdout
    again = runner.invoke(app, ["report", str(out), "--format", "text"])
    assert again.exit_code == 0 and again.stdout == res.stdout


def test_manifest_entries_are_checked_and_may_give_per_channel_lists(zoo):
    tmp, paths, data = zoo
    good = {"models": [{"name": "a", "file": paths[0].name, "data": "d.npz",
                        "preprocess": {"scale": 1.0, "mean": [0.0], "std": [1.0]}},
                       {"file": paths[1].name, "data": "d.npz"}]}  # name from the file, no preprocessing
    (tmp / "good.json").write_text(json.dumps(good))
    res = runner.invoke(app, ["compare", "--manifest", str(tmp / "good.json"), *FAST, "--json", "-", "-q"])
    assert res.exit_code == 0, res.stderr
    assert [r["model"] for r in json.loads(res.stdout)["rows"]] == ["a", "b"]
    bad = {"models": [good["models"][0], {"name": "c", "file": paths[2].name}]}  # no data
    (tmp / "bad.json").write_text(json.dumps(bad))
    res = runner.invoke(app, ["compare", "--manifest", str(tmp / "bad.json"), *FAST])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "model 2 is malformed" in res.stderr and "'data'" in res.stderr
