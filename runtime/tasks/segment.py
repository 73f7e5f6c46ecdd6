"""Semantic segmentation: per-pixel scores -> a class mask, as a small immutable result.

::

    seg = get_segmentation(model.run(x)["logits"][0], labels=model.labels)
    print(seg.mask.shape, [c.label for c in seg.classes])

numpy only: the mask is in the model's output resolution (map it to the
image with the same geometry the preprocessing used, e.g. ``cv2.resize`` with
``INTER_NEAREST`` for a stretch resize).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from .classify import Class

__all__ = ["Segmentation", "get_mask", "get_segmentation"]


class Segmentation(NamedTuple):
    """One segmented sample.

    Attributes:
      mask: ``(H, W)`` int32 class id per pixel (read-only).
      classes: The classes present, largest area first, as ``Class(id, score, label)``
        with ``score`` the fraction of the pixels they cover.
    """

    mask: np.ndarray
    classes: tuple[Class, ...]


def get_mask(scores: np.ndarray, *, channels_first: bool | None = None) -> np.ndarray:
    """``(H, W)`` int32 class ids from the scores of one sample.

    Args:
      scores: ``(H, W, C)`` or ``(C, H, W)`` per-class scores (logits or
        probabilities), or ``(H, W)`` ids already; a leading batch axis of 1 is dropped.
      channels_first: the class axis is first (NCHW models); default: the
        smaller of the first and last axes is the class axis.

    Raises:
      InputError: ``scores`` is not 2-D or 3-D numeric.
    """
    s = np.asarray(scores)
    if s.ndim == 4 and s.shape[0] == 1:
        s = s[0]
    if s.dtype.kind not in "fiu" or s.ndim not in (2, 3) or s.size == 0:
        raise InputError(f"segmentation scores must be (H, W, C), (C, H, W) or (H, W) numbers; got "
                         f"{s.dtype} {s.shape}")
    if s.ndim == 2:
        mask = s.astype(np.int32)
    else:
        first = channels_first if channels_first is not None else s.shape[0] < s.shape[-1]
        mask = np.argmax(s, axis=0 if first else -1).astype(np.int32)
    mask.setflags(write=False)
    return mask


def get_segmentation(scores: np.ndarray, *, labels: Sequence[str] | None = None,
                     channels_first: bool | None = None) -> Segmentation:
    """The mask of one sample and the classes in it (largest area first; ties: lower id first).

    Raises:
      InputError: as for :func:`get_mask`.
    """
    mask = get_mask(scores, channels_first=channels_first)
    ids, counts = np.unique(mask, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))
    n_labels = len(labels) if labels is not None else 0
    total = float(mask.size)
    classes = tuple(Class(int(ids[i]), float(counts[i]) / total, labels[int(ids[i])] if 0 <= ids[i] < n_labels else None)
                    for i in order)
    return Segmentation(mask, classes)
