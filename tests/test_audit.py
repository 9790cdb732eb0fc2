"""``fimaudit audit``: the four files, the schema, exit codes by policy, sections with reasons, determinism."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from fimaudit.audit import AuditResult
from fimaudit.cli import app
from fimaudit.policy import load_policy

from . import builders as B

runner = CliRunner()
SCHEMA = json.loads(resources.files("fimaudit.report").joinpath("audit.schema.json").read_text())
FILES = ("audit.json", "audit.html", "audit.md", "junit.xml")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A small conv classifier on 1x8x8 'images' (uint8), labels = its own predictions on most samples."""
    tmp = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(11)
    kernel = rng.standard_normal((2, 1, 3, 3)) * 0.8
    w2 = rng.standard_normal((3, 2 * 8 * 8)) * 0.3
    model = B.save(B.conv_model(kernel, np.zeros(2), w2, np.zeros(3), (1, 8, 8)), tmp / "conv.onnx")
    x = rng.integers(0, 256, size=(16, 1, 8, 8)).astype(np.uint8)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"x": (x / 255.0).astype(np.float32)})[0].argmax(1)
    y = pred.copy()
    y[:2] = (y[:2] + 1) % 3  # two wrong labels: accuracy 14/16
    np.savez(tmp / "d.npz", x=x, y=y)
    np.save(tmp / "unlabelled.npy", x)
    return tmp, model, tmp / "d.npz"


def write_policy(path, checks, **audit):
    lines = ["[audit]"] + [f"{k} = {json.dumps(v)}" for k, v in audit.items()]
    lines += ["[policy]", 'name = "test"', "checks = [" + ", ".join(json.dumps(c) for c in checks) + "]"]
    path.write_text("\n".join(lines) + "\n")
    return path


SMALL = dict(samples=6, budget=200, metrics_samples=16, clever_samples=2, clever_points=20, eps=[0.02, 0.05])


def audit(model, data, policy, out, *extra, env=None):
    return runner.invoke(app, ["audit", str(model), "--data", str(data), "--scale", "1/255", "--policy", str(policy),
                               "--out", str(out), "-q", *map(str, extra)], env=env or {"SOURCE_DATE_EPOCH": "0"})


@pytest.fixture(scope="module")
def full(zoo):
    tmp, model, data = zoo
    policy = write_policy(tmp / "p.toml", [
        "clean.accuracy >= 0.5",                       # passes: 14/16 on the first 6 is >= 4/6
        "fisher.lambda_max.median <= 1e9",
        "bound.finite = true",
        "attack.pgd.linf[0.05].robust_accuracy >= 0",
        "robust_ratio[tau=0.1] >= 0",
        "corruptions.mean_relative_accuracy >= 0",
        "clever.median_score > 1e9",                   # fails: CLEVER is capped at the radius 2
    ], **SMALL)
    res = audit(model, data, policy, tmp / "dossier")
    return tmp, res, tmp / "dossier"


def test_audit_writes_four_files_valid_schema_and_exit_by_policy(full):
    tmp, res, out = full
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    rep = json.loads((out / "audit.json").read_text())
    jsonschema.validate(rep, SCHEMA)
    assert rep["created"] == "1970-01-01T00:00:00+00:00"
    status = {s["name"]: s["status"] for s in rep["sections"]}
    assert status == {**{n: "ok" for n in ("preprocessing", "scan", "worst", "bounds", "attacks", "clever", "metrics",
                                           "validity")},
                      "certify": "unavailable",  # randomized smoothing only with [audit] certify_sigma
                      "verify": "unavailable"}  # bound propagation only with [audit] verify = true or a verify.* check
    checks = {c["key"]: c for c in rep["checks"]}
    assert [c["passed"] for c in rep["checks"]] == [True] * 6 + [False]
    assert checks["clean.accuracy"]["value"] == pytest.approx(4 / 6)  # samples 0,1 mislabelled of 6
    att = next(s for s in rep["sections"] if s["name"] == "attacks")["data"]
    assert att["whitebox"] == "apgd" and [r["config"]["attack"] for r in att["runs"]] == ["apgd", "pgd", "square"]
    pgd = next(r for r in att["runs"] if r["config"]["attack"] == "pgd")
    assert [r["eps"] for r in pgd["results"]] == [0.02, 0.05]
    assert checks["attack.pgd.linf[0.05].robust_accuracy"]["value"] == pgd["results"][1]["robust_accuracy"]
    scan = next(s for s in rep["sections"] if s["name"] == "scan")["data"]
    assert checks["fisher.lambda_max.median"]["value"] == scan["summary"]["lambda_max"]["median"]
    assert AuditResult.from_dict(rep).to_dict() == rep


