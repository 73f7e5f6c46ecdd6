"""edgeship.runtime: run an edgeship bundle (or a bare .tflite/.onnx file) on a device.

Needs only numpy and a TFLite interpreter (``ai-edge-litert``, installed with
edgeship) or ONNX Runtime; TensorFlow, ONNX and OpenCV are never imported here
(OpenCV only when ``predict`` has to decode or resize an image).

Example::

    import edgeship.runtime as rt

    model = rt.load("artifacts/digits")        # verifies sha256, picks INT8 TFLite
    probs = model.run(batch)["probs"]          # float in, float out, any batch
    top = model.classify(frame, top_k=3)       # (Class(id, score, label), ...)
    print(model.info.backend, model.info.threads)
    model.close()
"""

from __future__ import annotations

from .tasks import Class, get_classes, get_scores
from .backends import ExecutionInfo
from .model import (
    Model,
    ModelClosedError,
    ModelNotFoundError,
    Quantization,
    TensorSpec,
    available_backends,
    choose_artifact,
    load,
)

__all__ = [
    "Class",
    "ExecutionInfo",
    "Model",
    "ModelClosedError",
    "ModelNotFoundError",
    "Quantization",
    "TensorSpec",
    "available_backends",
    "choose_artifact",
    "get_classes",
    "get_scores",
    "load",
]
