"""Calibration readers for ``onnxruntime.quantization.quantize_static`` with bounded memory.

ONNX Runtime's calibrators keep what every sample produced until ranges are
computed: for MinMax the reduced min/max of every tensor, for Entropy/Percentile
every intermediate activation of every sample (hundreds of MB per 640x640 image).
``quantize_static``'s ``CalibStridedMinMax`` extra option feeds the reader in
chunks (``set_range``) and computes ranges after each: MinMax merges chunks by
min/max (the same ranges as one pass), the histogram calibrators add each chunk
to their histograms.

``CalibMaxIntermediateOutputs`` is *not* used: in onnxruntime 1.32
``MinMaxCalibrater.collect_data`` clears the collected outputs every N samples
without computing their ranges first, so only the last partial chunk counts
(checked: ranges of 5 samples [5, 1, 2, 3, 0.5] with N=2 came out as 0.5..0.5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["calibration_reader", "calib_stride", "activation_bytes", "CALIB_BUDGET_BYTES", "MAX_STRIDE"]

CALIB_BUDGET_BYTES = 1 << 30  # what the calibrator may hold between two range computations
MAX_STRIDE = 16  # at most this many batches per chunk (MinMax keeps little per batch)


def calibration_reader(input_names: list, calib, batch: int = 1, dtype=np.float32):
    """Feeds ``calib`` in batches of the model's fixed batch size (repeating samples to fill);
    a list of arrays (batches of different sizes, for a dynamic input) is fed one by one.

    The reader has ``len()`` (batches) and ``set_range(start_index, end_index)`` (in batches),
    which ``quantize_static``'s ``CalibStridedMinMax`` uses to calibrate chunk by chunk."""
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    if isinstance(calib, list):
        batches = [np.ascontiguousarray(b, dtype=dtype) for b in calib]
    else:
        if batch > 1 and len(calib) % batch:
            calib = np.concatenate([calib, calib[: batch - len(calib) % batch]], axis=0)
            while len(calib) % batch:  # fewer samples than one batch
                calib = np.concatenate([calib, calib[: batch - len(calib) % batch]], axis=0)
        batches = None
        data = calib

    n = len(batches) if batches is not None else len(data) // batch

    def get(i):
        if batches is not None:
            return batches[i]
        return np.ascontiguousarray(data[i * batch:(i + 1) * batch], dtype=dtype)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i, self._end = 0, n

        def get_next(self):
            if self._i >= self._end:
                return None
            x = get(self._i)
            self._i += 1
            return {input_names[0]: x}

        def rewind(self) -> None:
            self._i, self._end = 0, n

        def set_range(self, start_index: int, end_index: int) -> None:
            self._i, self._end = int(start_index), min(int(end_index), n)

        def __len__(self) -> int:
            return n

    return _Reader()


def activation_bytes(model, sample_shape) -> int:
    """Bytes of the float activations one sample produces, from the graph's value_info
    (dynamic dimensions taken from ``sample_shape`` where the rank matches, else 1)."""
    total = 0
    for vi in list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type not in (1, 10):  # float, float16
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        size = 1
        for i, d in enumerate(dims):
            size *= d if d > 0 else (sample_shape[i] if i < len(sample_shape) and i > 0 else 1)
        total += 4 * size
    return total


def calib_stride(n_batches: int, per_batch_bytes: int, *, histogram: bool,
                 budget: int = CALIB_BUDGET_BYTES) -> int:
    """Batches per calibration chunk: what fits in ``budget`` (histogram methods keep every
    activation; MinMax only reduced values, capped at :data:`MAX_STRIDE`), rounded down to a
    divisor of ``n_batches`` (``CalibStridedMinMax`` wants one)."""
    cap = MAX_STRIDE if not histogram else max(1, budget // max(1, int(per_batch_bytes)))
    cap = max(1, min(cap, MAX_STRIDE, n_batches))
    return next(s for s in range(cap, 0, -1) if n_batches % s == 0)