def test_junit_has_one_testcase_per_check(full):
    tmp, res, out = full
    root = ET.parse(out / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    rep = json.loads((out / "audit.json").read_text())
    assert [c.get("name") for c in cases] == [c for c in rep["policy"]["checks"]]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["clever.median_score > 1e+09"]
    assert root.find("testsuite").get("failures") == "1" and root.find("testsuite").get("tests") == "7"


def test_markdown_and_html_lead_with_the_verdict(full):
    tmp, res, out = full
    md = (out / "audit.md").read_text()
    assert md.splitlines()[2] == "**Verdict: FAIL**"
    html = (out / "audit.html").read_text()
    assert html.index('id="verdict"') < html.index("<svg")
    for pid in ("plot-lambda", "plot-validity", "plot-robustness", "plot-corruptions", "plot-bound"):
        assert f'data-plot="{pid}"' in html, pid
    assert html.count("data:image/png;base64,") >= 2  # input and worst-direction thumbnails
    import re

    refs = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r for r in refs if not r.startswith(("data:", "#"))]


def test_report_rerenders_the_saved_audit_identically(full):
    tmp, res, out = full
    again = runner.invoke(app, ["report", str(out / "audit.json"), "--format", "html"])
    assert again.exit_code == 0 and again.stdout == (out / "audit.html").read_text()
    junit = runner.invoke(app, ["report", str(out / "audit.json"), "--out", str(tmp / "j.xml")])
    assert junit.exit_code == 0 and (tmp / "j.xml").read_text() == (out / "junit.xml").read_text()


def test_passing_policy_exits_zero_and_output_is_deterministic(zoo, tmp_path):
    tmp, model, data = zoo
    policy = write_policy(tmp_path / "p.toml", ["fisher.lambda_max.p90 <= 1e12", "bound.finite = true"],
                          samples=4, budget=100, sections=["scan", "worst", "bounds"])
    a = audit(model, data, policy, tmp_path / "a")
    b = audit(model, data, policy, tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr
    assert (tmp_path / "a" / "audit.html").read_bytes() == (tmp_path / "b" / "audit.html").read_bytes()
    assert (tmp_path / "a" / "junit.xml").read_bytes() == (tmp_path / "b" / "junit.xml").read_bytes()
    rep = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert {s["name"]: s["reason"] for s in rep["sections"] if s["status"] != "ok"} == {
        n: "not requested" for n in ("attacks", "clever", "metrics", "validity", "certify", "verify")}


def test_sections_without_labels_carry_their_reason(zoo, tmp_path):
    tmp, model, _ = zoo
    policy = write_policy(tmp_path / "p.toml", ["attack.pgd.linf[0.03].robust_accuracy >= 0.5",
                                                "fisher.lambda_max.median <= 1e9"],
                          samples=3, budget=100, sections=["scan", "bounds", "attacks", "clever", "validity"])
    res = audit(model, tmp / "unlabelled.npy", policy, tmp_path / "out")
    assert res.exit_code == 1, res.stderr
    rep = json.loads((tmp_path / "out" / "audit.json").read_text())
    jsonschema.validate(rep, SCHEMA)
    sec = {s["name"]: s for s in rep["sections"]}
    assert sec["scan"]["status"] == "ok"
    for name in ("attacks", "clever"):
        assert sec[name]["status"] == "unavailable" and "labels" in sec[name]["reason"]
    assert "attacks" in sec["validity"]["reason"]
    bad = rep["checks"][0]
    assert bad["passed"] is False and bad["value"] is None and "labels" in bad["reason"]
    assert "Not available" in (tmp_path / "out" / "audit.html").read_text()


@pytest.mark.parametrize(("text", "needle"), [
    ('[policy]\nchecks = ["fisher.lambda_max.mediam <= 3"]', "fisher.lambda_max.mediam"),
    ('[policy]\nchecks = ["clean.accuracy >= lots"]', "clean.accuracy"),
    ('[policy]\nchecks = ["bound.finite >= 1"]', "bound.finite"),
    ('[policy]\nchecks = ["clean.accuracy>=0.9"]', "clean.accuracy>=0.9"),
    ('[policy]\nchecks = []', "policy.checks"),
    ('[policy]\nchecks = ["clean.accuracy >= 0.9"]\n[audit]\nepz = [0.1]', "audit.epz"),
    ('[policy]\nchecks = ["clean.accuracy >= 0.9"]\n[audit]\nsamples = "ten"', "audit.samples"),
    ('[policy]\nchecks = ["clean.accuracy >= 0.9"]\n[audit]\nsections = ["scan", "horoscope"]', "horoscope"),
    ('[policy\nchecks = 1', "not valid TOML"),
], ids=["unknown-key", "not-a-number", "bool-op", "no-spaces", "empty", "audit-key", "audit-type", "section",
        "toml"])
def test_invalid_policy_is_one_line_exit_2_and_writes_nothing(zoo, tmp_path, text, needle):
    tmp, model, data = zoo
    (tmp_path / "bad.toml").write_text(text)
    res = audit(model, data, tmp_path / "bad.toml", tmp_path / "out")
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fimaudit: error: ") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_bad_input_is_exit_2_before_any_file(zoo, tmp_path):
    tmp, model, data = zoo
    policy = write_policy(tmp_path / "p.toml", ["clean.accuracy >= 0.5"])
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    res = audit(tmp_path / "junk.onnx", data, policy, tmp_path / "out")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    res = audit(model, data, tmp_path / "missing.toml", tmp_path / "out")
    assert res.exit_code == 2 and "policy not found" in res.stderr


def test_example_policy_parses():
    pol = load_policy("examples/policy.toml")
    assert len(pol.checks) == 7 and 0.01 in pol.eps_needed()
    # the verdict gates on the per-sample worst case over every attack, never on one (weaker) attack alone
    assert any(c.key == "attack.worst.linf[0.01].robust_accuracy" for c in pol.checks)
    assert not any(c.key.startswith("attack.") and not c.key.startswith("attack.worst.") for c in pol.checks)


# --------------------------------------------------------------------------- the dossier in a real browser
def _browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def render_in_browser(page, tmp_path):
    """(rendered DOM, console lines about failed or blocked loads) from headless Chromium."""
    import os
    import subprocess

    exe = _browser()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium is installed (.ci/run installs it)")
        pytest.skip("no chromium/google-chrome on PATH (CI installs Debian's chromium and sets CI=1)")
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    problems = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "net::ERR_" in ln]
    return proc.stdout, problems


