"""Gradient-free attacks (RayS, transfer from a surrogate) on linear and binarized models with closed-form distances.

Every claimed adversarial example is re-checked by a fresh onnxruntime session (class and radius).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fimaudit.attacks import APGD, HopSkipJump, RayS, RowRng, Transfer, make_attack, rays_search
from fimaudit.attacks.base import Budget
from fimaudit.data import Preprocess
from fimaudit.errors import ConfigError
from fimaudit.evidence import AttackConfig, gradient_oracle, run_attack
from fimaudit.model import LogProbOracle, load_model

from . import decision_nets as D
from . import nets as N

BOUNDS = (-50.0, 50.0)  # wide: the closed forms ignore the box
IDENTITY = Preprocess(1.0, (0.0,), (1.0,), 0)


def recheck(path, x, x_adv, y, success, eps, norm="linf"):
    """A fresh onnxruntime session confirms each claimed success: another class, within eps of x."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    idx = np.flatnonzero(success)
    if idx.size == 0:
        return 0
    z = sess.run(None, {name: x_adv[idx].astype(np.float32)})[0]
    assert np.all(np.argmax(z, axis=1) != y[idx]), "a claimed adversarial example keeps its class"
    delta = (x_adv[idx] - x[idx]).reshape(idx.size, -1)
    dist = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(dist <= eps * (1 + 1e-9)), "a claimed adversarial example lies outside the eps-ball"
    return idx.size


def _linear_case(tmp, kind):
    """(path, oracle, x, y, exact L-inf distance, exact L2 distance): a two-class linear softmax or its
    Sign-binarized twin."""
    rng = np.random.default_rng(21)
    d = 20
    x = rng.uniform(0, 1, size=(12, d))
    if kind == "linear":
        net = N.Net((d,), [("dense", rng.standard_normal((2, d)), rng.standard_normal(2) * 0.1)])
        path = net.onnx(tmp / "lin2.onnx")
        w = net.layers[0][1].astype(np.float32).astype(np.float64)
        b = net.layers[0][2].astype(np.float32).astype(np.float64)
        z = x @ w.T + b
        y = np.argmax(z, axis=1)
        m = np.abs(z[:, 0] - z[:, 1])
        dist, dist2 = m / np.abs(w[0] - w[1]).sum(), m / np.linalg.norm(w[0] - w[1])
    else:  # class 0 where w.x + b >= 0: piecewise constant, zero gradient almost everywhere
        w = rng.standard_normal(d)
        b = float(-w.sum() / 2)
        path = D.sign_linear(w, b, tmp / "sign2.onnx")
        w32, b32 = w.astype(np.float32).astype(np.float64), float(np.float32(b))
        a = x @ w32 + b32
        y = np.where(a >= 0, 0, 1)
        dist, dist2 = np.abs(a) / np.abs(w32).sum(), np.abs(a) / np.linalg.norm(w32)
    oracle = LogProbOracle(load_model(path), "logits")
    assert np.all(np.argmax(oracle.logp(x), axis=1) == y)
    return path, oracle, x, y, dist, dist2


