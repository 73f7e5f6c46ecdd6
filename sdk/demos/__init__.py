"""Demos trained here, without downloads: they show edgeship end to end on real models.

- :mod:`edgeship.demos.digits` (``edgeship demo``): a digits CNN -> INT8 and FP32
  bundles, measured (size, accuracy, latency).
- :mod:`edgeship.demos.detector` (``python -m edgeship.demos.detector``, ``make
  stream-demo``): a small shape detector -> an INT8 detection bundle for streams.

They need the ``convert`` extra; converters and runtime are imported inside
their functions.
"""
