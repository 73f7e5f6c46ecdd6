"""Compatibility names: what ``edgeship.runtime.accel`` used to hold now lives in its own module.

- delegate specs and op accounting: :mod:`edgeship.runtime.backends.delegates`;
- ``devices()``, ``cpu_features()``: :mod:`edgeship.runtime.discovery`;
- ``probe_compiled_model()``: :mod:`edgeship.runtime.backends.compiled_model`;
- TensorRT calibration tables: :mod:`edgeship.converters.targets.tensorrt` (a conversion job).

Nothing inside edgeship imports this module; import from the modules above.
"""

from __future__ import annotations

from .backends.compiled_model import probe_compiled_model
from .backends.delegates import delegated_ops, normalize_delegates, parse_delegate_spec
from .discovery import CPU_FEATURES, cpu_features, devices

__all__ = ["CPU_FEATURES", "cpu_features", "delegated_ops", "devices", "normalize_delegates", "parse_delegate_spec",
           "probe_compiled_model"]