@pytest.fixture(scope="module", params=["linear", "sign"])
def both(request, tmp_path_factory):
    return _linear_case(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def case(both):
    """The L-inf view: (path, oracle, x, y, exact L-inf distance)."""
    return both[:5]


def test_rays_radius_converges_to_the_closed_form(case):
    """Run to the budget (eps 0): the radius found is the exact L-inf distance to the binary search's 1% (measured
    0.07-1.0% above it with the default rtol 1e-2), never below it."""
    path, oracle, x, y, dist = case
    acct = Budget(len(x), 2000)
    radius, dirs = rays_search(oracle, x, y, 0.0, BOUNDS, RowRng.seeded(0, range(len(x)), 0), acct,
                               np.ones(len(x), dtype=bool))
    assert np.all(radius >= dist * (1 - 1e-5)), radius / dist  # nothing closer exists
    assert np.all(radius <= dist * (1 + 1.1e-2)), radius / dist
    assert np.all(acct.used <= 2000)
    recheck(path, x, x + radius[:, None] * dirs, y, np.ones(len(x), bool), float(radius.max()) * (1 + 1e-12))


def test_rays_succeeds_beyond_the_distance_and_never_below(case):
    path, oracle, x, y, dist = case
    for factor, expect in ((1.1, True), (0.9, False)):
        outs = [RayS()(oracle, x[i:i + 1], y[i:i + 1], float(dist[i] * factor), "linf", BOUNDS,
                       RowRng.seeded(0, [i], 0), 2000) for i in range(len(x))]
        for i, out in enumerate(outs):
            assert bool(out.success[0]) is expect, (factor, i, dist[i])
            assert out.queries[0] <= 2000
            recheck(path, x[i:i + 1], out.x_adv, y[i:i + 1], out.success, float(dist[i] * factor))
        if expect:  # found early: the default budget is far from spent
            assert max(int(o.queries[0]) for o in outs) < 500


@pytest.mark.parametrize("budget", [3, 4, 11, 60])
def test_rays_never_exceeds_the_budget_and_counts_every_row(case, budget):
    """The attack's per-sample counts are the rows the model really evaluated, and never above the budget."""
    _, oracle, x, y, dist = case
    q0 = oracle.queries
    out = RayS()(oracle, x, y, float(np.median(dist)), "linf", BOUNDS, RowRng.seeded(1, range(len(x)), 0), budget)
    assert np.all(out.queries <= budget)
    assert int(out.queries.sum()) == oracle.queries - q0


def test_rays_is_batch_independent(case):
    _, oracle, x, y, dist = case
    eps = float(np.median(dist))
    together = RayS()(oracle, x, y, eps, "linf", BOUNDS, RowRng.seeded(4, range(len(x)), 0), 300)
    for i in (0, 5, 11):
        alone = RayS()(oracle, x[i:i + 1], y[i:i + 1], eps, "linf", BOUNDS, RowRng.seeded(4, [i], 0), 300)
        assert np.array_equal(alone.x_adv[0], together.x_adv[i])
        assert alone.queries[0] == together.queries[i] and alone.success[0] == together.success[i]


def test_rays_refuses_l2_and_gradients(case, tmp_path):
    _, oracle, x, y, _ = case
    with pytest.raises(ConfigError, match="linf"):
        RayS()(oracle, x, y, 0.1, "l2", BOUNDS, np.random.default_rng(0), 100)
    from .test_bad_input import assert_one_line_error, run_cli

    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    assert_one_line_error(run_cli("attack", str(case[0]), "--data", str(tmp_path / "d.npz"), "--attack", "rays",
                                  "--gradients", "fd", "--input-range", "-50,50"), "predicted class")


# ----------------------------------------------------------------------------- HopSkipJump (L2)
def test_hsja_distance_converges_to_the_closed_form(both):
    """Run to the budget (eps 0): the closest adversarial point found is within 3% of the L2 distance (measured:
    0.6-1.7% after 2000 queries in d = 20 with the legacy attack stream, 0.6-2.2% with the named one), never below."""
    path, oracle, x, y, _, dist2 = both
    acct = Budget(len(x), 2000)
    pts = HopSkipJump().run(oracle, x, y, 0.0, "l2", BOUNDS, RowRng.seeded(0, range(len(x)), 0), acct,
                            np.ones(len(x), dtype=bool))
    found = np.linalg.norm(pts - x, axis=1)
    assert np.all(found >= dist2 * (1 - 1e-5)), found / dist2
    assert np.all(found <= dist2 * 1.03), found / dist2
    assert np.all(acct.used <= 2000)
    recheck(path, x, pts, y, np.ones(len(x), bool), float(found.max()) * (1 + 1e-12), "l2")


def test_hsja_succeeds_beyond_the_distance_and_never_below(both):
    path, oracle, x, y, _, dist2 = both
    for factor, expect in ((1.1, True), (0.9, False)):
        for i in range(len(x)):
            out = HopSkipJump()(oracle, x[i:i + 1], y[i:i + 1], float(dist2[i] * factor), "l2", BOUNDS,
                                RowRng.seeded(0, [i], 0), 2000)
            assert bool(out.success[0]) is expect, (factor, i)
            assert out.queries[0] <= 2000
            recheck(path, x[i:i + 1], out.x_adv, y[i:i + 1], out.success, float(dist2[i] * factor), "l2")


@pytest.mark.parametrize("budget", [3, 5, 40, 150])
def test_hsja_never_exceeds_the_budget_and_is_batch_independent(both, budget):
    _, oracle, x, y, _, dist2 = both
    eps = float(np.median(dist2))
    q0 = oracle.queries
    together = HopSkipJump()(oracle, x, y, eps, "l2", BOUNDS, RowRng.seeded(6, range(len(x)), 0), budget)
    assert np.all(together.queries <= budget) and int(together.queries.sum()) == oracle.queries - q0
    for i in (2, 9):
        alone = HopSkipJump()(oracle, x[i:i + 1], y[i:i + 1], eps, "l2", BOUNDS, RowRng.seeded(6, [i], 0), budget)
        assert np.array_equal(alone.x_adv[0], together.x_adv[i]) and alone.queries[0] == together.queries[i]


# ----------------------------------------------------------------------------- binarized MLP and its float twin
@pytest.fixture(scope="module")
def binarized(tmp_path_factory):
    """z = W2 Sign(W1 x + b1) + b2 (zero gradients), its Tanh twin as surrogate, data and labels (the real model's)."""
    tmp = tmp_path_factory.mktemp("bin")
    rng = np.random.default_rng(5)
    d, h, k = 20, 16, 3
    w1, b1 = rng.standard_normal((h, d)), rng.standard_normal(h) * 0.5
    w2, b2 = rng.standard_normal((k, h)), np.zeros(k)
    real = D.binarized_mlp(w1, b1, w2, b2, tmp / "bin.onnx")
    twin = D.binarized_mlp(w1, b1, w2, b2, tmp / "twin.onnx", smooth=1.0)
    x = rng.uniform(0, 1, size=(30, d)).astype(np.float32).astype(np.float64)
    sess = ort.InferenceSession(str(real), providers=["CPUExecutionProvider"])
    y = np.argmax(sess.run(None, {"x": x.astype(np.float32)})[0], axis=1)
    np.savez(tmp / "d.npz", x=x.astype(np.float32), y=y)
    return tmp, real, twin, x, y


def _oracles(real, twin, x):
    model = load_model(real)
    oracle = LogProbOracle(model, "logits")
    wb_real, rec = gradient_oracle(model, oracle, "logits", IDENTITY, x, "graph", 0)
    sm = load_model(twin)
    sur, rec2 = gradient_oracle(sm, LogProbOracle(sm, "logits"), "logits", IDENTITY, x, "graph", 0)
    assert rec["source"] == rec2["source"] == "graph"
    return oracle, wb_real, sur


def test_transfer_breaks_a_binarized_net_where_apgd_cannot(binarized):
    tmp, real, twin, x, y = binarized
    oracle, wb_real, sur = _oracles(real, twin, x)
    eps, n = 0.1, len(x)
    apgd = APGD()(wb_real, x, y, eps, "linf", (0.0, 1.0), RowRng.seeded(0, range(n), 0), 2000)
    assert apgd.success.sum() == 0  # zero gradients: white-box APGD cannot move
    q0 = oracle.queries
    out = Transfer(surrogate=sur)(oracle, x, y, eps, "linf", (0.0, 1.0), RowRng.seeded(0, range(n), 0), 2000)
    assert int(out.queries.sum()) == oracle.queries - q0 and np.all(out.queries <= 2000)
    assert recheck(real, x, out.x_adv, y, out.success, eps) >= n // 2, out.success.sum()
    assert np.all(out.x_adv >= 0) and np.all(out.x_adv <= 1)
    rays = RayS()(oracle, x, y, eps, "linf", (0.0, 1.0), RowRng.seeded(0, range(n), 0), 2000)
    assert recheck(real, x, rays.x_adv, y, rays.success, eps) >= n // 2, rays.success.sum()


@pytest.mark.parametrize("budget", [3, 50, 109, 110, 500])
def test_transfer_never_exceeds_the_budget(binarized, budget):
    tmp, real, twin, x, y = binarized
    oracle, _, sur = _oracles(real, twin, x)
    q0 = oracle.queries
    out = Transfer(surrogate=sur, steps=100)(oracle, x, y, 0.05, "linf", (0.0, 1.0),
                                            RowRng.seeded(0, range(len(x)), 0), budget)
    assert np.all(out.queries <= budget)
    assert int(out.queries.sum()) == oracle.queries - q0


def test_transfer_is_batch_independent(binarized):
    tmp, real, twin, x, y = binarized
    oracle, _, sur = _oracles(real, twin, x)
    together = Transfer(surrogate=sur, restarts=2)(oracle, x, y, 0.05, "linf", (0.0, 1.0),
                                                   RowRng.seeded(2, range(len(x)), 0), 2000)
    for i in (0, 7, 29):
        alone = Transfer(surrogate=sur, restarts=2)(oracle, x[i:i + 1], y[i:i + 1], 0.05, "linf", (0.0, 1.0),
                                                    RowRng.seeded(2, [i], 0), 2000)
        assert np.allclose(alone.x_adv[0], together.x_adv[i], rtol=0, atol=1e-6)
        assert alone.success[0] == together.success[i] and alone.queries[0] == together.queries[i]


def test_transfer_through_run_attack_and_the_cli(binarized):
    from .test_bad_input import assert_one_line_error, run_cli

    tmp, real, twin, x, y = binarized
    base = dict(model=str(real), data=str(tmp / "d.npz"), eps=(0.1,), seed=0)
    by_path = run_attack(AttackConfig(**base, attack="transfer", surrogate=str(twin))).to_dict()
    by_proto = run_attack(AttackConfig(**base, attack="transfer", surrogate=onnx.load(str(twin)))).to_dict()
    assert by_path["results"][0]["samples"] == by_proto["results"][0]["samples"]
    assert by_proto["config"]["surrogate"] == "onnx.ModelProto (in memory)"
    assert by_path["gradients"]["surrogate"]["rows"] > 0
    assert not any("surrogate's gradient is zero" in n for n in by_path["notes"])
    flat = run_attack(AttackConfig(**base, attack="transfer", surrogate=str(real))).to_dict()
    assert any(f"surrogate's gradient is zero at {len(x)} of {len(x)}" in n for n in flat["notes"])
    assert flat["results"][0]["robust_accuracy"] == 1.0
    r = by_path["results"][0]
    assert r["robust_accuracy"] <= 0.5 and r["queries_max_per_sample"] <= 2000
    apgd = run_attack(AttackConfig(**base, attack="apgd")).to_dict()["results"][0]
    assert apgd["robust_accuracy"] == 1.0 and apgd["sanity"]["zero_gradient"]
    common = ["attack", str(real), "--data", str(tmp / "d.npz"), "--eps", "0.1"]
    res = run_cli(*common, "--attack", "transfer", "--surrogate", str(twin), "--json", str(tmp / "t.json"))
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp / "t.json").read_text())["results"][0]["samples"] == r["samples"]
    assert_one_line_error(run_cli(*common, "--attack", "transfer"), "--surrogate")
    assert_one_line_error(run_cli(*common, "--attack", "transfer", "--surrogate", str(real), "--gradients", "fd"),
                          "white-box")


