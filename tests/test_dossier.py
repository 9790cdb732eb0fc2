"""The dossier stands alone (context, every evidence table, the vacuous-bound note, masking flags), every report
kind's HTML uses the one shared page, the plots are readable (integer counts, legends outside the axes, norms and
units on radius axes, equal curves distinguishable) and ``bounds`` labels every block (#19 items 5, 6, 12)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from importlib import resources

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from fimaudit.audit import AuditResult
from fimaudit.cli import app
from fimaudit.report import plots
from fimaudit.report.audit import render_audit_html
from fimaudit.report.page import CSS

from . import builders as B

runner = CliRunner()
SCHEMA = json.loads(resources.files("fimaudit.report").joinpath("audit.schema.json").read_text())
SMALL = dict(samples=6, budget=200, metrics_samples=16, clever_samples=2, clever_points=20, eps=[0.02, 0.05],
             certify_sigma=0.25, certify_n=100, certify_radii=[0.0, 0.1])


@pytest.fixture(scope="module")
def dossier(tmp_path_factory):
    """One audit of a small conv model (every section, certify included) with its policy file and data."""
    tmp = tmp_path_factory.mktemp("dossier")
    rng = np.random.default_rng(5)
    model = B.save(B.conv_model(rng.standard_normal((2, 1, 3, 3)) * 0.8, np.zeros(2),
                                rng.standard_normal((3, 2 * 8 * 8)) * 0.3, np.zeros(3), (1, 8, 8)), tmp / "conv.onnx")
    x = rng.integers(0, 256, size=(12, 1, 8, 8)).astype(np.uint8)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": (x / 255.0).astype(np.float32)})[0].argmax(1)
    np.savez(tmp / "d.npz", x=x, y=y)
    lines = ["[audit]"] + [f"{k} = {json.dumps(v)}" for k, v in SMALL.items()]
    lines += ["[policy]", 'name = "dossier test"', 'checks = ["clean.accuracy >= 0.5", "bound.finite = true"]']
    policy = tmp / "intake.toml"
    policy.write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["audit", str(model), "--data", str(tmp / "d.npz"), "--scale", "1/255", "--mean", "0.25",
                              "--std", "0.5", "--seed", "3", "--policy", str(policy), "--out", str(tmp / "out"), "-q"],
                        env={"SOURCE_DATE_EPOCH": "0"})
    assert res.exit_code in (0, 1), (res.stdout, res.stderr)
    rep = json.loads((tmp / "out" / "audit.json").read_text())
    return tmp, model, policy, rep, (tmp / "out" / "audit.html").read_text()


def _section(rep: dict, name: str) -> dict:
    return next(s for s in rep["sections"] if s["name"] == name)["data"]


def _text(page: str) -> str:
    """The page's visible text, tags dropped and entities of the few characters used here decoded."""
    page = re.sub(r"<style>.*?</style>|<svg.*?</svg>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)).replace("&#x27;", "'").replace("&quot;", '"') \
        .replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


def test_audit_json_carries_the_context(dossier):
    tmp, model, policy, rep, _ = dossier
    jsonschema.validate(rep, SCHEMA)
    ctx = rep["context"]
    assert ctx["data"].endswith("d.npz") and ctx["samples"] == 6 and ctx["seed"] == 3
    pp = ctx["preprocessing"]
    assert pp["scale"] == pytest.approx(1 / 255) and pp["mean"] == [0.25] and pp["std"] == [0.5]
    assert pp["layout"] == "nchw" and pp["input_range"] == [0.0, 1.0]
    assert ctx["policy"] == {"file": "intake.toml", "sha256": hashlib.sha256(policy.read_bytes()).hexdigest()}
    assert ctx["versions"]["onnxruntime"] == ort.__version__ and ctx["versions"]["onnx"] == onnx.__version__
    assert set(ctx["versions"]) >= {"fimaudit", "numpy", "python"}
    assert "data x --scale" in ctx["eps_units"] and "linf" in ctx["eps_units"]
    assert AuditResult.from_dict(rep).to_dict() == rep


def test_dossier_shows_its_context_and_every_table(dossier):
    tmp, model, policy, rep, page = dossier
    text = _text(page)
    ctx = rep["context"]
    for needle in (ctx["data"], "the first 6 samples", "x × 0.00392157", "(x − [0.25]) / [0.5]", "NCHW",
                   "attack units: data x --scale", "intake.toml", ctx["policy"]["sha256"], f"onnxruntime {ort.__version__}",
                   f"onnx {onnx.__version__}", "python ", "FIM radius units"):
        assert needle in text, needle
    assert re.search(r"<th>seed</th><td>3</td>", page)
    # Fisher table with the scan's median
    scan = _section(rep, "scan")["summary"]["lambda_max"]
    fisher = page[page.index("<section id=fisher>"):]
    assert f"{scan['median']:.4g}" in fisher[:fisher.index("</section>")]
    # attacks: one column per attack and the per-sample worst case, side by side in one table
    att = _section(rep, "attacks")
    wc = page[page.index("<section id=worst-case>"):]
    wc = wc[:wc.index("</table>")]
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", wc)
    assert heads[1:] == [r["config"]["attack"] for r in att["runs"]] + ["worst case per sample"]
    for eps, ra in att["worst_case"]["robust_accuracy"].items():  # each eps row: every attack, then the worst case
        row = next(r for r in wc.split("<tr>")[1:] if re.search(rf"<td class=l>{re.escape(eps)}</td>", r))
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        per_attack = [next(x["robust_accuracy"] for x in run["results"] if float(x["eps"]) == float(eps))
                      for run in att["runs"]]
        per_attack = [f"{100 * v:.1f}%" for v in per_attack]
        assert cells == [eps, *per_attack, f"{100 * ra:.1f}%"], (eps, cells)
    # CLEVER median, validity Spearman, certify table
    clever = _section(rep, "clever")["summary"]
    assert f"{clever['median_score']:.4g}" in _text(page[page.index("<section id=clever>"):page.index("<section id=validity>")])
    rho = _section(rep, "validity")["spearman"]
    val = page[page.index("<section id=validity>"):]
    assert "Spearman rho" in val and (f"{rho:.3g}" if rho is not None else "fewer than 3") in val[:val.index("</section>")]
    cert = page[page.index("<section id=certify>"):]
    assert "certified accuracy" in cert and "Gaussian smoothing" in cert
    # the bound table and the shared page
    assert "<section id=bound>" in page and CSS in page and 'data-kind="audit"' in page


def test_report_rerenders_the_new_dossier_byte_for_byte(dossier):
    tmp, *_ = dossier
    again = runner.invoke(app, ["report", str(tmp / "out" / "audit.json"), "--format", "html"])
    assert again.exit_code == 0 and again.stdout == (tmp / "out" / "audit.html").read_text()


def _with_bound(rep: dict, fim_upper: float) -> AuditResult:
    res = AuditResult.from_dict(rep)
    secs = tuple(dataclasses.replace(s, data={**s.data, "fim_upper": fim_upper}) if s.name == "bounds" else s
                 for s in res.sections)
    return dataclasses.replace(res, sections=secs)


def test_vacuous_bound_is_named_next_to_its_check_and_a_tight_one_is_not(dossier):
    tmp, model, policy, rep, _ = dossier
    lam = [s["lambda_max"] for s in _section(rep, "scan")["samples"] if s["lambda_max"]]
    vac = render_audit_html(_with_bound(rep, 1e5 * max(lam)))
    row = next(r for r in vac.split("<tr>") if "bound.finite = true" in r)
    assert "finite but vacuous" in row and "the largest measured lambda_max" in row
    assert 'id="vacuous"' in vac
    tight = render_audit_html(_with_bound(rep, 2 * max(lam)))
    assert "vacuous" not in _text(tight)
    assert 'id="vacuous"' not in tight
    from fimaudit.report.audit import render_audit_markdown, render_audit_text

    for render in (render_audit_text, render_audit_markdown):  # the terminal and audit.md say it too
        assert "finite but vacuous" in render(_with_bound(rep, 1e5 * max(lam)))
        assert "vacuous" not in render(_with_bound(rep, 2 * max(lam)))


def test_masking_flags_are_a_warning_box_in_the_attacks_section(dossier):
    tmp, model, policy, rep, page = dossier
    res = AuditResult.from_dict(rep)

    def with_flags(flags):
        secs = tuple(dataclasses.replace(s, data={**s.data, "masking": flags}) if s.name == "attacks" else s
                     for s in res.sections)
        return render_audit_html(dataclasses.replace(res, sections=secs))

    clean = with_flags([])
    assert 'id="masking"' not in clean and "no sign of masked gradients" in clean
    out = with_flags([{"flag": "blackbox_beats_whitebox", "detail": "Square broke 3 samples APGD did not"}])
    att = out[out.index("<section id=attacks>"):]
    box = att[att.index('id="masking"'):att.index("</div>")]
    assert "gradient masking" in box and "blackbox_beats_whitebox" in box and "Square broke 3 samples" in box


# --------------------------------------------------------------------------- every kind: one shared page
@pytest.fixture(scope="module")
def saved(dossier):
    """attack, certify, bounds and scan JSON of the dossier's model."""
    tmp, model, *_ = dossier
    data = ["--data", str(tmp / "d.npz"), "--scale", "1/255", "--samples", "4"]
    out = {}
    for kind, args in (("attack", ["--attack", "pgd", "--eps", "0.03", "--budget", "100"]),
                       ("certify", ["--sigma", "0.25", "--n", "100"]), ("scan", ["--budget", "100"]),
                       ("clever", ["--samples", "2"]), ("metrics", []),
                       ("bounds", None)):
        path = tmp / f"{kind}.json"
        cmd = [kind, str(model), *(data + args if args is not None else []), "--json", str(path), "-q"]
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0, (kind, res.stdout, res.stderr)
        out[kind] = path
    return out


def test_attack_report_html_uses_the_shared_page_and_names_its_context(saved):
    res = runner.invoke(app, ["report", str(saved["attack"]), "--format", "html"])
    assert res.exit_code == 0
    page = res.stdout
    assert CSS in page and 'data-kind="attack"' in page and "Content-Security-Policy" in page
    rep = json.loads(saved["attack"].read_text())
    text = _text(page)
    for needle in (rep["model"]["path"], "pgd", "L-inf", f"clean accuracy {100 * rep['clean_accuracy']:.1f}%",
                   "attack units", "data × --scale"):
        assert needle in text, needle


@pytest.mark.parametrize("kind", ["certify", "bounds", "scan", "clever", "metrics"])
def test_every_report_kind_has_an_html_page_in_the_shared_shell(saved, kind):
    res = runner.invoke(app, ["report", str(saved[kind]), "--format", "html"])
    assert res.exit_code == 0, res.stderr
    page = res.stdout
    assert CSS in page and f'data-kind="{kind}"' in page and "<section id=context>" in page
    assert "conv.onnx" in page


def test_compare_html_is_in_the_shared_shell_too():
    from fimaudit.results import CompareResult
    from fimaudit.report.evidence import render_html

    rep = {"target": "ra_pgd_linf", "rows": [{"model": "a", "clean_accuracy": 0.9}, {"model": "b", "clean_accuracy": 0.8}],
           "correlations": {"clean_accuracy": {"n": 2, "spearman": {"value": 1.0, "ci": None},
                                               "kendall": {"value": 1.0, "ci": None}}},
           "config": {"samples": 10, "eps_linf": 0.03, "seed": 0}, "validity": None}
    page = render_html(CompareResult.of(rep))
    assert CSS in page and 'data-kind="compare"' in page and "a, b" in _text(page) and "attack units" in page


# --------------------------------------------------------------------------- plots
def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _legend_clear_of_axes(fig) -> None:
    """Every legend is the figure's (none inside an axes) and its box overlaps no axes box."""
    r = _drawn(fig)
    assert fig.legends, "no figure legend"
    assert all(ax.get_legend() is None for ax in fig.axes)
    for leg in fig.legends:
        lb = leg.get_window_extent(r)
        for ax in fig.axes:
            ab = ax.get_window_extent(r)
            overlap = min(lb.x1, ab.x1) > max(lb.x0, ab.x0) and min(lb.y1, ab.y1) > max(lb.y0, ab.y0)
            assert not overlap, (leg, ax)


RUNS = [{"config": {"attack": a, "norm": "linf"},
         "results": [{"eps": e, "robust_accuracy": ra, "robust_ratio": {"0.1": ra}} for e, ra in zip((0.01, 0.03), r)]}
        for a, r in (("apgd", (0.5, 0.25)), ("pgd", (0.5, 0.25)), ("square", (0.75, 0.5)))]


def test_histogram_counts_are_integers_and_legends_sit_outside_the_axes():
    fig = plots.lambda_histogram.figure([0.3, 0.5, 2.0], bound=10.0)
    _drawn(fig)
    ticks = fig.axes[0].get_yticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    _legend_clear_of_axes(fig)
    for fig in (plots.bound_vs_measured.figure([0.3, 0.5, 2.0], 1e4, []),
                plots.corruption_curves.figure({n: {str(s): 1 - 0.1 * s for s in range(6)} for n in
                                                ("brightness", "contrast", "gaussian_noise")}),
                plots.radius_scatter.figure([{"fim_radius": 0.5, "min_adversarial_eps": 0.01, "censored": False},
                                             {"fim_radius": 1.0, "min_adversarial_eps": None, "censored": True}], 0.03,
                                            norm="linf"),
                plots.robustness_curves.figure(RUNS, 0.1, None, "linf")):
        _legend_clear_of_axes(fig)


def test_radius_axes_name_norm_and_units_and_equal_curves_stay_distinguishable():
    fig = plots.radius_scatter.figure([{"fim_radius": 0.5, "min_adversarial_eps": 0.01, "censored": False}], 0.03,
                                      "white-box minimal distance", norm="linf")
    ax = fig.axes[0]
    assert "L2, model-input units" in ax.get_xlabel() and "L-inf" in ax.get_ylabel() and "attack units" in ax.get_ylabel()
    fig = plots.robustness_curves.figure(RUNS, 0.1, None, "linf")
    ax1 = fig.axes[0]
    assert "L-inf" in ax1.get_xlabel() and "attack units" in ax1.get_xlabel()
    lines = {ln.get_label(): ln for ln in ax1.get_lines()}
    a, p = lines["apgd"], lines["pgd"]
    assert np.allclose(a.get_ydata(), p.get_ydata())  # the same values...
    assert (a.get_marker(), a.get_markersize()) != (p.get_marker(), p.get_markersize())  # ...drawn differently
    assert "apgd = pgd" in fig._suptitle.get_text()


# --------------------------------------------------------------------------- bounds: every block labelled
def test_bounds_label_every_vit_block():
    res = runner.invoke(app, ["bounds", "sample_models/vit_tiny.onnx", "--json", "-", "-q"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    blocks = {b["name"]: b for b in rep["blocks"]}
    assert rep["fim_upper"] is None and all(b["status"] in ("bounded", "unbounded", "not computed") for b in blocks.values())
    for name in ("attention0", "attention1"):
        assert blocks[name]["status"] == "unbounded" and "input-dependent" in blocks[name]["reason"]
    stem = blocks["conv_stage0"]
    assert stem["status"] == "not computed" and "weight norms were not computed" in stem["reason"]
    head = blocks["head"]
    assert head["status"] == "not computed" and "unbounded upstream" in head["reason"]
    unb = [b for b in blocks.values() if b["status"] == "unbounded"]
    assert all(b["kind"] == "transformer-attention" or "contains attention" in b["reason"] for b in unb), unb
    page = runner.invoke(app, ["bounds", "sample_models/vit_tiny.onnx", "--json", "-", "-q"]).stdout
    from fimaudit.results import BoundResult
    from fimaudit.report.bounds import render_bounds_html, render_bounds_text

    back = BoundResult.from_dict(json.loads(page))
    assert "not computed" in render_bounds_text(back) and "not computed" in render_bounds_html(back)


def test_bounds_label_a_bounded_model_block_by_block():
    res = runner.invoke(app, ["bounds", "sample_models/vgg_small.onnx", "--json", "-", "-q"])
    rep = json.loads(res.stdout)
    assert rep["fim_upper"] is not None
    assert [b["status"] for b in rep["blocks"]] == ["bounded"] * len(rep["blocks"])
    assert all(b["reason"] is None and b["lipschitz"] > 0 for b in rep["blocks"])


def test_an_audit_saved_before_the_context_still_renders_its_facts(dossier):
    """audit.json written before ``context`` existed: the page falls back to the config (data, seed, scale)."""
    tmp, model, policy, rep, _ = dossier
    old = {k: v for k, v in rep.items() if k != "context"}
    page = render_audit_html(AuditResult.from_dict(old))
    text = _text(page)
    assert rep["config"]["data"] in text and "x × 0.00392157" in text and re.search(r"<th>seed</th><td>3</td>", page)
