"""White-box attacks from exact gradients (vector-Jacobian products of log p): PGD, APGD, minimal-norm search, sanity flags.

Same contract as the black-box attacks (``Attack.__call__`` checks, projects, clips and
re-evaluates); the oracle must also answer ``vjp_at(x, u)``: rows S(x_i)^T u_i, the gradient
of u_i^T log p at each point x_i (a gradient graph, see ``GradientOracle``). A query here is one
row evaluated by the model, forward or forward+backward.

Losses on log-probabilities l (their differences equal the logits'):

- ``ce``: cross-entropy -l_y.
- ``dlr``: difference of logits ratio (Croce & Hein 2020), -(l_y - max_{j!=y} l_j) / (l_pi1 - l_pi3),
  invariant to shifting and scaling the logits; for two classes the margin -(l_y - l_o).

APGD's schedule (Croce & Hein 2020, Alg. 1, written from the paper): step 2 eps, momentum 0.75,
checkpoints at fractions p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); at a
checkpoint the step halves and the iterate restarts from the best point when fewer than 75% of
the steps since the last checkpoint increased the loss, or when neither the step nor the best
loss changed since then.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConfigError
from .base import Attack, Budget, margins, rows_of

LOSSES = ("ce", "dlr")
SEARCH_FLOOR = 1e-6


class GradientOracle:
    """A query oracle plus exact VJPs at any batch of points: ``vjp_at(x (n, ...), u (n, K)) -> (n, ...)``."""

    def __init__(self, oracle, vjp_at: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.oracle = oracle
        self._vjp_at = vjp_at
        self.gradient_rows = 0

    @property
    def queries(self) -> int:
        return self.oracle.queries + self.gradient_rows

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.oracle.sample_shape)

    def logp(self, x: np.ndarray) -> np.ndarray:
        return self.oracle.logp(x)

    def vjp_at(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        self.gradient_rows += len(x)
        return np.asarray(self._vjp_at(x, u), dtype=np.float64).reshape(x.shape)


def has_gradients(oracle) -> bool:
    return callable(getattr(oracle, "vjp_at", None))


def loss_and_weights(logp: np.ndarray, y: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss to maximise and its gradient with respect to log p, ``(n,)`` and ``(n, K)``."""
    n, k = logp.shape
    rows = np.arange(n)
    if loss == "ce":
        u = np.zeros_like(logp)
        u[rows, y] = -1.0
        return -logp[rows, y], u
    if loss != "dlr":
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not '{loss}'")
    other = logp.copy()
    other[rows, y] = -np.inf
    o = np.argmax(other, axis=1)
    m = logp[rows, y] - logp[rows, o]
    u = np.zeros_like(logp)
    if k < 3:  # no third class: the plain margin
        u[rows, y], u[rows, o] = -1.0, 1.0
        return -m, u
    order = np.argsort(-logp, axis=1)
    p1, p3 = order[:, 0], order[:, 2]
    den = logp[rows, p1] - logp[rows, p3] + 1e-12
    u[rows, y] -= 1.0 / den
    u[rows, o] += 1.0 / den
    np.add.at(u, (rows, p1), m / den**2)
    np.add.at(u, (rows, p3), -m / den**2)
    return -m / den, u


def project_each(delta: np.ndarray, eps: np.ndarray, norm: str) -> np.ndarray:
    """Project row i of ``delta`` onto the ``eps[i]``-ball of the norm."""
    shape = delta.shape
    flat = delta.reshape(len(delta), -1)
    if norm == "linf":
        return np.clip(flat, -eps[:, None], eps[:, None]).reshape(shape)
    nrm = np.linalg.norm(flat, axis=1)
    factor = np.where(nrm > eps, eps / np.maximum(nrm, 1e-300), 1.0)
    return (flat * factor[:, None]).reshape(shape)


def _ascent(g: np.ndarray, norm: str) -> np.ndarray:
    flat = g.reshape(len(g), -1)
    if norm == "linf":
        return np.sign(g)
    return (flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-300)).reshape(g.shape)


