"""Compression that trains: knowledge distillation, low-rank factorization, quantization-aware training.

The stages compose in one documented order, whatever the flags' order:

1. **distill** (``--distill``, ``--student``/``--student-width``): the source is the
   teacher; a smaller student is trained on its temperature-softened outputs (plus the
   labels when there are any) and replaces it for everything that follows. The same
   student trained on the labels alone is measured beside it.
2. **low-rank** (``--low-rank RANK|auto``): Dense kernels factorized by truncated SVD into
   two thinner layers, convolutions by SVD (k x k with r filters + 1 x 1) or Tucker-2
   (``auto``: whichever needs fewer MACs, and only where the layer's MACs drop enough to pay
   for the extra op), then fine-tuned; ONNX ``Gemm``/``MatMul``/``Conv`` initializers
   factorized in the graph (no fine-tuning, the cost measured).
3. **prune** (``--prune``; :mod:`edgeship.converters.prune`).
4. **QAT** (``--qat``) or post-training INT8: tfmot ``quantize_model`` on tf_keras
   (Keras 3 through the verified bridge; layer pairs cross-layer equalized first
   (:mod:`.equalize`), Dense kernels left to the converter's per-channel INT8, activation
   ranges started at the float min/max), fine-tuned with a cosine decay, then the usual TFLite
   INT8 export.
   With ``--max-drop`` and ``--train-data``, a post-training INT8 artifact that misses
   ``max_drop`` (after ``--auto-fallback``) is retried with QAT; the report says so.

Validation always compares the artifacts with the original source. The manifest's
``compression`` block records each stage (params, MACs, FP32 weight bytes, accuracy, and the
bytes, gzip bytes and runtime latency of a temporary FP32 TFLite of it) and each artifact
(bytes, gzip bytes, accuracy); ``report.md``/``report.html`` show it as a table and an
accuracy-vs-latency plot (bubble = bytes, Pareto front).

API: :class:`CompressOptions` (``convert(compress=...)``), :func:`.lowrank.factorize_keras`,
:func:`.lowrank_onnx.factorize_onnx`, :func:`.distill.derive_student`, :func:`.distill.distill`,
:func:`.qat.qat_keras`, :func:`.equalize.equalize_pairs`, :func:`.macs.count_macs`.
"""

from __future__ import annotations

from .macs import count_macs, count_params, layer_macs
from .options import AUTO, CompressOptions, check

__all__ = ["CompressOptions", "check", "AUTO", "count_macs", "count_params", "layer_macs"]
