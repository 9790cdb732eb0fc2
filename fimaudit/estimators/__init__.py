"""Estimators of lambda_max(F) and tr(F): exact, sketch, Hutchinson, lower bound; finite differences."""

from .core import PROBES, Estimate, certified_lower_bound, exact, probe_directions, quadratic_form, sketch, small_matrix
from .fd import StepChoice, choose_step, input_scale, jvp

__all__ = [
    "PROBES",
    "Estimate",
    "exact",
    "certified_lower_bound",
    "sketch",
    "probe_directions",
    "quadratic_form",
    "small_matrix",
    "StepChoice",
    "choose_step",
    "input_scale",
    "jvp",
]
