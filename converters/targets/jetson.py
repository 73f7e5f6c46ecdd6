"""The jetson target step: a TensorRT INT8 calibration table for FP32 ONNX artifacts.

INT8 QDQ artifacts (the jetson default) carry their own scales: TensorRT needs no
table and refuses one, so nothing is done for them. An FP32 ONNX artifact meant
for Jetson gets ``calibration.flatbuffers`` (and TensorRT's ``calibration.cache``,
``calibration.json``) written beside it from the bundle's calibration samples, so
the device can run it in INT8 with
``OrtOptions(trt_calibration_table=<bundle>/calibration.flatbuffers)``.
"""

from __future__ import annotations

import numpy as np


def step(ctx) -> dict | None:
    """Write the table for the first FP32 ONNX artifact; the manifest record, or None when not needed.

    Raises:
      BackendUnavailableError: onnxruntime's quantization tools are not installed.
    """
    art = next((a for a in ctx.artifacts if a["format"] == "onnx" and a["precision"] == "fp32"), None)
    if art is None or ctx.calib is None:
        if art is not None:
            ctx.warnings.append(f"{art['file']}: no calibration data, so no TensorRT INT8 calibration table "
                                "(pass calib= to run it in INT8 on Jetson)")
        return None
    from .tensorrt import TRT_TABLE, write_trt_calibration_table  # noqa: PLC0415

    x = np.asarray(ctx.calib, np.float32)
    src, dst = ctx.source.layout, art.get("layout")
    if x.ndim == 4 and (src, dst) == ("NHWC", "NCHW"):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 4 and (src, dst) == ("NCHW", "NHWC"):
        x = x.transpose(0, 2, 3, 1)
    name = art["inputs"][0]["name"] if len(art.get("inputs") or []) == 1 else None
    write_trt_calibration_table(ctx.writer.path(art["file"]), x, ctx.writer.dir, input_name=name)
    return {"artifact": art["file"], "trt_calibration_table": TRT_TABLE, "samples": int(min(len(x), 500)),
            "method": "onnxruntime MinMax calibrator (write_calibration_table)"}
