"""The attack contract: query-counted, seeded attacks that respect the eps-ball and the valid input range.

Attacks work in *attack space*: the data after ``--scale`` (e.g. pixels in [0, 1]); the oracle
maps it to the model input. ``Attack.__call__`` does the fixed work (checks shapes, range and
eps, projects and clips the result, re-evaluates the model to decide success); subclasses
implement ``run``. All arrays are ``(n, *sample_shape)``; labels ``(n,)``.

The loss is the margin s_y - max_{j != y} s_j on log-probabilities, which equals the logit
margin (log-softmax shifts every class alike); an attack succeeds when it becomes negative.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .. import progress
from .. import streams
from ..errors import ConfigError
from ..estimators.fd import coordinate_differences
from ..model.oracle import LogProbOracle

NORMS = ("linf", "l2")


def margins(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """s_y - max_{j != y} s_j per row."""
    true = logp[np.arange(len(y)), y]
    other = logp.copy()
    other[np.arange(len(y)), y] = -np.inf
    return true - other.max(axis=1)


def project(delta: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """Project perturbations (n, ...) onto the eps-ball of the norm."""
    if norm == "linf":
        return np.clip(delta, -eps, eps)
    flat = delta.reshape(len(delta), -1)
    nrm = np.linalg.norm(flat, axis=1)
    factor = np.where(nrm > eps, eps / np.maximum(nrm, 1e-300), 1.0)
    return (flat * factor[:, None]).reshape(delta.shape)


@dataclass(frozen=True)
class AttackOutcome:
    """Per-sample results of one attack at one eps."""

    x_adv: np.ndarray
    success: np.ndarray  # bool: prediction changed from the label on a correctly classified sample
    correct: np.ndarray  # bool: clean prediction equals the label
    clean_logp: np.ndarray
    adv_logp: np.ndarray
    queries: np.ndarray  # int per sample, including the final evaluation
    eps: float
    norm: str


class Budget:
    """Per-sample query accounting for vectorised attacks."""

    def __init__(self, n: int, limit: int) -> None:
        self.used = np.zeros(n, dtype=np.int64)
        self.limit = int(limit)
        self.on_spend = None  # progress hook: called with the queries spent so far (fimaudit.progress)

    def left(self, idx: np.ndarray | None = None) -> np.ndarray:
        rem = self.limit - self.used
        return rem if idx is None else rem[idx]

    def spend(self, idx: np.ndarray, per_sample: int) -> None:
        self.used[idx] += per_sample
        if self.on_spend is not None:
            self.on_spend(int(self.used.sum()))


class Attack(ABC):
    """Base class: ``__call__`` is final; subclasses implement ``run``."""

    name = "attack"
    norms: tuple[str, ...] = NORMS

    def __call__(
        self,
        oracle: LogProbOracle,
        x: np.ndarray,
        y: np.ndarray,
        eps: float,
        norm: str,
        bounds: tuple[float, float],
        rng: np.random.Generator,
        budget: int,
        clean_logp: np.ndarray | None = None,
    ) -> AttackOutcome:
        if norm not in self.norms:
            raise ConfigError(f"{self.name} supports norms {', '.join(self.norms)}, not '{norm}'")
        if not np.isfinite(eps) or eps < 0:
            raise ConfigError(f"eps must be a nonnegative number, not {eps}")
        lo, hi = bounds
        if x.shape[0] != y.shape[0] or tuple(x.shape[1:]) != tuple(oracle.sample_shape):
            raise ValueError(f"x {x.shape} and y {y.shape} do not fit the model's sample shape {oracle.sample_shape}")
        if np.any(x < lo - 1e-9) or np.any(x > hi + 1e-9):
            raise ConfigError(
                f"data lie outside --input-range [{lo:g}, {hi:g}] (min {x.min():.4g}, max {x.max():.4g}); "
                "set --input-range or --scale"
            )
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        acct = Budget(n, budget)
        if clean_logp is None:
            clean_logp = oracle.logp(x)
            acct.spend(np.arange(n), 1)
        correct = np.argmax(clean_logp, axis=1) == y
        if eps == 0:
            x_adv = x.copy()
        else:
            # keep one query per sample for the final evaluation
            acct.limit -= 1
            with progress.task(f"{self.name} eps {eps:g}", total=n * budget, unit="queries") as bar:
                acct.on_spend = bar.update
                x_adv = self.run(oracle, x, y, eps, norm, (lo, hi), rng, acct, correct)
                acct.on_spend = None
            acct.limit += 1
        x_adv = np.clip(x + project(x_adv - x, eps, norm), lo, hi)
        adv_logp = oracle.logp(x_adv)
        acct.spend(np.arange(n), 1)
        success = correct & (np.argmax(adv_logp, axis=1) != y)
        return AttackOutcome(x_adv, success, correct, clean_logp, adv_logp, acct.used.copy(), float(eps), norm)

    @abstractmethod
    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        """Return adversarial inputs (n, *shape); only rows with ``active`` need attacking."""


# ------------------------------------------------------------------ per-sample random streams
class RowRng:
    """One seeded Generator per sample row, drawn from as one batch.

    Each draw whose first axis is the row axis takes row i from row i's own Generator, so a
    sample's draws (and so its attack) do not depend on which other samples share its batch:
    the report is the same whether the samples run together, in chunks or on Dask workers.
    """

    def __init__(self, gens: list[np.random.Generator]) -> None:
        self.gens = list(gens)

    @classmethod
    def named(cls, seed: int, name: str, indices, *keys: int) -> "RowRng":
        """Row i draws from stream ``name`` of ``fimaudit.streams`` with keys ``(indices[i], *keys)``."""
        return cls([streams.rng(seed, name, int(i), *keys) for i in indices])

    @classmethod
    def seeded(cls, seed: int, indices, eps_index: int) -> "RowRng":
        """Row i draws from the "attack.rows" stream ``[seed, indices[i], eps_index]``."""
        return cls.named(seed, "attack.rows", indices, eps_index)

    def __len__(self) -> int:
        return len(self.gens)

    def rows(self, idx) -> "RowRng":
        return RowRng([self.gens[int(i)] for i in idx])

    def _draw(self, name: str, size, *args) -> np.ndarray:
        size = (size,) if np.isscalar(size) else tuple(size)
        if not size or size[0] != len(self.gens):
            raise ValueError(f"a per-row draw needs the row count {len(self.gens)} as its first size, not {size}")
        if not self.gens:
            return np.empty(size)
        return np.stack([np.asarray(getattr(g, name)(*args, size=size[1:])) for g in self.gens])

    def uniform(self, low: float = 0.0, high: float = 1.0, size=None) -> np.ndarray:
        return self._draw("uniform", size, low, high)

    def standard_normal(self, size=None) -> np.ndarray:
        return self._draw("standard_normal", size)

    def integers(self, low: int, high: int, size=None) -> np.ndarray:
        return self._draw("integers", size, low, high)

    def choice(self, a, size=None) -> np.ndarray:
        return self._draw("choice", size, a)


def rows_of(rng, idx):
    """The random stream for the rows ``idx`` of a batch: their own Generators, or the shared one."""
    return rng.rows(idx) if isinstance(rng, RowRng) else rng


def row_of(rng, j: int) -> np.random.Generator:
    """Row ``j``'s Generator (the shared one when the batch has a single stream)."""
    return rng.gens[j] if isinstance(rng, RowRng) else rng