class _Plots:
    """Plot figures in a DOM and how many drawn SVG elements each holds."""

    def __init__(self, dom: str) -> None:
        from html.parser import HTMLParser

        self.drawn: dict[str, int] = {}
        current: list[str | None] = [None]
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "figure" and "plot" in (a.get("class") or ""):
                    current[0] = a.get("data-plot")
                    outer.drawn[current[0]] = 0
                elif current[0] and tag in ("path", "rect", "circle", "line", "polyline", "use"):
                    outer.drawn[current[0]] += 1

            def handle_endtag(self, tag):
                if tag == "figure":
                    current[0] = None

        P().feed(dom)


def test_dossier_renders_in_a_browser_with_every_plot_drawn(full, tmp_path):
    tmp, res, out = full
    dom, problems = render_in_browser(out / "audit.html", tmp_path)
    assert problems == []
    assert "Verdict: FAIL" in dom
    drawn = _Plots(dom).drawn
    assert set(drawn) == {"plot-lambda", "plot-validity", "plot-robustness", "plot-corruptions", "plot-bound"}
    assert all(n >= 5 for n in drawn.values()), drawn


def test_browser_check_catches_a_failed_request_and_an_empty_plot(full, tmp_path):
    """The detector itself on a broken page: a missing image and a plot with nothing drawn."""
    tmp, res, out = full
    html = (out / "audit.html").read_text()
    start = html.index('<figure class="plot" data-plot="plot-bound">')
    end = html.index("</figure>", start)
    broken = html[:start] + '<figure class="plot" data-plot="plot-bound"><svg></svg>' + html[end:]
    broken = broken.replace("<h1>", '<img src="missing.png"><h1>')
    (tmp_path / "broken.html").write_text(broken)
    dom, problems = render_in_browser(tmp_path / "broken.html", tmp_path)
    assert problems and "missing.png" in " ".join(problems)
    assert _Plots(dom).drawn["plot-bound"] == 0


def test_certify_section_slots_in_with_its_policy_key(zoo, tmp_path):
    tmp, model, data = zoo
    key = "certify.certified_accuracy[r=0.3]"
    off = write_policy(tmp_path / "off.toml", [f"{key} >= 0"], samples=3, budget=100, sections=["scan", "certify"])
    res = audit(model, data, off, tmp_path / "off")
    assert res.exit_code == 1
    rep = json.loads((tmp_path / "off" / "audit.json").read_text())
    assert "certify_sigma" in rep["checks"][0]["reason"]
    on = write_policy(tmp_path / "on.toml", [f"{key} >= 0"], samples=3, budget=100, sections=["scan", "certify"],
                      certify_sigma=0.25, certify_n=200)
    res = audit(model, data, on, tmp_path / "on")
    assert res.exit_code == 0, res.stderr
    rep = json.loads((tmp_path / "on" / "audit.json").read_text())
    jsonschema.validate(rep, SCHEMA)
    cert = next(s for s in rep["sections"] if s["name"] == "certify")["data"]
    row = next(r for r in cert["summary"]["certified_accuracy"] if r["radius"] == 0.3)  # radius named in the check
    assert rep["checks"][0]["value"] == row["accuracy"]


