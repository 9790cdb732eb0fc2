"""Robustness metrics: robust accuracy and ratio, CLEVER, and correlations across models."""

from .clever import CleverScore, clever
from .robustness import prob_change, robust_accuracy, robust_ratio, tv_distance

__all__ = ["CleverScore", "clever", "prob_change", "robust_accuracy", "robust_ratio", "tv_distance"]