def test_make_attack_builds_the_gradient_free_attacks():
    assert isinstance(make_attack("rays", channel_axis=2, steps=5), RayS)
    assert make_attack("transfer", surrogate="s", steps=7, channel_axis=0).steps == 7


# ----------------------------------------------------------------------------- NHWC
def test_decision_attacks_give_the_same_attack_in_either_layout(tmp_path):
    """A binarized conv net and its Transpose-front NHWC twin: same seed, same per-sample outcome and points."""
    rng = np.random.default_rng(9)
    c, h, w, k = 2, 5, 5, 3
    kern, kb = rng.standard_normal((3, c, 3, 3)), rng.standard_normal(3) * 0.1
    wd, bd = rng.standard_normal((k, 3 * h * w)) * 0.3, np.zeros(k)
    nchw = D.binarized_conv(kern, kb, wd, bd, (c, h, w), tmp_path / "nchw.onnx")
    nhwc = D.binarized_conv(kern, kb, wd, bd, (c, h, w), tmp_path / "nhwc.onnx", nhwc=True)
    x = rng.uniform(0, 1, size=(8, c, h, w)).astype(np.float32)
    sess = ort.InferenceSession(str(nchw), providers=["CPUExecutionProvider"])
    y = np.argmax(sess.run(None, {"x": x})[0], axis=1)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x.transpose(0, 2, 3, 1), y=y)
    common = dict(attack="rays", eps=(0.02, 0.05), budget=300, seed=3)
    a = run_attack(AttackConfig(model=str(nchw), data=str(tmp_path / "a.npz"), **common)).to_dict()
    b = run_attack(AttackConfig(model=str(nhwc), data=str(tmp_path / "b.npz"), **common)).to_dict()
    assert a["model"]["sample_shape"] == [c, h, w] and b["model"]["sample_shape"] == [h, w, c]
    for ra, rb in zip(a["results"], b["results"]):
        assert ra["samples"] == rb["samples"]
    assert 0 < a["results"][1]["robust_accuracy"] < 1  # the comparison is not vacuous
    # and the points themselves: the NHWC attack's points are the NCHW ones transposed
    ma, mb = load_model(nchw), load_model(nhwc)
    oa, ob = LogProbOracle(ma, "logits"), LogProbOracle(mb, "logits")
    xa = x.astype(np.float64)
    out_a = RayS(channel_axis=0)(oa, xa, y, 0.05, "linf", (0.0, 1.0), RowRng.seeded(3, range(8), 1), 300)
    out_b = RayS(channel_axis=2)(ob, xa.transpose(0, 2, 3, 1), y, 0.05, "linf", (0.0, 1.0),
                                 RowRng.seeded(3, range(8), 1), 300)
    assert np.array_equal(out_a.x_adv.transpose(0, 2, 3, 1), out_b.x_adv)
    recheck(nchw, xa, out_a.x_adv, y, out_a.success, 0.05)
    recheck(nhwc, xa.transpose(0, 2, 3, 1), out_b.x_adv, y, out_b.success, 0.05)
    # HopSkipJump draws its random points and probes channels first: the same attack in either layout
    common = dict(attack="hsja", norm="l2", eps=(0.2, 0.5), budget=300, seed=3)
    a = run_attack(AttackConfig(model=str(nchw), data=str(tmp_path / "a.npz"), **common)).to_dict()
    b = run_attack(AttackConfig(model=str(nhwc), data=str(tmp_path / "b.npz"), **common)).to_dict()
    for ra, rb in zip(a["results"], b["results"]):
        assert [s["success"] for s in ra["samples"]] == [s["success"] for s in rb["samples"]]
        assert [s["queries"] for s in ra["samples"]] == [s["queries"] for s in rb["samples"]]
        assert np.allclose([s["perturbation_norm"] for s in ra["samples"]],
                           [s["perturbation_norm"] for s in rb["samples"]], rtol=1e-9)
    assert 0 < a["results"][0]["robust_accuracy"] < 1 or 0 < a["results"][1]["robust_accuracy"] < 1


