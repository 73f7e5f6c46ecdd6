"""What connects a model to its artifacts: the loaded ``Source``, the ``ExportRequest``, and the loaders.

``convert()`` loads the source with a *loader* (chosen by what the model is),
then asks one *exporter* per requested format to write an artifact. Exporters
are listed in one explicit table, :data:`edgeship.converters.exporters.EXPORTERS`,
keyed by ``(source kind, format)``; loaders register themselves here when their
module is imported (:func:`load_plugins` imports them).

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

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgeship.vocab import CalibMethod, Format, IOType, Precision

__all__ = ["Source", "ExportRequest", "register_loader", "find_loader", "find_exporter", "load_plugins",
           "Precision", "IOType", "Format", "CalibMethod"]


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
    """What one exporter call writes (built once per artifact by the export stage)."""

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
    keep_head_float: bool = False  # a detector's decode head stays float in INT8 (converters.detection_head)
    task: Any = None  # the plan's edgeship.vocab.Task (given or inferred); None: the exporter infers it


_LOADERS: list = []  # (priority, name, matches(model)->bool, loader)

# Modules whose import registers a loader (first name that exists wins for each).
LOADER_MODULES = (
    ("edgeship.converters.sources.keras", "edgeship.converters.keras_loader"),
    ("edgeship.converters.sources.onnx", "edgeship.converters.onnx_formats"),
    ("edgeship.converters.sources.tflite",),
)


def register_loader(name: str, matches: Callable[[Any], bool], loader: Callable, *, priority: int = 0) -> None:
    if any(n == name and fn is loader for _p, n, _m, fn in _LOADERS):
        return
    _LOADERS.append((priority, name, matches, loader))
    _LOADERS.sort(key=lambda t: -t[0])


def find_loader(model: Any):
    """``(name, loader)`` of the first registered loader that matches ``model``, else ``(None, None)``."""
    for _prio, name, matches, loader in _LOADERS:
        try:
            if matches(model):
                return name, loader
        except Exception:  # a matcher must never crash selection
            continue
    return None, None


def load_plugins() -> None:
    """Import the loader modules (they register themselves); a missing optional one is skipped."""
    for names in LOADER_MODULES:
        for modname in names:
            try:
                importlib.import_module(modname)
            except ModuleNotFoundError as exc:
                if exc.name is not None and modname.startswith(exc.name):
                    continue  # this module (or its package) does not exist: try the next name
                if exc.name in ("onnx", "onnxruntime"):
                    break  # ONNX support not installed
                raise
            else:
                break


def find_exporter(source_kind: str, fmt: str):
    """The exporter for ``(source_kind, fmt)`` from the exporters table, or None."""
    from .exporters import find  # noqa: PLC0415

    return find(source_kind, fmt)
