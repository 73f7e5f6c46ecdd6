"""Stack per-sample outputs whose sizes differ (issue 12: detectors with NMS inside).

A graph with ``NonMaxSuppression`` inside returns a different number of detections per
image (``det_boxes [1,K,4]`` with its own ``K``), so outputs run one sample at a time
cannot be concatenated as they are. :func:`concat_ragged` concatenates along axis 0 and,
only when the other dimensions differ, first pads each array with zeros at their ends
to the largest size (a padded detection has score 0 and is below any threshold; the
count output, when there is one, still says how many rows are real).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["concat_ragged"]


def concat_ragged(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays, axis=0)``, zero-padding the other dims to the largest when
    they differ (arrays of different ranks are concatenated as they are: numpy raises)."""
    arrays = [np.asarray(a) for a in arrays]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) <= 1 or len({a.ndim for a in arrays}) != 1 or arrays[0].ndim < 2:
        return np.concatenate(arrays, axis=0)
    top = tuple(max(s[d] for s in shapes) for d in range(arrays[0].ndim - 1))
    padded = [np.pad(a, [(0, 0)] + [(0, t - s) for t, s in zip(top, a.shape[1:])]) for a in arrays]
    return np.concatenate(padded, axis=0)
