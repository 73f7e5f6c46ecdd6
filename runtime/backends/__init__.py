"""Backends: one module per engine behind one small protocol, chosen from a registry.

A backend opens one model file and runs raw tensors (in the file's own dtypes
and layout). Everything user-facing (float I/O, quantization, batching,
layouts, preprocessing, labels) lives in :mod:`edgeship.runtime.model`.

Registering a backend::

    @register("litert", formats=("tflite",), priority=10)
    class LiteRTBackend(Backend): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class RawTensor:
    """A model input or output as the engine sees it."""

    name: str
    shape: tuple  # ints; None/-1 for dynamic dimensions
    dtype: np.dtype
    scale: tuple = ()  # quantization scales ((): not quantized)
    zero_point: tuple = ()
    axis: int = 0


@dataclass
class ExecutionInfo:
    """What actually runs the model, and why anything else was skipped."""

    backend: str  # e.g. "litert", "tflite_runtime", "tensorflow.lite", "onnxruntime"
    engine_version: str = ""
    device: str = "cpu"  # "cpu", "gpu", "edgetpu", "npu" ...
    delegate: str | None = None  # delegate or execution provider that runs (part of) it
    providers: tuple = ()  # ONNX Runtime providers actually in use
    ops_delegated: int | None = None
    ops_total: int | None = None
    threads: int | None = None
    skipped: list = field(default_factory=list)  # ["tflite_runtime: not installed", ...]
    fallback: bool = False  # True when the requested/preferred choice was not used

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["providers"] = list(self.providers)
        d["skipped"] = list(self.skipped)
        return d


class Backend:
    """Protocol of a backend. Subclasses implement the methods below.

    ``invoke`` may be called from several threads; the Model serialises calls
    with a lock unless ``thread_safe`` is True (ONNX Runtime sessions are).
    """

    name: str = "?"
    formats: tuple = ()
    thread_safe: bool = False

    def __init__(self, path: str, *, threads: int | None = None, delegates: Sequence = (), strict: bool = False,
                 options: dict | None = None) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(usable here, reason when not) without loading a model."""
        raise NotImplementedError

    inputs: list  # list[RawTensor]
    outputs: list  # list[RawTensor]
    info: ExecutionInfo

    def invoke(self, arrays: list) -> list:
        """Run one batch: raw arrays in input order -> raw arrays in output order."""
        raise NotImplementedError

    def resize_batch(self, batch: int) -> bool:
        """Make the model accept ``batch`` samples at once if it can; False if not."""
        return False

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Entry:
    name: str
    formats: tuple
    priority: int
    loader: Callable[[], type]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, formats: Sequence[str], priority: int, loader: Callable[[], type]) -> None:
    """Register a backend: ``loader()`` imports its module lazily and returns the class."""
    _REGISTRY[name] = _Entry(name, tuple(formats), priority, loader)


def registered(fmt: str | None = None) -> list[_Entry]:
    """Registered backends (for ``fmt`` if given), best first."""
    entries = [e for e in _REGISTRY.values() if fmt is None or fmt in e.formats]
    return sorted(entries, key=lambda e: -e.priority)


def get(name: str) -> _Entry:
    return _REGISTRY[name]


def _tflite():
    from . import tflite  # noqa: PLC0415

    return tflite


# Three TFLite interpreters, in order of preference; each is the same class with
# a different import. The ONNX Runtime backend registers itself the same way.
register("litert", formats=("tflite",), priority=30, loader=lambda: _tflite().LiteRTBackend)
register("tflite_runtime", formats=("tflite",), priority=20, loader=lambda: _tflite().TFLiteRuntimeBackend)
register("tensorflow.lite", formats=("tflite",), priority=10, loader=lambda: _tflite().TensorFlowLiteBackend)
register("litert_compiled", formats=("tflite",), priority=5, loader=lambda: __import__(__name__ + ".compiled_model", fromlist=["_"]).CompiledModelBackend)  # noqa: E501 - LiteRT CompiledModel API (GPU/NPU accelerators); only when asked


def _ort():
    from . import onnxruntime as ort_backend  # noqa: PLC0415

    return ort_backend.OnnxRuntimeBackend


register("onnxruntime", formats=("onnx",), priority=30, loader=_ort)
