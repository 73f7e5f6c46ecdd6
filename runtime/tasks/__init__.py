"""Task adapters: raw model outputs -> small immutable results (pycoral style).

- :mod:`.classify`: ``Class(id, score, label)``, :func:`get_classes`, ``classify.classify(model, image)``.
- :mod:`.detect`: ``Detection(bbox, id, score, label)``, SSD/YOLO decoders, NMS, ``detect.detect(model, image)``.
- :mod:`.segment`: ``Segmentation(mask, classes)``, :func:`get_mask`.
- :mod:`.common`: the model's side of the one image -> input rule (layout, spec, labels).

The submodules are the namespaces, as in pycoral (``from edgeship.runtime.tasks
import detect; detect.detect(model, image)``): the package re-exports the
result types and the array-level functions, never a function named like a
submodule. Every adapter is a free function over numpy arrays or over anything with
``run``/``inputs``; none imports OpenCV (only the preprocessing rule does,
inside its functions, when an image must be resized).
"""

from __future__ import annotations

from . import classify, common, detect, segment
from .classify import Class, get_classes, get_scores, is_probability, softmax
from .common import input_layout, model_labels, prepare_input, preprocess_spec
from .detect import BBox, Detection, decode, nms, postprocess
from .segment import Segmentation, get_mask, get_segmentation

__all__ = [
    "BBox",
    "Class",
    "Detection",
    "Segmentation",
    "classify",
    "common",
    "decode",
    "detect",
    "get_classes",
    "get_mask",
    "get_scores",
    "get_segmentation",
    "input_layout",
    "is_probability",
    "model_labels",
    "nms",
    "postprocess",
    "prepare_input",
    "preprocess_spec",
    "segment",
    "softmax",
]