def _random_start(x: np.ndarray, eps: np.ndarray, norm: str, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    d = int(np.prod(x.shape[1:]))
    if norm == "linf":
        return rng.uniform(-1, 1, size=x.shape) * eps.reshape((n,) + (1,) * (x.ndim - 1))
    u = rng.standard_normal((n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return (u * (eps * rng.uniform(size=n) ** (1.0 / d))[:, None]).reshape(x.shape)


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoint iterations for a run of ``steps`` iterations."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(np.ceil(round(q * steps, 9))) for q in p[1:] if q < 1})  # round: 0.57 * 100 is 57.000...01


def gradient_ascent(oracle, x: np.ndarray, y: np.ndarray, eps: np.ndarray, norm: str, bounds: tuple[float, float],
                    rng: np.random.Generator, steps: int, loss: str = "ce", schedule: str = "apgd",
                    start: str = "random", judge=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise the loss in the per-sample eps-balls (clipped to ``bounds``) with exact gradients.

    ``schedule``: ``apgd`` (momentum, step halving at checkpoints) or ``pgd`` (fixed step
    2.5 eps / steps). Returns the point with the lowest margin found per row (the first
    misclassified one once there is one), its margin, and the queries per row: every row
    evaluated, forward or gradient.

    ``judge`` (a transfer attack): another model decides. The loss, its gradients and the step
    schedule come from ``oracle`` (a surrogate); the margins, the best point and the stopping
    come from ``judge.logp`` at every iterate, and the queries per row count only the judge's rows.
    """
    lo, hi = bounds
    n = len(x)
    bshape = (n,) + (1,) * (x.ndim - 1)

    def clip(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.clip(x[rows] + project_each(z - x[rows], eps[rows], norm), lo, hi)

    everyone = np.arange(n)
    cur = clip(x + _random_start(x, eps, norm, rng), everyone) if start == "random" else x.copy()
    used = np.zeros(n, dtype=np.int64)

    def evaluate(z: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lp = oracle.logp(z)
        f, u = loss_and_weights(lp, y[rows], loss)
        used[rows] += 1
        return f, margins(lp if judge is None else judge.logp(z), y[rows]), u

    f, mg, u = evaluate(cur, everyone)
    best_x, best_m = cur.copy(), mg.copy()
    f_max, x_max = f.copy(), cur.copy()
    prev = cur.copy()
    if schedule == "apgd":
        eta = (2.0 * eps).reshape(bshape)
        marks = set(checkpoints(steps))
        last_mark, increases = 0, np.zeros(n)
        eta_at_mark, fmax_at_mark = eta.copy(), f_max.copy()
    else:
        eta = (2.5 * eps / steps).reshape(bshape)
    for it in range(steps):
        act = np.flatnonzero(best_m >= 0)  # rows already adversarial stop: no more gradients for them
        if act.size == 0:
            break
        g = oracle.vjp_at(cur[act], u[act])
        if judge is None:
            used[act] += 1
        z = clip(cur[act] + eta[act] * _ascent(g, norm), act)
        if schedule == "apgd" and it > 0:
            z = clip(cur[act] + 0.75 * (z - cur[act]) + 0.25 * (cur[act] - prev[act]), act)
        prev[act], cur[act] = cur[act], z
        f_new = f.copy()
        f_new[act], mg[act], u[act] = evaluate(cur[act], act)
        better = mg < best_m
        best_x[better], best_m[better] = cur[better], mg[better]
        if schedule == "apgd":
            increases[act] += f_new[act] > f[act]
            up = f_new > f_max
            f_max[up], x_max[up] = f_new[up], cur[up]
            if it + 1 in marks:
                span = it + 1 - last_mark
                stalled = (increases < 0.75 * span) | ((eta_at_mark == eta).reshape(n) & (fmax_at_mark == f_max))
                s_idx = np.flatnonzero(stalled & (best_m >= 0))
                if s_idx.size:
                    eta[s_idx] /= 2
                    cur[s_idx] = x_max[s_idx]
                    prev[s_idx] = x_max[s_idx]
                    f_new[s_idx], mg[s_idx], u[s_idx] = evaluate(cur[s_idx], s_idx)
                last_mark, increases = it + 1, np.zeros(n)
                eta_at_mark, fmax_at_mark = eta.copy(), f_max.copy()
        f = f_new
    return best_x, best_m, used


class WhiteBoxAttack(Attack):
    """PGD or APGD with exact gradients, ``restarts`` random starts; the best (lowest margin) point per sample."""

    name = "apgd"
    schedule = "apgd"

    def __init__(self, steps: int | None = None, loss: str = "ce", restarts: int = 1, **_: object) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not '{loss}'")
        self.steps = steps or 100
        self.loss = loss
        self.restarts = max(1, int(restarts))

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        if not has_gradients(oracle):
            raise ConfigError(f"{self.name} needs gradients from the model's graph; use --attack pgd or square (black-box)")
        x_adv = x.copy()
        todo = np.flatnonzero(active)
        best_m = np.full(len(x), np.inf)
        for r in range(self.restarts):
            if todo.size == 0:
                break
            per = 2 * self.steps + 1  # each step: one gradient row and one forward row
            todo = todo[acct.left(todo) >= per]
            if todo.size == 0:
                break
            eps_arr = np.full(todo.size, float(eps))
            start = "random" if r > 0 or self.schedule == "pgd" else "clean"
            xb, mb, used = gradient_ascent(oracle, x[todo], y[todo], eps_arr, norm, bounds, rows_of(rng, todo),
                                           self.steps, self.loss, self.schedule, start)
            acct.spend(todo, int(np.ceil(used.sum() / todo.size)))  # as before: the batch mean of the rows
            better = mb < best_m[todo]
            x_adv[todo[better]] = xb[better]
            best_m[todo[better]] = mb[better]
            todo = todo[mb >= 0]
        return x_adv


class WhiteBoxPGD(WhiteBoxAttack):
    """Projected gradient ascent with exact gradients, fixed step 2.5 eps / steps, random start."""

    name = "pgd-wb"
    schedule = "pgd"


class APGD(WhiteBoxAttack):
    """Auto-PGD: momentum and the checkpoint step-size schedule, first run from x, restarts random."""

    name = "apgd"
    schedule = "apgd"


def minimal_distance(oracle, x: np.ndarray, y: np.ndarray, norm: str, bounds: tuple[float, float],
                     rng: np.random.Generator, steps: int = 50, loss: str = "dlr", search: int = 12,
                     eps_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's smallest adversarial distance found (in ``norm``), by binary search over eps with APGD.

    For every sample the bracket [0, eps_max] is halved ``search`` times in log scale (the lower end
    starts at 1e-6 of the upper one): APGD at the midpoint
    either finds an adversarial point (whose actual distance becomes the new upper end) or not
    (the midpoint becomes the lower end). Returns (distance, adversarial points); distance is
    inf where none was found at eps_max and 0 for samples misclassified already.
    """
    lo_b, hi_b = bounds
    n = len(x)
    d = int(np.prod(x.shape[1:]))
    if eps_max is None:
        eps_max = (hi_b - lo_b) * (1.0 if norm == "linf" else np.sqrt(d))
    wrong = margins(oracle.logp(x), y) < 0
    best = np.where(wrong, 0.0, np.inf)
    best_x = x.copy()
    lower = np.zeros(n)
    upper = np.full(n, float(eps_max))
    todo = ~wrong
    for it in range(search + 1):
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        # geometric midpoints: the bracket spans orders of magnitude at first (eps_max is the whole box)
        eps = upper[idx] if it == 0 else np.sqrt(np.maximum(lower[idx], SEARCH_FLOOR * upper[idx]) * upper[idx])
        xb, mb, _ = gradient_ascent(oracle, x[idx], y[idx], eps, norm, bounds, rows_of(rng, idx), steps, loss, "apgd",
                                    "clean")
        found = mb < 0
        delta = (xb - x[idx]).reshape(idx.size, -1)
        dist = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        hit = idx[found]
        improve = dist[found] < best[hit]
        best[hit[improve]] = dist[found][improve]
        best_x[hit[improve]] = xb[found][improve]
        upper[hit] = np.minimum(upper[hit], dist[found])
        lower[idx[~found]] = eps[~found]
        if it == 0:
            todo[idx[~found]] = False  # nothing within eps_max: give up on those
    return best, best_x


def sanity_flags(oracle, x: np.ndarray, y: np.ndarray, whitebox_success: np.ndarray,
                 blackbox_success: np.ndarray | None) -> dict:
    """AutoAttack-style warnings that a white-box evaluation may overstate robustness.

    - ``blackbox_beats_whitebox``: samples where the black-box attack (Square) succeeded and the
      white-box one did not (masked or obfuscated gradients);
    - ``zero_gradient``: samples whose cross-entropy gradient is exactly zero at x;
    - ``nondeterministic``: the model gave different outputs for the same inputs twice.
    """
    flags: dict = {}
    if blackbox_success is not None:
        beat = np.flatnonzero(blackbox_success & ~whitebox_success)
        flags["blackbox_beats_whitebox"] = beat.tolist()
    lp = oracle.logp(x)
    _, u = loss_and_weights(lp, y, "ce")
    g = oracle.vjp_at(x, u).reshape(len(x), -1)
    flags["zero_gradient"] = np.flatnonzero(~np.any(g != 0, axis=1)).tolist()
    again = oracle.logp(x)
    flags["nondeterministic"] = bool(np.any(again != lp))
    flags["warnings"] = [
        text for text, bad in (
            (f"black-box Square beat the white-box attack on {len(flags.get('blackbox_beats_whitebox', []))} samples: "
             "gradients may be masked; robust accuracy is overstated", bool(flags.get("blackbox_beats_whitebox"))),
            (f"zero gradients at {len(flags['zero_gradient'])} samples: gradient attacks cannot move there (a "
             "piecewise-constant model? try --attack rays, or --attack transfer --surrogate FILE)",
             bool(flags["zero_gradient"])),
            ("the model's outputs are not deterministic for the same input", flags["nondeterministic"]),
        ) if bad
    ]
    return flags
