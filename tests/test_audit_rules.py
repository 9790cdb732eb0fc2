"""The audit's rules (#19): worst case per sample, gradient-masking flags, command line over policy, the default
dossier folder, pre-normalised data (derived attack box, true skip reasons)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit.audit import masking_flags, worst_case
from fimaudit.cli import app
from fimaudit.policy import AUDIT_KEYS, evaluate, load_policy, policy_from_dict

from . import builders as B
from . import nets as N
from .test_audit import FILES, write_policy

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "sample_models"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], env={"SOURCE_DATE_EPOCH": "0"})


def _sec(rep: dict, name: str) -> dict:
    return next(s for s in rep["sections"] if s["name"] == name)


# --------------------------------------------------------------------------- worst case per sample
def _run(name: str, eps: float, rows: list[tuple[bool, bool, float]]) -> dict:
    """An attack run as the audit stores it: per sample (correct, success, prob_change); label 0 throughout."""
    samples = [{"index": i, "label": 0, "correct": c, "success": s, "adv_predicted": 1 if s else 0, "prob_change": p}
               for i, (c, s, p) in enumerate(rows)]
    ra = float(np.mean([c and not s for c, s, _ in rows]))
    rr = float(np.mean([c and not s and p <= 0.1 for c, s, p in rows]))
    return {"config": {"attack": name, "norm": "linf"},
            "results": [{"eps": eps, "robust_accuracy": ra, "robust_ratio": {"0.1": rr}, "samples": samples}]}


def test_robust_ratio_is_the_per_sample_worst_case_over_the_attacks():
    """Two attacks, each of which moves a different half of the samples by more than tau: each alone keeps a ratio
    of 0.5, but no sample withstands both, so the worst case is 0 (and so is the policy's robust_ratio)."""
    a = _run("pgd", 0.03, [(True, False, 0.01), (True, False, 0.01), (True, False, 0.5), (True, False, 0.5)])
    b = _run("square", 0.03, [(True, False, 0.5), (True, False, 0.5), (True, False, 0.01), (True, False, 0.01)])
    wc = worst_case([a, b], (0.1,))
    assert wc["robust_accuracy"] == {"0.03": 1.0} and wc["robust_ratio"] == {"0.03": {"0.1": 0.0}}
    from fimaudit.audit import AuditResult, Section

    result = AuditResult({"path": "m"}, {}, (Section("attacks", "ok", None, {"norm": "linf", "runs": [a, b],
                                                                              "worst_case": wc}),))
    pol = policy_from_dict({"policy": {"checks": ["robust_ratio[tau=0.1] >= 0.25",
                                                  "attack.worst.linf[0.03].robust_ratio[tau=0.1] >= 0.25",
                                                  "attack.worst.linf[0.03].robust_accuracy >= 0.25"]}})
    checks = evaluate(pol, result)
    assert [c.value for c in checks] == [0.0, 0.0, 1.0] and [c.passed for c in checks] == [False, False, True]


def test_masking_flags_from_constructed_runs():
    """(a) a black-box attack breaks what APGD kept, (b) zero gradients at correct samples, (c) a curve that rises."""
    apgd = _run("apgd", 0.01, [(True, False, 0.0), (True, False, 0.0), (False, False, 0.0)])
    apgd["results"].append(_run("apgd", 0.03, [(True, False, 0.0), (True, True, 0.9), (False, False, 0.0)])["results"][0])
    apgd["results"][1]["sanity"] = {"zero_gradient": [0, 2], "blackbox_beats_whitebox": []}  # 2 is misclassified
    square = _run("square", 0.01, [(True, False, 0.0), (True, True, 0.9), (False, False, 0.0)])
    square["results"].append(_run("square", 0.03, [(True, True, 0.9), (True, True, 0.9), (False, False, 0.0)])["results"][0])
    flags = masking_flags([apgd, square], "linf")
    by = {f["flag"]: f for f in flags}
    assert set(by) == {"blackbox_beats_whitebox", "zero_gradient"}
    beat = [f for f in flags if f["flag"] == "blackbox_beats_whitebox"]
    assert [(f["eps"], f["count"]) for f in beat] == [(0.01, 1), (0.03, 1)] and "square broke 1" in beat[0]["detail"]
    assert by["zero_gradient"]["count"] == 1  # only the correctly classified sample 0
    rising = _run("square", 0.01, [(True, True, 0.9), (True, True, 0.9)])
    rising["results"].append(_run("square", 0.03, [(True, False, 0.0), (True, True, 0.9)])["results"][0])
    flags = masking_flags([rising], "linf")
    assert {f["flag"] for f in flags} == {"non_monotone"} and "0.01" in flags[0]["detail"]
    assert masking_flags([_run("square", 0.01, [(True, False, 0.0)])], "linf") == []


def _masked_model(tmp: Path, steep: float) -> tuple[Path, Path]:
    """Half the pixels pass a step tanh(steep (x - 0.5)) (steep: exactly zero float32 gradient 0.02 away from 0.5,
    the class hangs on them), half a gentle tanh with small weights (the gradient graph is right there and passes
    its self-check, but following it cannot flip the class). Square flips the steep pixels; APGD cannot."""
    rng = np.random.default_rng(0)
    d, m, n = 16, 8, 10
    slope = np.r_[np.full(m, steep), np.ones(d - m)]
    w2 = np.c_[rng.standard_normal((3, m)), 0.05 * rng.standard_normal((3, d - m))]
    net = N.Net((1, 4, 4), [("dense", np.diag(slope), -0.5 * slope), ("tanh",), ("dense", w2, np.zeros(3))])
    path = net.onnx(tmp / f"masked{steep:g}.onnx")
    x = np.c_[0.5 + 0.02 * rng.choice([-1.0, 1.0], size=(n, m)), rng.uniform(0.2, 0.8, (n, d - m))]
    y = (np.tanh(slope * (x - 0.5)) @ w2.T).argmax(1)
    np.savez(tmp / f"d{steep:g}.npz", x=x.reshape(n, 1, 4, 4).astype(np.float32), y=y)
    return path, tmp / f"d{steep:g}.npz"


def _attack_audit(tmp: Path, model: Path, data: Path, name: str) -> dict:
    policy = write_policy(tmp / f"{name}.toml", ["attack.worst.linf[0.03].robust_accuracy >= 0.5"], samples=10,
                          budget=300, eps=[0.03], attacks=["square"], whitebox=True, sections=["attacks"])
    res = cli("audit", model, "--data", data, "--policy", policy, "--out", tmp / name)
    assert res.exit_code in (0, 1), res.stderr
    rep = json.loads((tmp / name / "audit.json").read_text())
    return rep | {"_stdout": res.stdout, "_md": (tmp / name / "audit.md").read_text()}


def test_square_beating_apgd_on_a_masked_model_is_flagged_and_counted(tmp_path):
    model, data = _masked_model(tmp_path, 1e4)
    rep = _attack_audit(tmp_path, model, data, "masked")
    att = _sec(rep, "attacks")["data"]
    ra = {run["config"]["attack"]: run["results"][0]["robust_accuracy"] for run in att["runs"]}
    assert ra["apgd"] == 1.0 and ra["square"] <= 0.5  # the white-box attack alone would pass the check
    assert att["worst_case"]["robust_accuracy"]["0.03"] == ra["square"]
    flags = [f for f in att["masking"] if f["flag"] == "blackbox_beats_whitebox"]
    assert len(flags) == 1 and flags[0]["count"] >= 5 and flags[0]["eps"] == 0.03
    assert rep["checks"][0]["passed"] is False  # the verdict uses the worst case, not APGD
    assert "masking: blackbox_beats_whitebox" in rep["_stdout"]
    # each attack's figure with the worst case beside it, in the terminal and in the markdown
    assert re.search(r"eps 0\.03: apgd 1, square [0-9.]+; worst case [0-9.]+$", rep["_stdout"], re.M), rep["_stdout"]
    assert re.search(r"^\| 0\.03 \| 1 \| [0-9.]+ \| \*\*[0-9.]+\*\* \|$", rep["_md"], re.M), rep["_md"]
    assert "**blackbox_beats_whitebox**" in rep["_md"]


def test_a_model_whose_gradient_vanishes_everywhere_is_flagged(tmp_path):
    """Every pixel behind the step: the gradient graph's self-check measures no derivative, APGD cannot run, and the
    attacks section says why instead of silently reporting the black-box figures alone."""
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((3, 16))
    model = N.Net((1, 4, 4), [("dense", 1e4 * np.eye(16), -5e3 * np.ones(16)), ("tanh",),
                              ("dense", w2, np.zeros(3))]).onnx(tmp_path / "steep.onnx")
    x = 0.5 + 0.02 * rng.choice([-1.0, 1.0], size=(6, 1, 4, 4))
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=(np.tanh(1e4 * (x.reshape(6, -1) - 0.5)) @ w2.T).argmax(1))
    rep = _attack_audit(tmp_path, model, tmp_path / "d.npz", "steep")
    att = _sec(rep, "attacks")["data"]
    assert att["whitebox"].startswith("white-box APGD unavailable")
    assert [f["flag"] for f in att["masking"]] == ["no_usable_gradient"]


