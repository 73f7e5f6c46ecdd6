"""Validation metrics that can see a task's failure (issue 12).

Cosine similarity of raw outputs cannot see a YOLO head whose INT8 scores all rounded
to zero (0.9997 with every box lost): a detector is validated on its *detections*, an
agreement F1 with the source's (IoU 0.5, same class), decoded with the conversion's
decoder spec. Dense maps (segmentation, probability maps) are never read as one class
per sample.
"""

from __future__ import annotations

import numpy as np

from edgeship.vocab import Task

__all__ = ["input_size_of", "detection_agreement", "class_axis", "segmentation_masks", "segmentation_agreement", "COLLAPSED_F1",
           "COLLAPSED_MIOU", "SCORE_THRESHOLD"]

SCORE_THRESHOLD = 0.25  # the usual YOLO confidence threshold
COLLAPSED_F1 = 0.5  # an artifact that agrees on fewer detections than this has lost them
COLLAPSED_MIOU = 0.6  # binary maps: all-background against a map with foreground scores ~0.5


def input_size_of(x: np.ndarray, layout: str | None) -> tuple | None:
    """(height, width) of a 4-D image batch in ``layout``, else None."""
    if x.ndim != 4:
        return None
    return tuple(x.shape[2:4]) if layout == "NCHW" else tuple(x.shape[1:3])