def test_audit_runs_the_gradient_free_attacks_whatever_its_gradients(binarized):
    """A policy may list rays beside pgd with gradients fd: rays takes no gradients, so it runs (auto) anyway."""
    from fimaudit.audit import AuditConfig, run_audit

    tmp, real, twin, x, y = binarized
    res = run_audit(AuditConfig(model=str(real), data=str(tmp / "d.npz"), samples=6, eps=(0.1,), budget=200,
                                attacks=("square", "rays"), gradients="fd", whitebox=False,
                                sections=("attacks",))).to_dict()
    section = next(s for s in res["sections"] if s["name"] == "attacks")
    assert section["status"] == "ok", section["reason"]
    runs = section["data"]["runs"]
    assert [r["config"]["attack"] for r in runs] == ["square", "rays"]
    assert all(r["config"]["gradients"] == "auto" for r in runs)


def test_transfer_and_rays_break_an_input_quantized_net_where_apgd_cannot(tmp_path):
    """INT8-style input quantization (QuantizeLinear/DequantizeLinear, step 1/16) before a ReLU MLP: the gradient
    graph's derivative is zero everywhere; the float twin (QDQ removed) is the surrogate."""
    rng = np.random.default_rng(11)
    d, h, k = 20, 32, 3
    w1, b1 = rng.standard_normal((h, d)), rng.standard_normal(h) * 0.5
    w2, b2 = rng.standard_normal((k, h)) / 4, np.zeros(k)
    real = D.quantized_mlp(w1, b1, w2, b2, tmp_path / "q.onnx")
    twin = D.quantized_mlp(w1, b1, w2, b2, tmp_path / "qf.onnx", step=None)
    x = rng.uniform(0, 1, size=(30, d)).astype(np.float32)
    y = np.argmax(ort.InferenceSession(str(real), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0], axis=1)
    np.savez(tmp_path / "q.npz", x=x, y=y)
    base = dict(model=str(real), data=str(tmp_path / "q.npz"), eps=(0.1,))
    apgd = run_attack(AttackConfig(**base, attack="apgd")).to_dict()["results"][0]
    assert apgd["robust_accuracy"] == 1.0 and len(apgd["sanity"]["zero_gradient"]) == len(x)
    model = load_model(real)
    oracle = LogProbOracle(model, "logits")
    sm = load_model(twin)
    sur, _ = gradient_oracle(sm, LogProbOracle(sm, "logits"), "logits", IDENTITY, x.astype(np.float64), "graph", 0)
    xs = x.astype(np.float64)
    for attack in (Transfer(surrogate=sur), RayS()):
        out = attack(oracle, xs, y, 0.1, "linf", (0.0, 1.0), RowRng.seeded(0, range(len(x)), 0), 2000)
        assert recheck(real, xs, out.x_adv, y, out.success, 0.1) >= len(x) // 2, (attack.name, out.success.sum())