def test_a_smooth_model_has_no_masking_flags(tmp_path):
    model, data = _masked_model(tmp_path, 1.0)  # the same net with a gentle slope everywhere
    rep = _attack_audit(tmp_path, model, data, "smooth")
    att = _sec(rep, "attacks")["data"]
    assert att["masking"] == [], att["masking"]
    assert "masking: no sign of masked gradients" in rep["_stdout"]
    assert "None: no sign of masked gradients." in rep["_md"]


# --------------------------------------------------------------------------- command line over policy
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rules")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 8))
    model = B.save(B.linear_model(w, np.zeros(3), sample_shape=(8,)), tmp / "lin.onnx")
    x = rng.uniform(0, 1, (12, 8)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=(x @ w.T).argmax(1))
    policy = write_policy(tmp / "p.toml", ["bound.finite = true"], samples=6, budget=100, sections=["bounds"])
    return tmp, model, tmp / "d.npz", policy


@pytest.mark.parametrize(("extra", "samples", "source"), [
    ((), 6, "policy"),                        # nothing given: the policy's value, listed as from the policy
    (("--samples", "3"), 3, "command line"),  # given: the command line wins, the overridden value is listed
    (("--samples", "20"), 20, "command line"),  # given, equal to the command's default: still given
])
def test_an_option_given_on_the_command_line_wins_over_the_policy(small, tmp_path, extra, samples, source):
    tmp, model, data, policy = small
    res = cli("audit", model, "--data", data, "--policy", policy, "--out", tmp_path / "o", *extra)
    assert res.exit_code == 0, res.stderr
    rep = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert rep["config"]["samples"] == samples
    assert rep["config"]["from_policy"]["budget"] == 100  # not given: from the policy
    md = (tmp_path / "o" / "audit.md").read_text()
    if source == "policy":
        assert rep["config"]["from_policy"]["samples"] == 6 and rep["config"]["overridden"] == {}
        assert "from the policy's [audit]: samples = 6" in res.stdout
    else:
        assert "samples" not in rep["config"]["from_policy"]
        assert rep["config"]["overridden"] == {"samples": {"policy": 6, "command_line": samples}}
        line = f"samples = {samples} (policy: 6)"
        assert line in res.stdout and line in md