def detection_agreement(reference: list, candidate: list, input_size: tuple | None, decoder: dict | None = None,
                        threshold: float = SCORE_THRESHOLD) -> dict | None:
    """Match F1 of the candidate's decoded detections against the reference's, over the
    batch; None when the outputs are not a decodable detection layout."""
    from edgeship.metrics_detection import match_f1  # noqa: PLC0415
    from edgeship.runtime.tasks.detect import nms  # noqa: PLC0415
    from edgeship.runtime.tasks.detect import decode  # noqa: PLC0415

    from .task_infer import decoder_spec  # noqa: PLC0415

    dec = decoder or decoder_spec([np.shape(r) for r in reference], input_size)
    if dec is None or dec.get("format") == "nms_indices":
        return None  # selected_indices [K,3] of several samples, stacked, no longer say which sample a row is of
    n = len(reference[0])

    def dets(outs, i):
        boxes, scores, ids = decode([o[i:i + 1] for o in outs], input_size=input_size, decoder=dec)
        keep = np.flatnonzero(scores >= threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")[:1000]]
        boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
        sel = nms(boxes, scores, 0.45, classes=ids, max_detections=300)
        return [(boxes[j], int(ids[j]), float(scores[j])) for j in sel]

    try:
        ref = [dets(reference, i) for i in range(n)]
        cand = [dets(candidate, i) for i in range(n)]
    except Exception:  # noqa: BLE001 - not decodable with this spec: no detection metric
        return None
    out = match_f1(ref, cand)
    out["decoder"] = dec.get("format")
    out["threshold"] = threshold
    return out


def _proportional(a: int, b: int) -> bool:
    """``a`` and ``b`` are the same extent up to an integer stride (a map at 1/4 of the input, or 4x)."""
    return a > 0 and b > 0 and (a == b or (a > b and a % b == 0) or (b > a and b % a == 0))


def class_axis(shape: tuple, input_size: tuple | None, layout: str | None) -> int:
    """The class axis (1 or 3) of a 4-D map ``shape``, read from the output itself: the two
    axes whose extents equal (or are proportional to) the input's (H, W) are spatial, the other
    is the class axis. NCHW and NHWC are decided per output (a TFLite-derived ONNX keeps NHWC
    outputs behind an NCHW-less input). Ambiguous (no input size, or C matching H or W too):
    the input ``layout``'s convention (axis 1 for NCHW, else the last)."""
    fallback = 1 if layout == "NCHW" else 3
    if len(shape) != 4 or input_size is None or len(input_size) != 2:
        return fallback
    h, w = int(input_size[0]), int(input_size[1])
    nchw = _proportional(shape[2], h) and _proportional(shape[3], w)
    nhwc = _proportional(shape[1], h) and _proportional(shape[2], w)
    if nchw and nhwc:  # e.g. [1, 64, 64, 64] for a 64x64 input: the shape cannot say
        exact_nchw, exact_nhwc = (shape[2], shape[3]) == (h, w), (shape[1], shape[2]) == (h, w)
        if exact_nchw != exact_nhwc:
            return 1 if exact_nchw else 3
        return fallback
    if nchw:
        return 1
    if nhwc:
        return 3
    return fallback


def segmentation_masks(outputs: np.ndarray, layout: str | None, *, probability: bool | None = None,
                       input_size: tuple | None = None) -> tuple:
    """``(masks [N, H, W] int, num_classes, rule)`` of a dense map batch ``[N, C, H, W]`` (NCHW) or
    ``[N, H, W, C]``: the argmax over ``C`` classes; for one channel, binary: a probability > 0.5
    (values within [0, 1]; ``probability`` overrides) or a logit > 0. The class axis is found
    from the map's shape against ``input_size`` (the model input's (H, W)), see :func:`class_axis`."""
    a = np.asarray(outputs)
    if a.ndim != 4:
        raise ValueError(f"a segmentation map is 4-D, got {a.shape}")
    a = np.moveaxis(a, 1, -1) if class_axis(a.shape, input_size, layout) == 1 else a
    if a.shape[-1] == 1:
        prob = bool(a.min() >= 0.0 and a.max() <= 1.0) if probability is None else probability
        thr = 0.5 if prob else 0.0
        return (a[..., 0] > thr).view(np.uint8), 2, ("probability > 0.5" if prob else "logit > 0")
    mask = np.argmax(a, axis=-1)  # one byte per pixel where it fits: N masks at 640x640 stay small
    return (mask.astype(np.uint8) if a.shape[-1] <= 256 else mask), int(a.shape[-1]), "argmax over classes"


def segmentation_agreement(reference: np.ndarray, candidate: np.ndarray, layout: str | None,
                           input_size: tuple | None = None) -> dict | None:
    """mIoU and pixel accuracy of the candidate's masks against the reference's (the source's),
    over the batch; the binary rule (probability or logit) is read from the reference. The class
    axis is read from the map's shape against ``input_size`` (the input's (H, W)), falling back to
    ``layout``. None when the outputs are not 4-D maps."""
    from edgeship.metrics_segmentation import miou  # noqa: PLC0415

    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.ndim != 4 or ref.shape != cand.shape:
        return None
    r, k, rule = segmentation_masks(ref, layout, input_size=input_size)
    prob = None if k != 2 or np.shape(ref)[class_axis(ref.shape, input_size, layout)] != 1 \
        else rule.startswith("probability")
    c, _, _ = segmentation_masks(cand, layout, probability=prob, input_size=input_size)
    out = miou(list(r), list(c), k)
    out["num_classes"] = k
    out["rule"] = rule
    return out


def check_segmentation(agree: dict | None, name: str, count: int) -> None:
    """Refuse a segmentation artifact whose masks no longer match the source's (mIoU below
    :data:`COLLAPSED_MIOU`), whatever its cosine.

    Raises:
        ValidationFailedError: naming the mIoU.
    """
    from edgeship.errors import ValidationFailedError  # noqa: PLC0415

    if agree is not None and agree["miou"] < COLLAPSED_MIOU:
        raise ValidationFailedError(
            f"{name}: its segmentation masks no longer match the source's (mIoU {agree['miou']:.3f} < "
            f"{COLLAPSED_MIOU}, pixel accuracy {agree['pixel_accuracy']:.3f}, {agree['rule']}, on {count} samples); "
            "try --exclude for the last layers, more representative calibration data, or a float precision"
        )


def is_dense(task: Task | None) -> bool:
    """Tasks whose outputs must not be read as one class per sample."""
    return task is not None and task is not Task.CLASSIFICATION


DENSE_MIN_COSINE = 0.5  # a dense map less similar than this to the source's no longer shows the same things


def check_dense(reference: list, results: list, task: Task | None, name: str) -> None:
    """Refuse a dense map (segmentation, probability/heat map: 4-D, at least 8x8) whose
    cosine similarity to the source's has fallen below :data:`DENSE_MIN_COSINE`.

    Raises:
        ValidationFailedError: naming the output and the cosine.
    """
    from edgeship.errors import ValidationFailedError  # noqa: PLC0415

    if not is_dense(task) or task in (Task.DETECTION, Task.SEGMENTATION):
        return  # detections and masks are checked on their own metric (detection_agreement, check_segmentation)
    for i, (r, res) in enumerate(zip(reference, results)):
        shape = np.shape(r)
        cos = res.get("cosine")
        if len(shape) == 4 and sorted(shape[1:])[1] >= 8 and cos is not None and cos < DENSE_MIN_COSINE:
            raise ValidationFailedError(
                f"{name}: its dense map (output {i}, {list(shape[1:])} per sample) no longer resembles the "
                f"source's (cosine {cos:.2f} < {DENSE_MIN_COSINE}); try --exclude for the last layers, more "
                "representative calibration data, or a float precision"
            )
