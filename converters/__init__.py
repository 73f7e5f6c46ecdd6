"""edgeship.converters: Keras/ONNX models -> calibrated, validated TFLite/ONNX bundles.

Importing this package is cheap; TensorFlow is imported when a conversion runs.
"""

from __future__ import annotations

from .convert import ConversionResult, convert  # noqa: F401
from .registry import CalibMethod, Format, IOType, Precision  # noqa: F401

__all__ = ["convert", "ConversionResult", "Precision", "IOType", "Format", "CalibMethod"]