def test_example_policy_documents_every_accepted_key():
    """Every key the parser accepts appears in examples/policy.toml's [audit] table (set or commented), and no other."""
    text = (ROOT / "examples" / "policy.toml").read_text()
    table = re.split(r"^\[audit\]$", text, flags=re.M)[1].split("\n[", 1)[0]
    documented = {m.group(1) for m in re.finditer(r"^#?\s*([a-z_]+)\s*=", table, re.M)}
    assert documented == set(AUDIT_KEYS)
    assert "take precedence over the command line" not in text and "wins over the value" in text
    load_policy(ROOT / "examples" / "policy.toml")


# --------------------------------------------------------------------------- no --out
def test_audit_without_out_writes_the_default_folder_and_never_into_an_unrelated_one(small, tmp_path, monkeypatch):
    tmp, model, data, policy = small
    monkeypatch.chdir(tmp_path)
    res = cli("audit", model, "--data", data, "--policy", policy, "-q")
    folder = tmp_path / "fimaudit-audit-lin"
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES) and "fimaudit-audit-lin" in res.stderr
    again = cli("audit", model, "--data", data, "--policy", policy, "-q")  # an earlier dossier is replaced
    assert again.exit_code == 0, again.stderr
    (folder / "notes.txt").write_text("mine")
    refused = cli("audit", model, "--data", data, "--policy", policy, "-q")
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and "notes.txt" in lines[0] and "--out" in lines[0]
    assert (folder / "notes.txt").read_text() == "mine"
    os.remove(folder / "notes.txt")
    for name in FILES:
        os.remove(folder / name)
    piped = cli("audit", model, "--data", data, "--policy", policy, "-q", "--json", "-")
    assert piped.exit_code == 0 and json.loads(piped.stdout)["kind"] == "audit" and not any(folder.iterdir())


