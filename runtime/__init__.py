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

Layout: :mod:`.load` (``load`` + fallback) -> :mod:`.select` (artifact choice)
-> :mod:`.backends` (protocol, registry, options, delegates, engines) ->
:mod:`.model` (``Model``) over :mod:`.io_plan`; :mod:`.tasks` (classify,
detect); :mod:`.discovery` (``devices()``, the top floor, imported lazily).
"""

from __future__ import annotations

from ..errors import ModelClosedError, ModelNotFoundError
from .backends import (
    CompiledModelOptions,
    DelegateSpec,
    ExecutionInfo,
    ModelSource,
    OpenVINOOptions,
    OrtOptions,
    TFLiteOptions,
    available_backends,
)
from .io_plan import Quantization, TensorSpec
from .loader import load
from .model import Model
from .select import choose_artifact

__all__ = [
    "Class",
    "CompiledModelOptions",
    "DelegateSpec",
    "Detection",
    "ExecutionInfo",
    "Model",
    "ModelClosedError",
    "ModelNotFoundError",
    "ModelSource",
    "OpenVINOOptions",
    "OrtOptions",
    "Quantization",
    "TFLiteOptions",
    "TensorSpec",
    "available_backends",
    "choose_artifact",
    "devices",
    "get_classes",
    "get_scores",
    "load",
]


def __getattr__(name: str):
    # Device discovery is the top floor (it asks every backend), and task results and
    # helpers come with their adapters: imported on first use, not at ``import edgeship.runtime``.
    if name == "devices":
        from .discovery import devices  # noqa: PLC0415

        return devices
    if name in ("Detection", "Class", "get_classes", "get_scores"):
        from . import tasks  # noqa: PLC0415  (lazy too: a cold start imports no task adapter)

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
