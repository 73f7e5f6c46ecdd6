"""edgeship.converters: Keras/ONNX models -> calibrated, validated TFLite/ONNX bundles.

Importing this package is cheap; TensorFlow is imported when a conversion runs.
"""

from __future__ import annotations

from edgeship.vocab import CalibMethod, Format, IOType, Precision, Target, Task

from .convert import ConversionResult, convert
from .plan import AdvancedOptions, PruneOptions

__all__ = ["convert", "ConversionResult", "PruneOptions", "AdvancedOptions", "Precision", "IOType", "Format",
           "CalibMethod", "Target", "Task"]