# ------------------------------------------------------------------ gradient sources
def fd_margin_grad(oracle: LogProbOracle, x: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """Gradient of the margin at each row by central differences on every coordinate (2d queries per row)."""
    n = len(x)
    d = int(np.prod(x.shape[1:]))
    lp0 = oracle.logp(x)
    other = lp0.copy()
    other[np.arange(n), y] = -np.inf
    runner = np.argmax(other, axis=1)
    grads = np.zeros((n, d))
    chunk = max(1, 4096 // max(1, 2 * n))
    for start in range(0, d, chunk):
        idx = np.arange(start, min(d, start + chunk))
        diff = coordinate_differences(oracle.logp, x, idx, h)
        grads[:, idx] = diff[np.arange(n), :, y] - diff[np.arange(n), :, runner]
    return grads.reshape(x.shape)


def nes_margin_grad(oracle: LogProbOracle, x: np.ndarray, y: np.ndarray, sigma: float, m: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Zeroth-order (NES, antithetic Gaussian) gradient of the margin: 2m queries per row."""
    n = len(x)
    d = int(np.prod(x.shape[1:]))
    flat = x.reshape(n, d)
    u = rng.standard_normal((n, m, d))
    plus = flat[:, None, :] + sigma * u
    minus = flat[:, None, :] - sigma * u
    lp = oracle.logp(np.concatenate([plus.reshape(n * m, d), minus.reshape(n * m, d)]).reshape((-1,) + x.shape[1:]))
    mp = margins(lp[: n * m], np.repeat(y, m)).reshape(n, m)
    mm = margins(lp[n * m :], np.repeat(y, m)).reshape(n, m)
    g = np.einsum("nm,nmd->nd", (mp - mm) / (2 * sigma), u) / m
    return g.reshape(x.shape)
