"""Kept for existing imports: object detection lives in :mod:`edgeship.runtime.tasks.detect`."""

from __future__ import annotations

from .tasks.detect import (
    FORMATS,
    BBox,
    Detection,
    box_iou,
    decode,
    decode_ssd,
    decode_ssd_raw,
    decode_yolo,
    detect,
    model_labels,
    nms,
    postprocess,
    prepare_input,
    preprocess_spec,
    to_image_boxes,
)

__all__ = ["FORMATS", "BBox", "Detection", "box_iou", "decode", "decode_ssd", "decode_ssd_raw", "decode_yolo", "detect",
           "model_labels", "nms", "postprocess", "prepare_input", "preprocess_spec", "to_image_boxes"]