# --------------------------------------------------------------------------- pre-normalised data
CIFAR_MEAN, CIFAR_STD = np.array([0.485, 0.456, 0.406]), 0.225  # oval21's normalisation (its x_range says so)


def _corpus(name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    root = os.environ.get("FIMAUDIT_REALMODELS")
    if not root:
        pytest.skip("FIMAUDIT_REALMODELS is not set")
    with np.load(Path(root) / f"{name}.npz") as d:
        return Path(root) / f"{name}.onnx", d["x"][:3], d["y"][:3]


@pytest.mark.parametrize("name", ["oval21_cifar_base_kw", "cifar10_resnet_2b"])
def test_pre_normalised_data_get_a_derived_attack_box_and_true_reasons(tmp_path, name):
    model, x, y = _corpus(name)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    policy = write_policy(tmp_path / "p.toml", ["attack.worst.linf[0.01].robust_accuracy >= 0",
                                                "corruptions.mean_relative_accuracy >= 0"],
                          samples=3, budget=60, eps=[0.01], attacks=["square"], whitebox=False, metrics_samples=3,
                          sections=["scan", "attacks", "metrics", "validity"])
    res = cli("audit", model, "--data", tmp_path / "d.npz", "--policy", policy, "--out", tmp_path / "o")
    assert res.exit_code == 1, res.stderr  # the corruption check fails: corruptions cannot run on these data
    rep = json.loads((tmp_path / "o" / "audit.json").read_text())
    lo, hi = rep["config"]["input_range"]
    assert lo <= float(x.min()) < lo + 0.0011 and hi - 0.0011 < float(x.max()) <= hi
    assert rep["config"]["input_range_source"] == "derived from the data"
    assert "derived from the data" in res.stdout and "--input-range" in res.stdout
    assert {n: _sec(rep, n)["status"] for n in ("attacks", "validity")} == {"attacks": "ok", "validity": "ok"}
    met = _sec(rep, "metrics")["data"]
    assert "--mean" in met["corruptions_skipped"] and "--std" in met["corruptions_skipped"]
    assert "--mean" in rep["checks"][1]["reason"]
    # an explicit box the data leave: the attacks refuse, and validity says so (not "labelled data")
    res = cli("audit", model, "--data", tmp_path / "d.npz", "--policy", policy, "--out", tmp_path / "b",
              "--input-range", "0,1")
    rep = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert _sec(rep, "attacks")["status"] == "unavailable" and "--input-range" in _sec(rep, "attacks")["reason"]
    reason = _sec(rep, "validity")["reason"]
    assert "attacks section, which is unavailable" in reason and "--input-range" in reason and "labelled" not in reason


def test_un_normalised_corpus_data_with_mean_std_run_the_corruptions(tmp_path):
    """oval21's samples un-normalised to [0, 1] with its --mean/--std: the same model inputs, corruptions run."""
    model, x, y = _corpus("oval21_cifar_base_kw")
    np.savez(tmp_path / "u.npz", x=(x * CIFAR_STD + CIFAR_MEAN[None, :, None, None]).astype(np.float32), y=y)
    policy = write_policy(tmp_path / "p.toml", ["corruptions.mean_relative_accuracy >= 0", "clean.accuracy >= 1"],
                          samples=3, budget=30, metrics_samples=3, sections=["scan", "metrics"])
    res = cli("audit", model, "--data", tmp_path / "u.npz", "--mean", "0.485,0.456,0.406", "--std", "0.225",
              "--policy", policy, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.stderr + res.stdout
    rep = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert rep["config"]["input_range"] == [0.0, 1.0] and rep["config"]["input_range_source"] == "default [0, 1]"
    assert not _sec(rep, "metrics")["data"].get("corruptions_skipped") and rep["checks"][0]["value"] is not None
