"""The one finite-difference gradient helper (estimators.fd.coordinate_differences) and the range step rule."""

from types import SimpleNamespace

import numpy as np

from fimaudit.attacks.base import fd_margin_grad
from fimaudit.estimators.fd import coordinate_differences, paired_differences, range_step

W = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 1.0, 1.0], [-1.0, 0.0, 4.0]])  # d=4, K=3


def quad_logp(x):
    """log-p-like scores with a known gradient: z = W^T x + 0.5 |x|^2 (every class), rows (n, 2, 2)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat @ W + 0.5 * np.sum(flat**2, axis=1, keepdims=True)


def test_central_differences_are_exact_on_a_quadratic():
    rows = np.array([[[0.3, -0.1], [0.7, 0.2]], [[-1.0, 0.5], [0.0, 2.0]]])
    coords = np.array([0, 2, 3])
    got = coordinate_differences(quad_logp, rows, coords, 1e-3)
    want = W[coords][None] + rows.reshape(2, -1)[:, coords, None]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


def test_float32_rows_divide_by_the_step_they_really_take():
    rows = np.full((1, 2, 2), 1000.0)
    h = 1e-4  # below float32 resolution at 1000 (ulp 6e-5): the rows move by 2 ulps, not 2h
    got = coordinate_differences(quad_logp, rows, np.array([0]), h, dtype=np.float32, exact_step=True)
    np.testing.assert_allclose(got[0, 0], W[0] + 1000.0, rtol=1e-3)


def test_the_attack_margin_gradient_is_built_on_it():
    oracle = SimpleNamespace(logp=quad_logp)
    x = np.array([[[0.3, -0.1], [0.7, 0.2]]])
    y = np.array([0])
    g = fd_margin_grad(oracle, x, y, 1e-3)
    z = quad_logp(x)[0]
    runner = int(np.argmax(np.where(np.arange(3) == 0, -np.inf, z)))
    np.testing.assert_allclose(g.reshape(-1), W[:, 0] - W[:, runner], rtol=1e-7, atol=1e-8)


def test_range_step():
    assert range_step((0.0, 1.0)) == 1e-3 and range_step((-2.0, 2.0), 1e-2) == 0.04


def test_every_black_box_caller_takes_its_step_from_range_step(monkeypatch):
    """The gradient attacks (fd and NES), CLEVER's default and compare's CLEVER all step by ``range_step``."""
    from fimaudit.attacks import gradient
    from fimaudit.attacks.base import Budget
    import importlib

    clever_mod = importlib.import_module("fimaudit.metrics.clever")  # fimaudit.metrics.clever is also a function

    seen = []
    monkeypatch.setattr(gradient, "fd_margin_grad", lambda o, x, y, h: seen.append(("fd", h)) or np.ones_like(x))
    monkeypatch.setattr(gradient, "nes_margin_grad",
                        lambda o, x, y, sigma, m, rng: seen.append(("zo", sigma)) or np.ones_like(x))
    oracle = SimpleNamespace(logp=quad_logp, queries=0)
    x, y = np.zeros((1, 2, 2)), np.array([0])
    for grad, budget in (("fd", 100), ("zo", 100)):
        gradient.BIM(steps=1, grad=grad, fd_rel_step=1e-2).run(oracle, x, y, 0.1, "linf", (-2.0, 2.0),
                                                                 np.random.default_rng(0), Budget(1, budget), np.ones(1, bool))
    assert seen == [("fd", range_step((-2.0, 2.0), 1e-2)), ("zo", 10 * range_step((-2.0, 2.0), 1e-2))]

    steps = []

    def jvp(o, pt, coords, h):
        steps.append(h)
        return quad_logp(pt.reshape(1, 2, 2))[0][None].repeat(len(coords), 0)

    monkeypatch.setattr(clever_mod, "jvp_coordinates", jvp)
    clever_mod.clever(oracle, np.zeros((2, 2)), "l2", 0.5, np.random.default_rng(0), n_batches=2, batch_size=2)
    assert steps and set(steps) == {range_step((0.0, 1.0))}


def test_paired_differences_step_each_row_along_its_own_direction():
    """The self-check's helper: exact on a quadratic (central differences), and ``first`` rows are not asked again."""
    rows = np.array([[[0.3, -0.1], [0.7, 0.2]], [[-1.0, 0.5], [0.0, 2.0]]])
    dirs = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.5, -0.5], [1.0, 2.0]]])
    want = np.stack([dirs[i].reshape(-1) @ (W + rows[i].reshape(-1)[:, None]) for i in range(2)])
    np.testing.assert_allclose(paired_differences(quad_logp, rows, dirs, 1e-3), want, rtol=1e-8, atol=1e-8)
    asked = []

    def counted(x):
        asked.append(len(x))
        return quad_logp(x)

    first = quad_logp(rows[:1] + 1e-3 * dirs[:1])
    np.testing.assert_allclose(paired_differences(counted, rows, dirs, 1e-3, first), want, rtol=1e-8, atol=1e-8)
    assert asked == [3]
