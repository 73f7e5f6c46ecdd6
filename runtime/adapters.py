"""Kept for existing imports: the classification adapter lives in :mod:`edgeship.runtime.tasks.classify`."""

from __future__ import annotations

from .tasks.classify import PROBABILITY_SUM_TOLERANCE, Class, classify, get_classes, get_scores, is_probability, softmax

__all__ = ["PROBABILITY_SUM_TOLERANCE", "Class", "classify", "get_classes", "get_scores", "is_probability", "softmax"]
