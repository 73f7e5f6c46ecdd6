"""``convert --eval DIR`` on a segmentation model, with label masks: validation on mIoU against the
labels (issue 12), as ``detection_labels`` does for detectors with mAP.

When the evaluation folder has label masks (one PNG per image, pixel = class id, 255 = ignore, in a
sibling ``masks/``, ``SegmentationClass/`` or ``labels/`` folder: the layout ``edgeship eval --data``
reads), the source's and each artifact's masks, mapped back to each image's pixels the way
``Model.segment`` maps them, are compared with the labels, and ``max_drop`` applies to
``100 * (source mIoU - artifact mIoU)``. Without masks, validation stays the masks' agreement
(mIoU) with the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["LabelledMasks", "load_labelled_masks", "labelled_miou", "METRIC", "METRIC_TEXT"]

METRIC = "label_miou"
METRIC_TEXT = "mIoU against the label masks"


@dataclass(frozen=True)
class LabelledMasks:
    """Label masks of the validation samples, in their order (each at its image's size)."""

    truth: tuple
    spec: object  # the PreprocessSpec the samples were made with
    source: str
    kind: str = "PNG masks"
    metric_text: str = METRIC_TEXT

    def __len__(self) -> int:
        return len(self.truth)


def load_labelled_masks(folder, spec, shape: tuple, count: int):
    """``(x [N, *shape] float32, LabelledMasks)`` of the images in ``folder`` that have a mask;
    None when ``folder`` is not a folder or has no mask folder beside it.

    Raises:
        CalibrationError: masks that cannot be read or do not match their image's size, or images
            that do not become ``shape``.
    """
    from edgeship.errors import CalibrationError, InputError  # noqa: PLC0415
    from edgeship.evaluate_segmentation import find_masks, read_mask  # noqa: PLC0415
    from edgeship.images import read_image  # noqa: PLC0415

    if spec is None or not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(os.fspath(folder)):
        return None
    folder = os.fspath(folder)
    try:
        _where, pairs = find_masks(folder)
    except InputError:
        return None  # no masks: agreement with the source
    xs, truth = [], []
    try:
        for path, mask in [pm for pm in pairs if pm[1] is not None][:count]:
            img = read_image(path)
            t = read_mask(mask)
            if t.shape != img.shape[:2]:
                raise InputError(f"mask {mask!r} is {t.shape[1]}x{t.shape[0]} but its image is "
                                 f"{img.shape[1]}x{img.shape[0]}; a label mask has the image's size")
            sample = spec.apply(img)
            if tuple(sample.shape) != tuple(shape):
                raise InputError(f"images in {folder!r} become samples shaped {tuple(sample.shape)} with the "
                                 f"preprocessing spec, but the model expects {tuple(shape)}; fix --preprocess")
            xs.append(sample)
            truth.append(t)
    except InputError as exc:
        raise CalibrationError(f"--eval {folder!r}: {exc}") from None
    return np.stack(xs).astype(np.float32), LabelledMasks(tuple(truth), spec, folder)


def labelled_miou(reference: list, candidate: list, lab: LabelledMasks) -> dict:
    """mIoU and pixel accuracy of the source's (``reference`` outputs) and the artifact's masks against
    the labels: the manifest's validation keys."""
    from edgeship.evaluate_segmentation import image_mask, num_classes  # noqa: PLC0415
    from edgeship.metrics_segmentation import miou  # noqa: PLC0415

    ref, cand = np.asarray(reference[0]), np.asarray(candidate[0]).reshape(np.shape(reference[0]))
    k = num_classes(ref[:1])
    # a mask is made from each sample's scores at its image's size, as Model.segment makes it
    src = [image_mask(ref[i:i + 1], t, lab.spec) for i, t in enumerate(lab.truth)]
    art = [image_mask(cand[i:i + 1], t, lab.spec) for i, t in enumerate(lab.truth)]
    s, a = miou(list(lab.truth), src, k), miou(list(lab.truth), art, k)
    return {METRIC: a["miou"], f"source_{METRIC}": s["miou"], "label_pixel_accuracy": a["pixel_accuracy"],
            "source_label_pixel_accuracy": s["pixel_accuracy"], "labelled_images": len(lab), "drop_metric": METRIC}
