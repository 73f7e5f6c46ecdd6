"""The exporters, one per (source kind, format): an explicit table, not an if/elif chain.

Each entry names the function (``module:function``) that writes one artifact of
that format from a loaded source of that kind; the module is imported only when
the exporter is used (TensorFlow, tf2onnx and onnx2tf are heavy). The contract of
an exporter is in :mod:`edgeship.converters.registry`.

=====================  ======================================================
(keras, tflite)        ``tf.lite.TFLiteConverter`` (every precision)
(keras, onnx)          tf2onnx, checked against Keras, then INT8 QDQ
(onnx, onnx)           FP32 copy (dims fixed) or INT8 QDQ (onnxruntime)
(onnx, tflite)         onnx2tf to an NHWC SavedModel, then TFLite quantization
=====================  ======================================================
"""

from __future__ import annotations

import importlib
from typing import Callable

EXPORTERS: dict[tuple[str, str], str] = {
    ("keras", "tflite"): "edgeship.converters.tflite:export",
    ("keras", "onnx"): "edgeship.converters.onnx_formats:export_onnx_from_keras",
    ("onnx", "onnx"): "edgeship.converters.onnx_formats:export_onnx_from_onnx",
    ("onnx", "tflite"): "edgeship.converters.onnx_formats:export_tflite_from_onnx",
}


def find(source_kind: str, fmt) -> Callable | None:
    """The exporter function for ``(source_kind, fmt)``; None when the table has no entry
    or its module cannot be imported here (ONNX support not installed)."""
    ref = EXPORTERS.get((str(source_kind), str(getattr(fmt, "value", fmt))))
    if ref is None:
        return None
    modname, _, func = ref.partition(":")
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name in ("onnx", "onnxruntime", "tf2onnx", "onnx2tf"):
            return None
        raise
    return getattr(module, func)