def test_wrong_preprocessing_fails_the_audit_with_its_own_check(tmp_path, monkeypatch):
    """Pixels 0-255 into a model that expects normalised inputs: every command notes it, the audit fails on it."""
    from .test_bad_input import run_cli

    zoo = Path(__file__).resolve().parent.parent / "sample_models"
    model, data = zoo / "vgg_small.onnx", zoo / "fmnist_test_1000_28.npz"
    policy = write_policy(tmp_path / "p.toml", ["fisher.lambda_max.median <= 1e9"], samples=12, clever_samples=2,
                          clever_points=20, metrics_samples=20, eps=[0.03], attacks=["square"], whitebox=False,
                          corruptions=False, budget=60)
    res = run_cli("audit", str(model), "--data", str(data), "--scale", "1/255", "--policy", str(policy),
                  "--out", str(tmp_path / "d"), "-q")
    assert res.exit_code == 1, res.stderr
    assert "fimaudit: check failed: preprocessing.sane = true (value False" in res.stderr  # -q still says why
    rep = json.loads((tmp_path / "d" / "audit.json").read_text())
    added = [c for c in rep["checks"] if c["key"] == "preprocessing.sane"]
    assert len(added) == 1 and added[0]["passed"] is False and "--mean/--std" in added[0]["reason"]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("fimaudit: warning:")]
    assert len(warnings) == 1 and "preprocessing looks wrong" in warnings[0]  # one warning, not one per section
    good = run_cli("audit", str(model), "--data", str(data), "--scale", "1/255", "--mean", "0.286", "--std", "0.353",
                   "--policy", str(policy), "--out", str(tmp_path / "g"), "-q")
    assert good.exit_code == 0 and "preprocessing" not in good.stderr and "check failed" not in good.stderr
    monkeypatch.chdir(tmp_path)  # no --out: the dossier goes to ./fimaudit-audit-<model stem>/, named on stderr
    nowhere = run_cli("audit", str(model), "--data", str(data), "--scale", "1/255", "--mean", "0.286", "--std", "0.353",
                      "--policy", str(policy), "-q")
    assert nowhere.exit_code == 0 and "fimaudit-audit-vgg_small" in nowhere.stderr
    assert sorted(p.name for p in (tmp_path / "fimaudit-audit-vgg_small").iterdir()) == sorted(FILES)
    rep = json.loads((tmp_path / "g" / "audit.json").read_text())
    sec = next(s for s in rep["sections"] if s["name"] == "preprocessing")
    assert sec["data"]["sane"] is True and not any(c["key"] == "preprocessing.sane" for c in rep["checks"])


def test_audit_eps_from_runs_each_sample_at_its_own_radius(tmp_path):
    from .test_bad_input import run_cli

    zoo = Path(__file__).resolve().parent.parent / "sample_models"
    with np.load(zoo / "fmnist_test_1000_28.npz") as d:
        x, y = d["x"][:6], d["y"][:6]
    np.savez(tmp_path / "d.npz", x=x, y=y, radius=np.linspace(0.0, 0.1, 6))
    policy = write_policy(tmp_path / "p.toml", ["attack.square.linf[per-sample].robust_accuracy >= 0",
                                                 "attack.square.linf[per-sample].robust_ratio[tau=0.1] >= 0"],
                          samples=6, budget=60, eps=[0.03], attacks=["square"], whitebox=False, sections=["attacks"])
    res = run_cli("audit", str(zoo / "vgg_small.onnx"), "--data", str(tmp_path / "d.npz"), "--scale", "1/255",
                  "--mean", "0.286", "--std", "0.353", "--policy", str(policy), "--eps-from", "radius",
                  "--out", str(tmp_path / "o"), "-q")
    assert res.exit_code == 0, res.stderr
    rep = json.loads((tmp_path / "o" / "audit.json").read_text())
    run = next(s for s in rep["sections"] if s["name"] == "attacks")["data"]["runs"][0]
    ps = run["per_sample_radius"]
    assert [s["eps"] for s in ps["samples"]] == pytest.approx(np.linspace(0.0, 0.1, 6).tolist())
    assert not ps["samples"][0]["success"]  # radius 0 cannot change a prediction
    values = {c["key"]: c["value"] for c in rep["checks"]}
    assert values["attack.square.linf[per-sample].robust_accuracy"] == ps["robust_accuracy"]
