"""Backends: one module per engine behind one small protocol, chosen from a registry.

- :mod:`.base`: the protocol (:class:`Backend`), :class:`RawTensor`,
  :class:`ExecutionInfo` and :class:`ModelSource` (the bytes an engine is given);
- :mod:`.registry`: the table of backends, their priority and availability here;
- :mod:`.options`: typed, frozen options per backend (:class:`TFLiteOptions`,
  :class:`OrtOptions`, :class:`CompiledModelOptions`);
- :mod:`.delegates`: TFLite external delegates (spec strings, device -> library);
- :mod:`.tflite`, :mod:`.compiled_model`, :mod:`.onnxruntime`, :mod:`.openvino`: the engines,
  each imported only when tried.
"""

from __future__ import annotations

from .base import Backend, ExecutionInfo, ModelSource, RawTensor
from .options import BackendOptions, CompiledModelOptions, DelegateSpec, OpenVINOOptions, OrtOptions, TFLiteOptions
from .registry import Entry, available_backends, backend_class, entry, format_available, get, register, registered

__all__ = ["Backend", "BackendOptions", "CompiledModelOptions", "DelegateSpec", "Entry", "ExecutionInfo",
           "ModelSource", "OpenVINOOptions", "OrtOptions", "RawTensor", "TFLiteOptions", "available_backends", "backend_class", "entry",
           "format_available", "get", "register", "registered"]
