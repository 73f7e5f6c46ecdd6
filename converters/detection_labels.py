"""``convert --eval DIR`` on a detector, with labels: validation on the task metric (issue 12).

When the evaluation folder of a detection conversion has YOLO txt labels (``a.txt``
beside ``a.jpg``, or ``labels/a.txt`` beside ``images/``; the layout ``edgeship eval
--data`` reads), the source and each artifact are measured on them with COCO-style
mAP@0.5:0.95 (:func:`edgeship.metrics_detection.coco_map`), detections made as
``edgeship eval`` makes them (score >= 0.001, at most 100 per image, boxes in the
image's pixels), and ``max_drop`` applies to ``100 * (source - artifact)``. Without
labels, validation stays the detections' agreement (F1) with the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["LabelledDetections", "load_labelled", "labelled_map", "METRIC", "METRIC_TEXT"]

METRIC = "map50_95"  # the manifest's name of the metric ``max_drop`` applies to with labels
METRIC_TEXT = "mAP@0.5:0.95"
EVAL_THRESHOLD = 0.001  # as ``edgeship eval`` (COCO evaluation wants low-score detections too)
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class LabelledDetections:
    """Ground truth of the validation samples, in their order: one ``((width, height), boxes)`` per image."""

    truth: tuple
    spec: object  # the PreprocessSpec the samples were made with
    decoder: dict | None
    labels: tuple | None
    source: str
    kind: str = "YOLO txt"
    metric_text: str = "mAP@0.5:0.95 against the labels"

    def __len__(self) -> int:
        return len(self.truth)


def load_labelled(folder, spec, shape: tuple, labels, decoder: dict | None, count: int):
    """``(x [N, *shape] float32, LabelledDetections)`` of a labelled image folder, in file order;
    None when ``folder`` is not a folder or has no label files.

    Raises:
        CalibrationError: labels that cannot be read, or images that do not become ``shape``.
    """
    from edgeship.errors import CalibrationError, InputError  # noqa: PLC0415
    from edgeship.evaluate_detection import load_labelled_images  # noqa: PLC0415
    from edgeship.images import read_image  # noqa: PLC0415

    if spec is None or not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(os.fspath(folder)):
        return None
    folder = os.fspath(folder)
    try:
        items = load_labelled_images(folder, None, labels, count)
    except InputError as exc:
        if "no YOLO label files" in str(exc):
            return None  # an unlabelled folder: agreement with the source
        raise CalibrationError(f"--eval {folder!r}: {exc}") from None
    xs, truth = [], []
    for path, gt in items:
        img = read_image(path)
        sample = spec.apply(img)
        if tuple(sample.shape) != tuple(shape):
            raise CalibrationError(f"images in {folder!r} become samples shaped {tuple(sample.shape)} with the "
                                   f"preprocessing spec, but the model expects {tuple(shape)}; fix --preprocess")
        xs.append(sample)
        truth.append(((int(img.shape[1]), int(img.shape[0])), tuple(gt)))
    x = np.stack(xs).astype(np.float32)
    return x, LabelledDetections(tuple(truth), spec, decoder, tuple(labels) if labels else None, folder)


def _detections(outputs: list, lab: LabelledDetections) -> list:
    from edgeship.runtime.tasks.detect import postprocess  # noqa: PLC0415

    out = []
    for i, (size, _gt) in enumerate(lab.truth):
        out.append(postprocess([np.asarray(o)[i:i + 1] for o in outputs], size, spec=lab.spec,
                               threshold=EVAL_THRESHOLD, max_detections=MAX_DETECTIONS, labels=lab.labels,
                               decoder=lab.decoder))
    return out


def labelled_map(reference: list, candidate: list, lab: LabelledDetections) -> dict:
    """mAP@0.5:0.95 and mAP@0.5 of the source (``reference`` outputs) and of the artifact
    (``candidate``) against the labels: the manifest's validation keys."""
    from edgeship.metrics_detection import coco_map  # noqa: PLC0415

    truth = [gt for _size, gt in lab.truth]
    src = coco_map(truth, _detections(reference, lab))
    art = coco_map(truth, _detections(candidate, lab))
    return {METRIC: art["map"], f"source_{METRIC}": src["map"], "map50": art["map50"], "source_map50": src["map50"],
            "labelled_images": len(lab), "drop_metric": METRIC}
