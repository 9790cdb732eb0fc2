"""Estimators of lambda_max(F) and tr(F): exact, sketch, Hutchinson, lower bound, smoothed F_sigma; Jacobian sources."""

from .core import Estimate, certified_lower_bound, exact, kl_check, quadratic_form, small_matrix
from .fd import StepChoice, choose_step, input_scale, jvp
from .probes import PROBES, probe_directions
from .smoothed import SmoothedEstimate, default_sigma, smoothed_fisher
from .source import FiniteDifferences, JacobianSource
from .subspace import deflated_sketch, sketch

__all__ = [
    "PROBES",
    "Estimate",
    "SmoothedEstimate",
    "default_sigma",
    "smoothed_fisher",
    "FiniteDifferences",
    "JacobianSource",
    "exact",
    "certified_lower_bound",
    "deflated_sketch",
    "kl_check",
    "sketch",
    "probe_directions",
    "quadratic_form",
    "small_matrix",
    "StepChoice",
    "choose_step",
    "input_scale",
    "jvp",
]
