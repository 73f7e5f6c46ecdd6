"""edgeship: ship trained Keras and ONNX models to edge devices.

``edgeship.convert(...)`` (workstation, needs ``edgeship[convert]``) turns a model
into a calibrated, validated bundle; ``edgeship.runtime.load(...)`` runs a bundle
on a device with only numpy and LiteRT installed.

This module imports nothing heavy: TensorFlow, ONNX and OpenCV are imported by
the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    BackendUnavailableError,
    BundleError,
    BundleExistsError,
    CalibrationError,
    EdgeshipError,
    FallbackError,
    InputError,
    IntegrityError,
    MissingDependencyError,
    ModelClosedError,
    ModelFormatError,
    ModelNotFoundError,
    PruneOptionError,
    UnsafeModelError,
    UnsupportedModelError,
    ValidationFailedError,
)


def convert(*args, **kwargs):
    """Convert a Keras or ONNX model into a bundle; see :func:`edgeship.converters.convert`."""
    from edgeship.converters import convert as _convert  # noqa: PLC0415

    return _convert(*args, **kwargs)


def sweep(spec, **kwargs):
    """Run a sweep spec (TOML path, SweepSpec or dict) as Ray tasks; see :func:`edgeship.converters.sweep.sweep`."""
    from edgeship.converters.sweep import sweep as _sweep  # noqa: PLC0415

    return _sweep(spec, **kwargs)


def __getattr__(name):  # lazy sub-packages
    if name in ("runtime", "converters"):
        import importlib

        return importlib.import_module(f"edgeship.{name}")
    raise AttributeError(f"module 'edgeship' has no attribute {name!r}")
