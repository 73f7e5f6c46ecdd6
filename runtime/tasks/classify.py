"""Classification: scores -> ``Class(id, score, label)``, best first.

Modelled on pycoral's ``adapters/classify.py``: a result is a ``NamedTuple``
and the adapters are plain functions over numpy arrays, so they work with the
output of any backend (or of any other runtime)::

    for c in classify(model, image, top_k=3):
        print(c.label, c.score)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from .common import model_labels, prepare_input, preprocess_spec

__all__ = ["Class", "classify", "get_classes", "get_scores", "is_probability", "softmax"]

# Scores count as probabilities when each is in [0, 1] and they sum to 1 within
# this tolerance (INT8 softmax outputs are quantized, so their sum is off by a
# few quantization steps).
PROBABILITY_SUM_TOLERANCE = 0.02


class Class(NamedTuple):
    """One classification result.

    Attributes:
      id: The class index in the model output.
      score: The class probability (after softmax if the model emits logits).
      label: The class name from the bundle's labels, or ``None``.
    """

    id: int
    score: float
    label: str | None = None


def is_probability(scores: np.ndarray) -> bool:
    """Whether ``scores`` already look like a probability distribution.

    The rule: every value is in ``[0, 1]`` and the values sum to 1 within
    :data:`PROBABILITY_SUM_TOLERANCE`. A single score (a sigmoid output) in
    ``[0, 1]`` also counts as a probability.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        return False
    if s.min() < 0.0 or s.max() > 1.0:
        return False
    return s.size == 1 or abs(float(s.sum()) - 1.0) <= PROBABILITY_SUM_TOLERANCE


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (float32)."""
    s = np.asarray(scores, dtype=np.float32)
    e = np.exp(s - np.max(s, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def get_scores(scores: np.ndarray) -> np.ndarray:
    """Class probabilities of one sample as a 1-D float32 array.

    ``scores`` is the output for one sample (any shape with one non-trivial
    axis, e.g. ``(1, N)`` or ``(N,)``). Softmax is applied only when the values
    are not already probabilities (see :func:`is_probability`), i.e. when the
    model emits logits.

    Raises:
      InputError: ``scores`` is empty or not numeric.
    """
    s = np.asarray(scores)
    if s.dtype.kind not in "fiu" or s.size == 0:
        raise InputError(f"expected a non-empty numeric score array, got dtype {s.dtype} and shape {s.shape}")
    s = s.astype(np.float32, copy=False).reshape(-1)
    return s if is_probability(s) else softmax(s)


def get_classes(scores: np.ndarray, top_k: int = 5, threshold: float = 0.0,
                labels: Sequence[str] | None = None) -> tuple[Class, ...]:
    """The ``top_k`` classes of one sample scoring at least ``threshold``, best first.

    Args:
      scores: The model output for one sample (logits or probabilities).
      top_k: The most classes to return (at least 1).
      threshold: The smallest score to return (on the probability scale).
      labels: Class names indexed by class id; ids outside it get ``None``.

    Returns:
      A tuple of :class:`Class`, highest score first (ties: lower id first).

    Raises:
      InputError: ``top_k`` is not a positive integer, ``threshold`` is not a
        number, or ``scores`` is not a numeric array.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number, got {threshold!r}") from None
    probs = get_scores(scores)
    k = min(int(top_k), probs.size)
    order = np.argsort(-probs, kind="stable")[:k]
    n_labels = len(labels) if labels is not None else 0
    return tuple(
        Class(int(i), float(probs[i]), labels[i] if i < n_labels else None)
        for i in order
        if probs[i] >= threshold
    )


def classify(model, image: np.ndarray, top_k: int = 5, threshold: float = 0.0) -> tuple[Class, ...]:
    """Classify one image (HxWx3 BGR uint8, as OpenCV gives it) with any model.

    The image goes through the model's preprocessing (the one rule, in the
    layout ``model.run`` takes); the scores are the model's first output.

    Args:
      model: an :class:`edgeship.runtime.Model` (anything with ``run`` and ``inputs``).
      image: the image.
      top_k, threshold: as for :func:`get_classes`.

    Returns:
      A tuple of :class:`Class`, best first, labelled from the model's labels.

    Raises:
      InputError: the image is not an image, the model input is not an image
        and there is no spec, or ``top_k``/``threshold`` are invalid.
    """
    img = np.asarray(image)
    outputs = model.run(prepare_input(model, preprocess_spec(model, img), img))
    scores = np.asarray(next(iter(outputs.values())))[0]
    return get_classes(scores, top_k=top_k, threshold=threshold, labels=model_labels(model))
