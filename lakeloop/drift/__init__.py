"""Drift statistics and decisions: numpy and Arrow kernels, no pandas in the hot path."""

from lakeloop.drift._reference import DriftReport, DriftThresholds, FeatureDrift, Reference
from lakeloop.drift._stats import chi_square, js_distance, psi

__all__ = ["DriftReport", "DriftThresholds", "FeatureDrift", "Reference", "chi_square", "js_distance", "psi"]
