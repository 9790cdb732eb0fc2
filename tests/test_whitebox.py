"""White-box attacks from exact gradients against closed forms on two-class linear models."""

from __future__ import annotations

import numpy as np
import pytest

from fimaudit.attacks import APGD, GradientOracle, WhiteBoxPGD, make_attack, minimal_distance, sanity_flags
from fimaudit.attacks.whitebox import checkpoints, loss_and_weights
from fimaudit.errors import ConfigError
from fimaudit.metrics.clever import clever
from fimaudit.model import LogProbOracle, load_model

from . import nets as N

BOUNDS = (-50.0, 50.0)  # wide: the closed forms ignore the box


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wb")
    rng = np.random.default_rng(21)
    d = 20
    net = N.Net((d,), [("dense", rng.standard_normal((2, d)), rng.standard_normal(2) * 0.1)])
    oracle = GradientOracle(LogProbOracle(load_model(net.onnx(tmp / "lin2.onnx")), "logits"), N.vjp_at(net))
    x = rng.uniform(0, 1, size=(12, d))
    w = net.layers[0][1].astype(np.float32).astype(np.float64)
    b = net.layers[0][2].astype(np.float32).astype(np.float64)
    z = x @ w.T + b
    y = np.argmax(z, axis=1)
    dw = w[y] - w[1 - y]
    m = np.abs(z[:, 0] - z[:, 1])
    return oracle, x, y, m / np.linalg.norm(dw, axis=1), m / np.abs(dw).sum(axis=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_minimal_distance_matches_the_hyperplane(two_class, norm):
    oracle, x, y, d2, dinf = two_class
    true = d2 if norm == "l2" else dinf
    found, x_adv = minimal_distance(oracle, x, y, norm, BOUNDS, np.random.default_rng(0), steps=30, search=14)
    assert np.all(found >= true * (1 - 1e-4)), (found, true)  # nothing closer exists
    assert np.all(found <= true * (1 + 1e-2)), (found / true)
    assert np.all(np.argmax(oracle.logp(x_adv), axis=1) != y)


@pytest.mark.parametrize("cls,loss", [(APGD, "ce"), (APGD, "dlr"), (WhiteBoxPGD, "ce"), (WhiteBoxPGD, "dlr")])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attacks_succeed_exactly_beyond_the_distance(two_class, cls, loss, norm):
    oracle, x, y, d2, dinf = two_class
    true = d2 if norm == "l2" else dinf
    attack = cls(steps=40, loss=loss)
    for factor, expect in ((1.02, True), (0.98, False)):
        for i in range(3):
            out = attack(oracle, x[i : i + 1], y[i : i + 1], float(true[i] * factor), norm, BOUNDS,
                         np.random.default_rng(i), budget=1000)
            assert bool(out.success[0]) is expect, (cls.name, loss, norm, factor, i)


def test_dlr_gradient_against_central_differences():
    rng = np.random.default_rng(2)
    lp = rng.standard_normal((5, 6))
    y = rng.integers(0, 6, 5)
    f, u = loss_and_weights(lp, y, "dlr")
    for i in range(5):
        for j in range(6):
            e = np.zeros(6)
            e[j] = 1e-6
            fp = loss_and_weights((lp[i] + e)[None], y[i : i + 1], "dlr")[0][0]
            fm = loss_and_weights((lp[i] - e)[None], y[i : i + 1], "dlr")[0][0]
            assert u[i, j] == pytest.approx((fp - fm) / 2e-6, rel=1e-5, abs=1e-8)


def test_apgd_checkpoints_follow_the_schedule():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_clever_with_exact_gradients_is_the_l2_distance(tmp_path):
    """Linear 3-class model: the margin gradients are constant, so CLEVER is min_j (z_c - z_j) / |w_c - w_j|."""
    rng = np.random.default_rng(8)
    net = N.Net((10,), [("dense", rng.standard_normal((3, 10)), rng.standard_normal(3))])
    oracle = GradientOracle(LogProbOracle(load_model(net.onnx(tmp_path / "lin3.onnx")), "logits"), N.vjp_at(net))
    w = net.layers[0][1].astype(np.float32).astype(np.float64)
    b = net.layers[0][2].astype(np.float32).astype(np.float64)
    for i in range(3):
        x = rng.uniform(0, 1, 10)
        z = w @ x.astype(np.float32).astype(np.float64) + b
        c = int(np.argmax(z))
        dist = min((z[c] - z[j]) / np.linalg.norm(w[c] - w[j]) for j in range(3) if j != c)
        res = clever(oracle, x, "l2", 10.0, np.random.default_rng(i), n_batches=4, batch_size=5, vjp_at=oracle.vjp_at)
        assert res.score == pytest.approx(dist, rel=1e-5)


def test_sanity_flags_and_black_box_refusal(two_class, tmp_path):
    oracle, x, y, _, _ = two_class
    flags = sanity_flags(oracle, x, y, np.zeros(len(x), bool), np.arange(len(x)) == 3)
    assert flags["blackbox_beats_whitebox"] == [3] and flags["zero_gradient"] == [] and not flags["nondeterministic"]
    assert len(flags["warnings"]) == 1
    flat = N.Net((4,), [("dense", np.zeros((3, 4)), np.array([1.0, 0.0, 0.0]))])
    zero = GradientOracle(LogProbOracle(load_model(flat.onnx(tmp_path / "flat.onnx")), "logits"), N.vjp_at(flat))
    assert sanity_flags(zero, np.zeros((2, 4)), np.array([0, 1]), np.zeros(2, bool), None)["zero_gradient"] == [0, 1]
    with pytest.raises(ConfigError, match="gradients"):
        make_attack("apgd")(oracle.oracle, x, y, 0.1, "linf", BOUNDS, np.random.default_rng(0), 100)


def test_whitebox_on_vgg_small_is_no_weaker_than_the_black_box():
    """vgg_small, L-inf eps = 0.03, 10 samples: APGD with the graph's gradients against black-box PGD and Square."""
    from pathlib import Path

    from fimaudit.evidence import AttackConfig, run_attack

    zoo = Path(__file__).resolve().parent.parent / "sample_models"
    base = dict(model=str(zoo / "vgg_small.onnx"), data=str(zoo / "fmnist_test_1000_28.npz"), samples=10, eps=(0.03,),
                scale=1 / 255, mean=(0.286,), std=(0.353,), budget=2000, norm="linf")
    wb = run_attack(AttackConfig(**base, attack="apgd", steps=50))
    assert wb["gradients"]["source"] == "graph"
    res = wb["results"][0]
    bb = run_attack(AttackConfig(**base, attack="pgd"))["results"][0]
    assert res["robust_accuracy"] <= min(bb["robust_accuracy"], res["sanity"]["square_robust_accuracy"])
    assert res["sanity"]["blackbox_beats_whitebox"] == [] and res["sanity"]["zero_gradient"] == []
    assert not res["sanity"]["nondeterministic"]


def test_clever_from_the_graph_matches_finite_differences(tmp_path):
    from fimaudit.evidence import AttackConfig, run_clever

    rng = np.random.default_rng(9)
    net = N.Net((12,), [("dense", rng.standard_normal((16, 12)), rng.standard_normal(16)), ("tanh",),
                        ("dense", rng.standard_normal((4, 16)), rng.standard_normal(4))])
    x = rng.uniform(0, 1, size=(3, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(3, dtype=np.int64))
    cfg = AttackConfig(model=str(net.onnx(tmp_path / "t.onnx")), data=str(tmp_path / "d.npz"), budget=10**9)
    fd = run_clever(cfg, "l2", 0.5, points=20, seeds=1, gradients="fd")
    gr = run_clever(cfg, "l2", 0.5, points=20, seeds=1, gradients="graph")
    assert gr["gradients"]["source"] == "graph" and fd["gradients"]["source"] == "fd"
    for a, b in zip(fd["samples"], gr["samples"]):
        assert b["mean"] == pytest.approx(a["mean"], rel=1e-3)
        assert b["queries"] < a["queries"]
        # every gradient-graph row is a counted query: K = 4 VJP rows at each of the 20 points, and the centre
        assert b["queries"] == 20 * 4 + 1
    assert gr["summary"]["queries_total"] >= sum(s["queries"] for s in gr["samples"])
    for rep in (fd, gr):  # CLEVER's config holds what CLEVER uses
        assert not {"attack", "eps", "budget", "taus", "steps", "loss", "restarts", "min_distance"} & set(rep["config"])
        assert {"norm", "radius", "points", "seeds", "gradients"} <= set(rep["config"])


def test_attack_cli_min_distance(two_class, tmp_path):
    import json

    from .test_bad_input import assert_one_line_error, run_cli

    oracle, x, y, d2, dinf = two_class
    rng = np.random.default_rng(21)
    path = N.Net((20,), [("dense", rng.standard_normal((2, 20)), rng.standard_normal(2) * 0.1)]).onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    out = tmp_path / "a.json"
    res = run_cli("attack", str(path), "--data", str(tmp_path / "d.npz"), "--attack", "apgd", "--eps", "0.05",
                  "--input-range", "-50,50", "--min-distance", "--json", str(out))
    assert res.exit_code == 0, res.stderr
    rep = json.loads(out.read_text())
    np.testing.assert_allclose(rep["minimal_distance"]["l2"]["per_sample"], d2, rtol=1e-2)
    np.testing.assert_allclose(rep["minimal_distance"]["linf"]["per_sample"], dinf, rtol=1e-2)
    assert rep["gradients"]["source"] == "graph" and "smallest adversarial l2 distance" in res.stdout
    assert_one_line_error(run_cli("attack", str(path), "--data", str(tmp_path / "d.npz"), "--attack", "square",
                                  "--input-range", "-50,50", "--min-distance"), "white-box")


def test_one_gradients_option_in_every_command(two_class, tmp_path):
    """attack takes --gradients like scan and clever; --grad still works, with a deprecation warning."""
    import json

    from .test_bad_input import assert_one_line_error, run_cli

    oracle, x, y, _, _ = two_class
    rng = np.random.default_rng(21)
    path = N.Net((20,), [("dense", rng.standard_normal((2, 20)), rng.standard_normal(2) * 0.1)]).onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    common = ["attack", str(path), "--data", str(tmp_path / "d.npz"), "--eps", "0.05", "--input-range", "-50,50",
              "--budget", "200", "--samples", "4"]
    new = run_cli(*common, "--attack", "pgd", "--gradients", "zo", "--json", str(tmp_path / "new.json"))
    assert new.exit_code == 0, new.stderr
    old = run_cli(*common, "--attack", "pgd", "--grad", "zo", "--json", str(tmp_path / "old.json"))
    assert old.exit_code == 0 and "--grad is deprecated" in old.stderr and "--gradients" in old.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("new.json", "old.json"))
    assert a["config"]["gradients"] == "zo" and "grad" not in a["config"]
    assert a["results"] == b["results"]
    assert_one_line_error(run_cli(*common, "--attack", "pgd", "--grad", "fd", "--gradients", "zo"), "contradict")
    assert_one_line_error(run_cli(*common, "--attack", "apgd", "--gradients", "fd"), "white-box")
    assert_one_line_error(run_cli(*common, "--attack", "pgd", "--gradients", "graph"), "apgd")
    assert_one_line_error(run_cli(*common, "--attack", "square", "--gradients", "fd"), "Square uses no gradients")
    wb = run_cli(*common, "--attack", "apgd", "--gradients", "graph", "--json", str(tmp_path / "wb.json"))
    assert wb.exit_code == 0 and json.loads((tmp_path / "wb.json").read_text())["gradients"]["source"] == "graph"


def test_eps_from_attacks_each_sample_at_its_own_radius(two_class, tmp_path):
    """Linear two-class model: APGD succeeds exactly where a sample's own radius exceeds its L-inf distance."""
    import json

    from .test_bad_input import assert_one_line_error, run_cli

    oracle, x, y, d2, dinf = two_class
    rng = np.random.default_rng(21)
    path = N.Net((20,), [("dense", rng.standard_normal((2, 20)), rng.standard_normal(2) * 0.1)]).onnx(tmp_path / "m.onnx")
    radii = np.where(np.arange(len(x)) % 2 == 0, 1.05, 0.95) * dinf  # beyond the distance on even samples only
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y, radius=radii.astype(np.float32), one=np.float32([0.5]))
    common = ["attack", str(path), "--data", str(tmp_path / "d.npz"), "--attack", "apgd", "--input-range", "-50,50"]
    res = run_cli(*common, "--eps-from", "radius", "--json", str(tmp_path / "a.json"))
    assert res.exit_code == 0, res.stderr
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["results"] == []  # --eps-from alone: only the per-sample run
    ps = rep["per_sample_radius"]
    np.testing.assert_allclose([s["eps"] for s in ps["samples"]], radii.astype(np.float32), rtol=1e-6)
    assert [s["success"] for s in ps["samples"]] == [i % 2 == 0 for i in range(len(x))]
    assert ps["robust_accuracy"] == 0.5 and "own (radius" in res.stdout
    both = run_cli(*common, "--eps-from", "one", "--eps", "0.5", "--json", str(tmp_path / "b.json"))
    rep = json.loads((tmp_path / "b.json").read_text())
    assert both.exit_code == 0 and any("one radius (0.5), used for every sample" in n for n in rep["notes"])
    # one radius for all equals the listed eps of the same value, sample by sample
    assert [s["success"] for s in rep["per_sample_radius"]["samples"]] == [s["success"] for s in rep["results"][0]["samples"]]
    assert_one_line_error(run_cli(*common, "--eps-from", "nope"), "no array 'nope'")
