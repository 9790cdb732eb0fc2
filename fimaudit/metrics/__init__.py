"""Robustness metrics: robust accuracy and ratio, CLEVER, and correlations across models."""

from .clever import CleverResult, clever
from .robustness import prob_change, robust_accuracy, robust_ratio, tv_distance

__all__ = ["CleverResult", "clever", "prob_change", "robust_accuracy", "robust_ratio", "tv_distance"]
