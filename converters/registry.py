"""Registries that connect model sources to artifact exporters.

``convert()`` loads the source with a *loader* (chosen by what the model is),
then asks one *exporter* per requested format to write an artifact. Adding a
format or a source kind means registering a function here, not growing an
if/elif chain in ``convert()``.

Contract
--------
loader(model, *, input_shape, allow_legacy_h5, allow_unsafe) -> Source
exporter(source, request: ExportRequest) -> dict
    Writes exactly one model file at ``request.out_path`` and returns the parts
    of its manifest artifact entry it knows: ``format``, ``precision``, ``io``,
    ``layout``, ``inputs``, ``outputs`` (tensor dicts) and optional ``notes``
    (list of str) and ``extra`` (dict merged into the manifest's ``settings``).
    ``file``, ``sha256``, ``bytes`` and ``gzip_bytes`` are filled in by convert().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT16X8 = "int16x8"


class IOType(str, Enum):
    """Input/output tensor type of an artifact.

    ``INT16`` is the integer I/O of an ``int16x8`` model. ``convert()`` hands
    exporters ``INT8`` for it (the integer choice; an int16x8 exporter writes
    int16 tensors) and records ``"int16"`` in the manifest.
    """

    FLOAT = "float"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"


class Format(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


@dataclass
class Source:
    """A loaded source model.

    ``predict`` runs the *source* model on a float32 batch in ``layout`` and
    returns its outputs in order (the reference for validation).
    """

    kind: str  # "keras" or "onnx": which exporters apply
    format: str  # manifest source.format: keras3|tf_keras|saved_model|h5|onnx|in_memory
    path: str | None
    sha256: str | None
    layout: str  # "NHWC", "NCHW" or "other"
    inputs: list  # tensor dicts, batch dimension fixed (usually 1)
    outputs: list
    handle: Any  # keras.Model, tf_keras.Model, SavedModel path, or ONNX path
    predict: Callable[[np.ndarray], list]
    framework_versions: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


@dataclass(frozen=True)
class ExportRequest:
    precision: Precision
    io: IOType
    calib: np.ndarray | None  # float32 samples in the source layout, shape (N, ...)
    out_path: str  # write the artifact file here
    workdir: str  # scratch folder for intermediates (removed afterwards)
    target: str = "cpu"
    calib_method: CalibMethod = CalibMethod.MINMAX
    exclude: tuple = ()
    per_channel: bool = True
    seed: int = 0


_LOADERS: list = []  # (priority, name, matches(model)->bool, loader)
_EXPORTERS: dict = {}


def register_loader(name: str, matches: Callable[[Any], bool], loader: Callable, *, priority: int = 0) -> None:
    _LOADERS.append((priority, name, matches, loader))
    _LOADERS.sort(key=lambda t: -t[0])


def find_loader(model: Any):
    for _prio, name, matches, loader in _LOADERS:
        try:
            if matches(model):
                return name, loader
        except Exception:  # a matcher must never crash selection
            continue
    return None, None


def register_exporter(source_kind: str, fmt: str, fn: Callable) -> None:
    _EXPORTERS[(source_kind, fmt)] = fn


def find_exporter(source_kind: str, fmt: str):
    return _EXPORTERS.get((source_kind, fmt))
