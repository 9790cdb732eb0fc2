"""FGSM, BIM and PGD (L-inf and L2) from black-box gradients of the margin.

Gradients come from full central differences (2d+1 queries per step) when the budget allows
at least ``min_fd_steps`` such steps, else from NES zeroth-order estimates sized to the budget.
Iterative attacks stop early on samples already misclassified.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..estimators.fd import RANGE_REL_STEP, range_step
from .base import Attack, Budget, fd_margin_grad, margins, nes_margin_grad, project, rows_of

GRAD_SOURCES = ("auto", "fd", "zo")


def _direction(g: np.ndarray, norm: str) -> np.ndarray:
    """Steepest-descent direction of unit size in the norm (for minimising the margin)."""
    if norm == "linf":
        return -np.sign(g)
    flat = g.reshape(len(g), -1)
    nrm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (-flat / np.maximum(nrm, 1e-300)).reshape(g.shape)


class GradientAttack(Attack):
    """Shared machinery: gradient source, step schedule and early stopping."""

    name = "gradient"
    random_start = False
    default_steps = 10

    def __init__(self, steps: int | None = None, grad: str = "auto", zo_probes: int = 50, min_fd_steps: int = 1,
                 fd_rel_step: float = RANGE_REL_STEP) -> None:
        if grad not in GRAD_SOURCES:
            raise ConfigError(f"--gradients for --attack {self.name} must be one of {', '.join(GRAD_SOURCES)} "
                              f"(black-box gradients; --attack pgd-wb or apgd take exact ones from the graph), not '{grad}'")
        self.steps = steps or self.default_steps
        self.grad = grad
        self.zo_probes = zo_probes
        self.min_fd_steps = min_fd_steps
        self.fd_rel_step = fd_rel_step

    def _plan(self, d: int, budget: int) -> tuple[str, int, int]:
        """(source, steps, probes) so that steps * cost fits the per-sample budget."""
        fd_cost = 2 * d + 2  # gradient rows + centre + the margin check
        if self.grad == "fd" or (self.grad == "auto" and budget >= fd_cost * min(self.steps, self.min_fd_steps)):
            steps = min(self.steps, budget // fd_cost)
            if steps < 1:
                raise ConfigError(f"--budget {budget} cannot pay one finite-difference gradient (2d+2 = {fd_cost})")
            return "fd", steps, 0
        # NES: spend the whole budget, at least zo_probes probes per gradient when it allows.
        steps = max(1, min(self.steps, budget // (2 * self.zo_probes + 1)))
        m = max(1, (budget // steps - 1) // 2)
        return "zo", steps, m

    def step_size(self, eps: float, steps: int, norm: str) -> float:
        # 2.5 eps / steps lets the iterate cross the whole ball (2 eps) even from a random start.
        return eps if steps == 1 else 2.5 * eps / steps

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        lo, hi = bounds
        d = int(np.prod(x.shape[1:]))
        source, steps, m = self._plan(d, int(acct.left().min()))
        h = range_step((lo, hi), self.fd_rel_step)
        x_adv = x.copy()
        if self.random_start:
            if norm == "linf":
                start = rng.uniform(-eps, eps, size=x.shape)
            else:
                u = rng.standard_normal(x.shape).reshape(len(x), -1)
                u /= np.linalg.norm(u, axis=1, keepdims=True)
                r = eps * rng.uniform(size=(len(x), 1)) ** (1.0 / d)
                start = (u * r).reshape(x.shape)
            x_adv = np.clip(x + start, lo, hi)
        todo = np.flatnonzero(active)
        alpha = self.step_size(eps, steps, norm)
        for _ in range(steps):
            if todo.size == 0:
                break
            xa = x_adv[todo]
            if source == "fd":
                g = fd_margin_grad(oracle, xa, y[todo], h)
                acct.spend(todo, 2 * d + 1)
            else:
                g = nes_margin_grad(oracle, xa, y[todo], h * 10, m, rows_of(rng, todo))
                acct.spend(todo, 2 * m)
            new = xa + alpha * _direction(g, norm)
            new = np.clip(x[todo] + project(new - x[todo], eps, norm), lo, hi)
            x_adv[todo] = new
            if steps > 1:
                mg = margins(oracle.logp(new), y[todo])
                acct.spend(todo, 1)
                todo = todo[mg >= 0]
                todo = todo[acct.left(todo) >= (2 * d + 2 if source == "fd" else 2 * m + 1)]
        return x_adv


class FGSM(GradientAttack):
    """One signed (L-inf) or normalised (L2) gradient step of size eps."""

    name = "fgsm"
    default_steps = 1

    def __init__(self, **kw) -> None:
        kw["steps"] = 1
        super().__init__(**kw)


class BIM(GradientAttack):
    """Basic iterative method: repeated small steps from the clean point, projected to the ball."""

    name = "bim"
    default_steps = 10


class PGD(GradientAttack):
    """Projected gradient descent with a uniform random start in the ball."""

    name = "pgd"
    random_start = True
    default_steps = 10
