"""The registry of backends and what is available on this machine.

A table, not an if/elif chain: each backend registers its name, the formats it
runs, a priority (higher is tried first) and a loader that imports its module
lazily. :func:`backend_class` answers "can it run here?" once per process.

Registering a backend::

    register("litert", formats=("tflite",), priority=30, loader=lambda: LiteRTBackend)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

from ...errors import InputError

__all__ = ["Entry", "available_backends", "backend_class", "entry", "format_available", "get", "register",
           "registered"]


@dataclass(frozen=True)
class Entry:
    """One registered backend."""

    name: str
    formats: tuple
    priority: int
    loader: Callable[[], type]


_REGISTRY: dict[str, Entry] = {}
_AVAILABLE: dict[str, tuple] = {}


def register(name: str, *, formats: Sequence[str], priority: int, loader: Callable[[], type]) -> None:
    """Register a backend: ``loader()`` imports its module lazily and returns the class."""
    _REGISTRY[name] = Entry(name, tuple(formats), priority, loader)
    _AVAILABLE.pop(name, None)


def registered(fmt: str | None = None) -> list[Entry]:
    """Registered backends (for ``fmt`` if given), best first."""
    entries = [e for e in _REGISTRY.values() if fmt is None or fmt in e.formats]
    return sorted(entries, key=lambda e: -e.priority)


def get(name: str) -> Entry:
    """The entry named ``name`` (``KeyError`` if none)."""
    return _REGISTRY[name]


def entry(name: str) -> Entry:
    """The entry named ``name``.

    Raises:
      InputError: no backend of that name is registered (the message lists them).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = [e.name for e in registered()]
        raise InputError(f"unknown backend {name!r}; registered backends are {known}") from None


def backend_class(e: Entry) -> tuple[type | None, str]:
    """(class, "") when ``e`` can run here, else (None, reason). Cached per process."""
    hit = _AVAILABLE.get(e.name)
    if hit is not None:
        return hit
    try:
        cls = e.loader()
        ok, why = cls.available()
        res = (cls, "") if ok else (None, why or f"{e.name}: not available")
    except ImportError as exc:
        res = (None, f"{e.name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken backend must not break the others
        res = (None, f"{e.name}: {type(exc).__name__}: {exc}")
    _AVAILABLE[e.name] = res
    return res


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every registered backend -> (usable here, why not), best first per format."""
    return {e.name: ((c := backend_class(e))[0] is not None, c[1]) for e in registered()}


def format_available(fmt: str) -> bool:
    """Whether some installed backend runs ``fmt`` files."""
    return any(backend_class(e)[0] is not None for e in registered(fmt))


def _lazy(module: str, cls: str) -> Callable[[], type]:
    def load() -> type:
        return getattr(importlib.import_module(module, __package__), cls)

    return load


# Three TFLite interpreters, in order of preference (one class, three imports); CompiledModel
# only when asked (GPU/NPU accelerators); ONNX Runtime for .onnx files.
register("litert", formats=("tflite",), priority=30, loader=_lazy(".tflite", "LiteRTBackend"))
register("tflite_runtime", formats=("tflite",), priority=20, loader=_lazy(".tflite", "TFLiteRuntimeBackend"))
register("tensorflow.lite", formats=("tflite",), priority=10, loader=_lazy(".tflite", "TensorFlowLiteBackend"))
register("litert_compiled", formats=("tflite",), priority=5, loader=_lazy(".compiled_model", "CompiledModelBackend"))
register("onnxruntime", formats=("onnx",), priority=30, loader=_lazy(".onnxruntime", "OnnxRuntimeBackend"))
# OpenVINO (optional extra) after the others in the static order; `bench --all --save` may measure it first.
register("openvino", formats=("onnx", "tflite"), priority=8, loader=_lazy(".openvino", "OpenVINOBackend"))
