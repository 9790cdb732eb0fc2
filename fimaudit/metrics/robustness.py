"""Robust accuracy and robust ratio from attack outcomes (definitions in docs/attacks.md).

- RA(eps): fraction of samples that are correctly classified and still correctly classified
  after the attack.
- RR(eps, tau): fraction of samples that are correctly classified, keep their prediction
  under the attack, and whose predicted-class probability moves by at most tau.
- RR_TV(eps, tau): the same with the total-variation distance between the clean and attacked
  output distributions in place of the predicted-class probability change.

With tau >= 1 both ratios equal RA (no probability moves by more than 1).
"""

from __future__ import annotations

import numpy as np

from ..attacks.base import AttackOutcome


def robust_accuracy(out: AttackOutcome) -> float:
    return float(np.mean(out.correct & ~out.success))


def _kept(out: AttackOutcome) -> np.ndarray:
    return out.correct & (np.argmax(out.adv_logp, axis=1) == np.argmax(out.clean_logp, axis=1))


def prob_change(out: AttackOutcome) -> np.ndarray:
    pred = np.argmax(out.clean_logp, axis=1)
    rows = np.arange(len(pred))
    return np.abs(np.exp(out.clean_logp[rows, pred]) - np.exp(out.adv_logp[rows, pred]))


def tv_distance(out: AttackOutcome) -> np.ndarray:
    return 0.5 * np.sum(np.abs(np.exp(out.clean_logp) - np.exp(out.adv_logp)), axis=1)


def robust_ratio(out: AttackOutcome, tau: float, variant: str = "prob") -> float:
    change = prob_change(out) if variant == "prob" else tv_distance(out)
    return float(np.mean(_kept(out) & (change <= tau)))
