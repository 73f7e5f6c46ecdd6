"""The TensorRT target: an INT8 calibration table for an FP32 ONNX artifact.

TensorRT (through ONNX Runtime's TensorRT provider) can run an FP32 ONNX model
in INT8 when it is given a calibration table; QDQ INT8 models carry their own
scales and need none. This is a conversion job (it runs onnxruntime's
calibrator, which needs the ``onnx`` package), so it lives with the
converters; the runtime only passes the table on
(``OrtOptions(trt_calibration_table=...)``).
"""

from __future__ import annotations

import os

import numpy as np

from edgeship import bundle as _bundle
from edgeship import manifest as _manifest
from edgeship.errors import BackendUnavailableError, BundleError, InputError

__all__ = ["TRT_TABLE", "bundle_trt_calibration_table", "write_trt_calibration_table"]

TRT_TABLE = "calibration.flatbuffers"


def write_trt_calibration_table(onnx_path: str, x, out_dir: str, *, input_name: str | None = None,
                                max_samples: int = 500) -> str:
    """Write the TensorRT INT8 calibration table of an FP32 ONNX model; returns its path.

    ``x`` holds calibration samples (N, ...) in the ONNX model's own layout,
    fed one at a time. onnxruntime's calibrator (min/max over every tensor)
    computes the ranges and ``write_calibration_table`` writes
    ``calibration.flatbuffers`` (the table ONNX Runtime's TensorRT provider
    reads with ``trt_int8_calibration_table_name`` and
    ``trt_int8_use_native_calibration_table=False``), ``calibration.cache``
    (TensorRT's text form) and ``calibration.json`` into ``out_dir``. QDQ models
    need no table (TensorRT refuses one when Q/DQ nodes exist).

    Raises:
      InputError: ``x`` is empty or the model has several inputs and no ``input_name``.
      BackendUnavailableError: onnxruntime's quantization tools (they need the
        ``onnx`` package) are not installed.
    """
    import tempfile  # noqa: PLC0415

    try:
        from onnxruntime.quantization import CalibrationDataReader, create_calibrator, write_calibration_table  # noqa: PLC0415
        from onnxruntime.quantization.calibrate import CalibrationMethod  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailableError(f"writing a TensorRT calibration table needs onnxruntime's quantization tools "
                                      f"and the onnx package ({exc}); pip install onnx onnxruntime") from None
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise InputError("no calibration samples to build a TensorRT calibration table from")
    x = x[:max_samples]
    if input_name is None:
        import onnxruntime as ort  # noqa: PLC0415

        names = [i.name for i in ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_inputs()]
        if len(names) != 1:
            raise InputError(f"{os.path.basename(onnx_path)} has inputs {names}; pass input_name=")
        input_name = names[0]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._i = 0

        def get_next(self):
            if self._i >= len(x):
                return None
            self._i += 1
            return {input_name: x[self._i - 1:self._i]}

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeship-trt-") as tmp:
        cal = create_calibrator(onnx_path, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax, providers=["CPUExecutionProvider"])
        try:
            cal.collect_data(_Reader())
            write_calibration_table(cal.compute_data(), dir=out_dir)
        finally:
            del cal
    return os.path.join(out_dir, TRT_TABLE)


def bundle_trt_calibration_table(bundle: str, out_dir: str, *, artifact: str | None = None) -> str:
    """:func:`write_trt_calibration_table` for a bundle's FP32 ONNX artifact and its ``calibration.npz``.

    The samples are stored in the source layout; they are transposed to the
    artifact's (NHWC <-> NCHW) when the manifest says they differ.

    Raises:
      BundleError: no FP32 ONNX artifact, or no ``calibration.npz``.
    """
    m = _manifest.read(bundle)
    arts = [a for a in m["artifacts"] if a["format"] == "onnx" and (artifact is None or a["file"] == artifact)]
    arts = [a for a in arts if a["precision"] == "fp32"] if artifact is None else arts
    if not arts:
        raise BundleError(f"{bundle} has no FP32 ONNX artifact to calibrate for TensorRT "
                          "(INT8 QDQ artifacts carry their own scales and need no table)")
    art = arts[0]
    cal = (m.get("calibration") or {}).get("file")
    if not cal or not os.path.isfile(os.path.join(bundle, cal)):
        raise BundleError(f"{bundle} has no calibration samples (calibration.npz); re-convert with --calib")
    from edgeship.safeio import load_npz  # noqa: PLC0415

    x = np.asarray(load_npz(_bundle.member_path(bundle, cal, what="calibration file"), ("x",), error=BundleError,
                            required=("x",))["x"], np.float32)  # bounded, inside the bundle
    src, dst = m["source"].get("layout"), art.get("layout")
    if x.ndim == 4 and (src, dst) == ("NHWC", "NCHW"):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 4 and (src, dst) == ("NCHW", "NHWC"):
        x = x.transpose(0, 2, 3, 1)
    path = _bundle.verify_file(bundle, art)
    name = (art.get("inputs") or [{}])[0].get("name") if len(art.get("inputs") or []) == 1 else None
    return write_trt_calibration_table(path, x, out_dir, input_name=name)
