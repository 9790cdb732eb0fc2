"""Transfer attack: white-box APGD on a differentiable surrogate, judged on the real model at every step.

For piecewise-constant models (INT8-quantized, binarized with Sign) the real gradients are zero
almost everywhere, so white-box attacks cannot move. A *surrogate* (e.g. the float twin: Sign
replaced by a smooth Tanh, quantize/dequantize pairs removed) has the same input shape and
useful gradients. The attack runs APGD with the surrogate's exact gradients (its gradient
graph) and its loss schedule, but every iterate is evaluated on the real model, which alone
decides: the best point per sample is the one with the lowest *real* margin, and a sample stops
as soon as the real model misclassifies it. Queries count the real model's rows only (at most
1 + steps + checkpoints per run); the surrogate's forward and gradient rows are counted apart
(``surrogate_rows``). ``Attack.__call__`` re-evaluates the final points on the real model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Attack, Budget, rows_of
from .whitebox import LOSSES, checkpoints, gradient_ascent, has_gradients


class Transfer(Attack):
    """APGD on ``surrogate`` (an oracle with ``logp`` and ``vjp_at``, e.g. ``GradientOracle``), success on the real model."""

    name = "transfer"

    def __init__(self, surrogate=None, steps: int | None = None, loss: str = "ce", restarts: int = 1) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not '{loss}'")
        self.surrogate = surrogate
        self.steps = steps or 100
        self.loss = loss
        self.restarts = max(1, int(restarts))

    @property
    def surrogate_rows(self) -> int:
        """Rows the surrogate evaluated so far (forward and gradient): its work, not queries of the real model."""
        return int(getattr(self.surrogate, "queries", 0))

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        if self.surrogate is None or not has_gradients(self.surrogate):
            raise ConfigError("--attack transfer needs a surrogate model with a gradient graph (--surrogate FILE)")
        if tuple(self.surrogate.sample_shape) != tuple(x.shape[1:]):
            raise ConfigError(f"the surrogate takes samples of shape {list(self.surrogate.sample_shape)}, the model "
                              f"{list(x.shape[1:])}: a surrogate must take the model's input")
        x_adv = x.copy()
        todo = np.flatnonzero(active)
        best_m = np.full(len(x), np.inf)
        per = 1 + self.steps + len(checkpoints(self.steps))  # the real model's rows in one run, at most
        for r in range(self.restarts):
            todo = todo[acct.left(todo) >= per]
            if todo.size == 0:
                break
            xb, mb, used = gradient_ascent(self.surrogate, x[todo], y[todo], np.full(todo.size, float(eps)), norm,
                                           bounds, rows_of(rng, todo), self.steps, self.loss, "apgd",
                                           "clean" if r == 0 else "random", judge=oracle)
            acct.spend(todo, used)
            better = mb < best_m[todo]
            x_adv[todo[better]] = xb[better]
            best_m[todo[better]] = mb[better]
            todo = todo[mb >= 0]
        return x_adv
