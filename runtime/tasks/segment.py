"""Semantic segmentation: per-pixel scores -> a class mask, as a small immutable result.

::

    seg = get_segmentation(model.run(x)["logits"][0], labels=model.labels)
    print(seg.mask.shape, [c.label for c in seg.classes])

:func:`get_mask` gives the mask in the model's output resolution;
:func:`segment` runs a model on an image and maps the mask back to the image's
pixels, undoing the letterbox/centre-crop/stretch of the preprocessing
(nearest neighbour, numpy only). A one-channel output is a foreground
probability (or logit) map: thresholded, not argmax-ed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from ...preprocess import PreprocessSpec, ResizeMode
from .classify import Class
from .common import model_labels, prepare_input, preprocess_spec

__all__ = ["Segmentation", "get_mask", "get_segmentation", "segment", "segment_outputs", "to_image_mask"]


class Segmentation(NamedTuple):
    """One segmented sample.

    Attributes:
      mask: ``(H, W)`` int32 class id per pixel (read-only).
      classes: The classes present, largest area first, as ``Class(id, score, label)``
        with ``score`` the fraction of the pixels they cover.
    """

    mask: np.ndarray
    classes: tuple[Class, ...]
    probabilities: np.ndarray | None = None  # (H, W, C) float32 at the mask's size, when asked for


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
    if s.ndim == 3 and 1 in (s.shape[0], s.shape[-1]) and min(s.shape[0], s.shape[-1]) == 1:
        p = s.reshape(s.shape[1:] if s.shape[0] == 1 and s.shape[-1] != 1 else s.shape[:2])
        cut = 0.5 if float(np.min(p)) >= 0.0 and float(np.max(p)) <= 1.0 else 0.0  # probability, else logit
        mask = (p > cut).astype(np.int32)
    elif s.ndim == 2:
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


def _source_index(n_image: int, n_input: int, n_output: int, scale: float, offset: float) -> np.ndarray:
    """For each image pixel along one axis, the output pixel it comes from (nearest)."""
    u = (np.arange(n_image, dtype=np.float64) + 0.5) * scale + offset  # in model-input pixels
    return np.clip(np.floor(u * n_output / n_input), 0, n_output - 1).astype(np.int64)


def to_image_mask(values: np.ndarray, image_size: tuple[int, int], spec: PreprocessSpec | None) -> np.ndarray:
    """A per-pixel array at the model's output resolution (``(h, w)`` or ``(h, w, C)``) ->
    the same at the image's ``image_size`` (width, height), undoing the preprocessing's geometry."""
    v = np.asarray(values)
    oh, ow = v.shape[:2]
    iw, ih = image_size
    h, w = spec.size if spec is not None else (oh, ow)
    mode = spec.resize if spec is not None else ResizeMode.STRETCH
    if mode in (ResizeMode.STRETCH, ResizeMode.NONE):
        ys = _source_index(ih, h, oh, h / ih, 0.0)
        xs = _source_index(iw, w, ow, w / iw, 0.0)
    elif mode is ResizeMode.LETTERBOX:
        s = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
        ys = _source_index(ih, h, oh, s, (h - nh) // 2)
        xs = _source_index(iw, w, ow, s, (w - nw) // 2)
    else:  # centre crop
        s = max(h / ih, w / iw)
        nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
        ys = _source_index(ih, h, oh, s, -((nh - h) // 2))
        xs = _source_index(iw, w, ow, s, -((nw - w) // 2))
    return v[ys[:, None], xs[None, :]]


def _fits(a: int, b: int) -> bool:
    return a > 0 and b > 0 and (a % b == 0 or b % a == 0)


def _channels_first(shape: tuple, input_hw: tuple | None) -> bool:
    """Whether a ``(d0, d1, d2)`` map is ``(C, H, W)``: read from which two axes match the
    model input's (H, W) (equal or an integer stride apart), so a ``(128, 128, 150)`` map is
    150 classes whatever its sizes; when both or neither match, the smaller end axis is C."""
    if input_hw is not None:
        h, w = int(input_hw[0]), int(input_hw[1])
        first, last = _fits(shape[1], h) and _fits(shape[2], w), _fits(shape[0], h) and _fits(shape[1], w)
        if first != last:
            return first
    return shape[0] < shape[-1] and shape[0] <= 512


def segment(model, image: np.ndarray, *, probabilities: bool = False, output: str | None = None) -> Segmentation:
    """Segment one image (HxWx3 BGR uint8): the class mask at the image's size.

    Args:
      model: an :class:`edgeship.runtime.Model` (anything with ``run`` and ``inputs``).
      image: the image; the mask comes back in its pixels (letterbox/crop undone).
      probabilities: also return per-class scores ``(H, W, C)`` at the image's size.
      output: the output to read (default: the first).

    Raises:
      InputError: the image is not an image, or the output is not a per-pixel map.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise InputError(f"expected an image shaped HxW or HxWx3, got {img.shape}")
    spec = preprocess_spec(model, img)  # img: a dynamic-size input runs at its size
    outs = model.run(prepare_input(model, spec, img))
    scores = outs[output] if output is not None else next(iter(outs.values()))
    return segment_outputs(scores, (img.shape[1], img.shape[0]), spec, labels=model_labels(model),
                           probabilities=probabilities)


def segment_outputs(scores: np.ndarray, image_size: tuple[int, int], spec: PreprocessSpec | None, *,
                    labels: Sequence[str] | None = None, probabilities: bool = False) -> Segmentation:
    """One sample's score map (a batch of one, ``(H, W, C)`` or ``(C, H, W)``) -> its :class:`Segmentation`
    at the image's ``image_size`` (width, height), the preprocessing's geometry undone: what
    :func:`segment` and streams do after the model has run."""
    s = np.asarray(scores)
    s = s[0] if s.ndim == 4 else s
    if s.ndim == 3 and _channels_first(s.shape, spec.size if spec is not None else None):
        s = np.moveaxis(s, 0, -1)  # (C, H, W) -> (H, W, C)
    mask = np.ascontiguousarray(to_image_mask(get_mask(s, channels_first=False), image_size, spec))
    mask.setflags(write=False)
    seg = get_segmentation(mask, labels=labels)
    if not probabilities:
        return seg
    prob = to_image_mask(s if s.ndim == 3 else s[..., None], image_size, spec).astype(np.float32)
    return seg._replace(probabilities=prob)
