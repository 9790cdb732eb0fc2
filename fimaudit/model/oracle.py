"""From raw model outputs to log-probabilities: output-kind detection and the query oracle.

The estimators only ever see ``LogProbOracle.logp``: rows of points in the *estimation
space* (model-input units, or stored-data units when the report is per data unit) mapped
to float64 log-probabilities (MATH §1: logits are log-softmaxed, probabilities logged).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp

from ..choices import OUTPUT_KINDS
from ..errors import ModelOutputError
from .engine import Model

_TINY = np.finfo(np.float64).tiny


def detect_output_kind(raw: np.ndarray, final_op: str | None = None, tol: float = 1e-3) -> str:
    """Classify outputs ``(n, K)`` as logits, probabilities or log-probabilities, from the values."""
    if raw.size == 0:
        return "logits"
    sums = raw.sum(axis=1)
    if np.all(raw >= -1e-7) and np.all(raw <= 1 + 1e-6) and np.all(np.abs(sums - 1) <= tol):
        return "probabilities"
    if np.all(raw <= 1e-6) and np.all(np.abs(logsumexp(raw, axis=1)) <= tol):
        return "log-probabilities"
    return "logits"


def to_log_probs(raw: np.ndarray, kind: str) -> np.ndarray:
    """float64 log-probabilities from raw outputs of the given kind."""
    if kind == "logits":
        return raw - logsumexp(raw, axis=1, keepdims=True)
    if kind == "probabilities":
        p = np.clip(raw, 0.0, None)
        s = p.sum(axis=1, keepdims=True)
        return np.log(np.maximum(p, _TINY)) - np.log(s)
    if kind == "log-probabilities":
        return raw - logsumexp(raw, axis=1, keepdims=True)
    raise ValueError(f"unknown output kind {kind!r}")


def check_output_kind(raw: np.ndarray, kind: str, output_name: str) -> None:
    """Refuse outputs that cannot be of the declared kind (e.g. negative 'probabilities')."""
    if kind == "probabilities":
        if np.any(raw < -1e-6) or np.any(np.abs(raw.sum(axis=1) - 1) > 1e-2):
            raise ModelOutputError(
                f"output '{output_name}' was declared as probabilities but its rows are not nonnegative and summing "
                "to 1; use --output-kind logits"
            )
    elif kind == "log-probabilities":
        if np.any(np.abs(logsumexp(raw, axis=1)) > 1e-2):
            raise ModelOutputError(
                f"output '{output_name}' was declared as log-probabilities but exp of its rows does not sum to 1; "
                "use --output-kind logits"
            )


class LogProbOracle:
    """Query oracle: points in estimation space -> float64 log-probabilities, counted by the model.

    ``to_input`` maps estimation-space rows to model-input rows (an affine preprocessing map,
    or ``None`` for identity).
    """

    def __init__(self, model: Model, kind: str, to_input: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind must be one of {OUTPUT_KINDS}")
        self.model = model
        self.kind = kind
        self._to_input = to_input

    @property
    def queries(self) -> int:
        return self.model.queries

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.model.sample_shape

    @property
    def feeds_directly(self) -> bool:
        """True when rows reach the model unchanged (no preprocessing map in between)."""
        return self._to_input is None

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """Estimation-space rows ``x`` as the model receives them (``x`` itself when nothing maps them)."""
        return self._to_input(x) if self._to_input is not None else x

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(self.model_input(x))

    def logp(self, x: np.ndarray) -> np.ndarray:
        """``x``: ``(n, *sample_shape)``; returns ``(n, K)`` float64 log-probabilities."""
        return to_log_probs(self.raw(x), self.kind)
