"""The intel target: an INT8 ONNX artifact quantized the way OpenVINO runs fastest.

With NNCF installed (``pip install "edgeship[openvino]"``), the FP32 ONNX model
(dims fixed like every ONNX artifact) is quantized by NNCF's post-training
quantization (``nncf.quantize``, preset ``PERFORMANCE``, target device CPU) on
the conversion's calibration samples: symmetric INT8 weights per channel,
activations quantized only where OpenVINO's CPU plugin has INT8 kernels for the
op that consumes them, and fast-bias correction. Without NNCF, edgeship's own
QDQ (:func:`edgeship.converters.onnx_quant.quantize_onnx`) writes it with the
``openvino`` scheme. Either way the artifact is an ordinary QDQ ``.onnx`` file
that ONNX Runtime also runs, and the conversion validates it like every other
artifact.

The export stage calls :func:`quantize` for an INT8 ONNX artifact when
``intel`` is the target the ONNX exporter tunes for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np

from edgeship.errors import CalibrationError, ModelFormatError

__all__ = ["nncf_available", "quantize"]


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def quantize(fp32_path: str, out_path: str, calib, *, input_shape=None, workdir: str | None = None,
             use_nncf: bool | None = None, **quant_kwargs) -> dict:
    """Write the INT8 QDQ model of ``fp32_path`` for OpenVINO to ``out_path``; the exporter dict.

    ``use_nncf``: ``None`` uses NNCF when it is installed; ``False`` always
    edgeship's QDQ (``quant_kwargs`` go to it: ``calib_method``, ``exclude`` ...).

    Raises:
      CalibrationError: no calibration samples, or samples that do not fit the input.
      ModelFormatError: NNCF failed on this model.
    """
    from ..onnx_quant import quantize_onnx  # noqa: PLC0415

    if calib is None or len(calib) == 0:
        raise CalibrationError("INT8 ONNX quantization for target intel needs calibration samples; none were given")
    if use_nncf is None:
        use_nncf = nncf_available()
    if not use_nncf:
        info = quantize_onnx(fp32_path, out_path, calib, target="intel", input_shape=input_shape, workdir=workdir,
                             **quant_kwargs)
        info["notes"] = list(info["notes"]) + [
            "target intel: NNCF is not installed (pip install \"edgeship[openvino]\"), so edgeship's QDQ wrote it"]
        return info
    ignored = sorted(k for k, v in quant_kwargs.items()
                     if (k == "exclude" and v) or (k == "calib_method" and v not in (None, "minmax")))
    return _nncf(fp32_path, out_path, np.asarray(calib, np.float32), input_shape=input_shape, workdir=workdir,
                 ignored=ignored)


def _nncf(fp32_path: str, out_path: str, calib: np.ndarray, *, input_shape, workdir, ignored: list) -> dict:
    import nncf  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    from ..onnx_quant import default_opset, io_tensors, prepare_fp32, read_qdq  # noqa: PLC0415

    own = workdir is None
    work = tempfile.mkdtemp(prefix="edgeship-nncf-") if own else workdir
    try:
        prepared = os.path.join(work, "nncf_prepared.onnx")
        prep = prepare_fp32(fp32_path, prepared, input_shape=input_shape, calib=calib, per_channel=True)
        model = onnx.load(prepared)
        ins, _ = io_tensors(model)
        if len(ins) != 1:
            raise CalibrationError(f"calibration feeds one input; this model has {len(ins)}: "
                                   f"{', '.join(t['name'] for t in ins)}")
        name, want = ins[0]["name"], ins[0]["shape"][1:]
        if len(want) != calib.ndim - 1 or any(w is not None and w != s for w, s in zip(want, calib.shape[1:])):
            raise CalibrationError(f"calibration samples have shape {tuple(calib.shape[1:])} per sample, the model "
                                   f"input {name!r} takes {tuple(want)}")
        dataset = nncf.Dataset(list(calib), lambda s: {name: s[None]})
        try:
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout clean for --json
                qmodel = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                                       target_device=nncf.TargetDevice.CPU, subset_size=int(len(calib)))
        except (CalibrationError, MemoryError):
            raise
        except Exception as exc:
            raise ModelFormatError(f"{fp32_path}: NNCF post-training quantization failed "
                                   f"({type(exc).__name__}: {exc})") from exc
        onnx.save(qmodel, out_path)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    qmodel, qins, qouts, n_q, n_dq = read_qdq(out_path, fp32_path, "NNCF")
    notes = list(prep["notes"]) + [
        f"INT8 QDQ for target intel by NNCF {nncf.__version__} post-training quantization (preset performance, "
        f"target device CPU) on {len(calib)} samples: what OpenVINO runs fastest"]
    if ignored:
        notes.append(f"target intel with NNCF: {', '.join(ignored)} do not apply (NNCF chooses what to quantize)")
    settings = {
        "target": "intel", "requested_target": "intel", "format": "QDQ", "quantizer": f"nncf {nncf.__version__}",
        "preset": "performance", "target_device": "CPU", "calibration_samples": int(len(calib)),
        "opset": default_opset(qmodel), "quantize_linear_nodes": n_q, "dequantize_linear_nodes": n_dq,
        "reason": "NNCF is OpenVINO's own post-training quantizer: symmetric INT8 where OpenVINO's CPU plugin has "
                  "INT8 kernels, fast-bias correction",
    }
    return {"format": "onnx", "precision": "int8", "io": "float", "inputs": qins, "outputs": qouts, "notes": notes,
            "extra": {"onnx_quantization": settings}}
