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

import importlib

# Lazy (PEP 562): ``load`` + ``run`` never need a task adapter, and a device's cold start
# should not pay for importing them; each name is resolved on first use.
_SUBMODULES = ("classify", "common", "detect", "segment")
_NAMES = {
    "Class": "classify", "get_classes": "classify", "get_scores": "classify", "is_probability": "classify",
    "softmax": "classify",
    "infer_task": "common", "input_layout": "common", "model_labels": "common", "prepare_input": "common", "preprocess_spec": "common",
    "BBox": "detect", "Detection": "detect", "decode": "detect", "nms": "detect", "postprocess": "detect",
    "Segmentation": "segment", "get_mask": "segment", "get_segmentation": "segment",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))


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
