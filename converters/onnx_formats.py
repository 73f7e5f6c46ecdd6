"""ONNX sources and ONNX artifacts.

Provides (the loader registered with :mod:`.registry`, the exporters listed in
:data:`edgeship.converters.exporters.EXPORTERS`):

* loader ``onnx`` for paths ending in ``.onnx``: checks the file
  (:func:`.onnx_safety.check_onnx_file`, external data included) and returns a
  :class:`~.registry.Source` whose ``predict`` runs the FP32 model in ONNX
  Runtime on CPU;
* exporters ``('onnx', 'onnx')`` (FP32 copy or INT8 QDQ), ``('keras', 'onnx')``
  (tf2onnx, checked against Keras, then INT8 QDQ) and ``('onnx', 'tflite')``
  (onnx2tf, then TFLite quantization).

``registry.load_plugins()`` imports this module, so the loader registration takes effect there.
"""

from __future__ import annotations

import os

import numpy as np

from edgeship.bundle import sha256_file
from edgeship.errors import ModelFormatError, UnsupportedModelError, require
from edgeship.ragged import concat_ragged

from . import registry
from .registry import ExportRequest, Precision, Source

__all__ = ["load_onnx", "detect_layout", "input_shape_of", "export_onnx_from_onnx", "export_onnx_from_keras", "export_tflite_from_onnx"]


def detect_layout(shape) -> str:
    """NCHW when a 4-D input has 1 or 3 channels in dim 1 and not in the last dim; else NHWC."""
    if shape is None or len(shape) != 4:
        return "other"
    c1, last = shape[1], shape[-1]
    if c1 in (1, 3) and last not in (1, 3):
        return "NCHW"
    return "NHWC"


def _is_onnx_path(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def _fixed_inputs(inputs: list, input_shape) -> list:
    """Tensor dicts with the batch fixed to 1 and ``input_shape`` applied (None stays dynamic)."""
    out = []
    for i, t in enumerate(inputs):
        shape = list(t["shape"])
        if input_shape is not None and i == 0:
            want = list(input_shape)
            if len(want) == len(shape) - 1:
                want = [1] + want
            if len(want) == len(shape):
                shape = [w if w is not None else s for w, s in zip(want, shape)]
        if shape and shape[0] is None:
            shape[0] = 1
        out.append({**t, "shape": shape})
    return out


def _batched_predict(backend):
    """predict(x) -> list of outputs; loops when the model's batch is fixed."""
    spec = backend.inputs[0]
    fixed = spec.shape[0] if spec.shape else None

    def predict(x: np.ndarray) -> list:
        x = np.asarray(x, dtype=np.float32)
        if fixed is None or fixed == x.shape[0]:
            return [np.asarray(o) for o in backend.invoke([x])]
        if fixed != 1:
            chunks = [x[i:i + fixed] for i in range(0, len(x), fixed)]
        else:
            chunks = [x[i:i + 1] for i in range(len(x))]
        parts = [backend.invoke([c]) for c in chunks]
        return [concat_ragged([p[k] for p in parts]) for k in range(len(parts[0]))]  # NMS inside: K varies

    return predict


def load_onnx(model, *, input_shape=None, allow_legacy_h5=False, allow_unsafe=False) -> Source:
    """Loader for ``.onnx`` paths (see :mod:`.registry`).

    Raises:
        ModelFormatError: the file is not a valid ONNX model.
        UnsafeModelError: its external data escapes the model folder.
    """
    del allow_legacy_h5, allow_unsafe  # ONNX files carry no code; external data is always checked
    onnx = require("onnx", "convert", "to read ONNX models")
    from edgeship.runtime.backends import OrtOptions  # noqa: PLC0415
    from edgeship.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: PLC0415

    from .onnx_quant import default_opset, io_tensors  # noqa: PLC0415
    from .onnx_safety import check_onnx_file  # noqa: PLC0415

    path = os.path.abspath(os.fspath(model))
    proto = check_onnx_file(path)
    ins, outs = io_tensors(proto)
    if not ins:
        raise UnsupportedModelError(f"{path} has no graph inputs; there is nothing to feed it")
    ins = _fixed_inputs(ins, input_shape)
    outs = [{**t, "shape": [1 if (j == 0 and d is None) else d for j, d in enumerate(t["shape"])]} for t in outs]
    layout = detect_layout(ins[0]["shape"])
    backend = OnnxRuntimeBackend(path, OrtOptions(device="cpu"))
    notes = []
    if len(ins) > 1:
        notes.append(f"{len(ins)} inputs: calibration and validation feed only {ins[0]['name']!r}")
    return Source(
        kind="onnx",
        format="onnx",
        path=path,
        sha256=sha256_file(path, error=ModelFormatError),
        layout=layout,
        inputs=ins,
        outputs=outs,
        handle=path,
        predict=_batched_predict(backend),
        framework_versions={
            "onnx": getattr(onnx, "__version__", ""),
            "opset": default_opset(proto),
            "ir_version": int(proto.ir_version),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        },
        notes=notes,
    )


def input_shape_of(source: Source):
    return tuple(source.inputs[0]["shape"]) if source.inputs else None


def _io_note(request: ExportRequest) -> list:
    if str(getattr(request.io, "value", request.io)) != "float":
        return [f"ONNX artifacts keep float inputs/outputs (QDQ inside the graph); io={request.io.value} "
                "applies to TFLite artifacts only"]
    return []


def _finish(info: dict, layout: str, request: ExportRequest) -> dict:
    info = dict(info)
    info.setdefault("layout", layout)
    info["notes"] = list(info.get("notes", [])) + _io_note(request)
    info.setdefault("extra", {})
    return info


def _fp32_onnx_info(path: str, notes: list) -> dict:
    onnx = require("onnx", "convert")
    from .onnx_quant import io_tensors  # noqa: PLC0415

    ins, outs = io_tensors(onnx.load(path))
    return {"format": "onnx", "precision": "fp32", "io": "float", "inputs": ins, "outputs": outs, "notes": notes}


def _onnx_artifact(fp32_path: str, source: Source, request: ExportRequest, notes: list) -> dict:
    """FP32 copy or INT8 QDQ of a checked FP32 ONNX file, written to ``request.out_path``."""
    from .onnx_quant import prepare_fp32, quantize_onnx  # noqa: PLC0415

    precision = Precision(request.precision)
    if precision is Precision.FP32:
        prep = prepare_fp32(fp32_path, request.out_path, input_shape=input_shape_of(source),
                            calib=request.calib, per_channel=False)
        return _fp32_onnx_info(request.out_path, notes + prep["notes"])
    if precision is Precision.INT8 and str(request.target) == "intel":  # NNCF when installed (targets/openvino.py)
        from .targets.openvino import quantize as quantize_for_openvino  # noqa: PLC0415

        info = quantize_for_openvino(fp32_path, request.out_path, request.calib, input_shape=input_shape_of(source),
                                     workdir=request.workdir, calib_method=request.calib_method,
                                     per_channel=request.per_channel, exclude=request.exclude)
        info["notes"] = notes + info["notes"]
        return info
    if precision is Precision.INT8:
        calib = request.calib
        info = quantize_onnx(
            fp32_path, request.out_path, calib,
            target=request.target,
            calib_method=request.calib_method,
            per_channel=request.per_channel,
            exclude=request.exclude,
            input_shape=input_shape_of(source),
            workdir=request.workdir,
            keep_head_float=request.keep_head_float,
            dense_map=_is_dense_map(source, request.task),
        )
        info["notes"] = notes + info["notes"]
        return info
    raise UnsupportedModelError(
        f"ONNX artifacts are written as fp32 or int8, not {precision.value}; "
        "use --formats tflite for fp16/dynamic/int16x8"
    )


def _is_dense_map(source: Source, task=None) -> bool:
    """A segmentation / dense-map graph: the plan's task (given or inferred), else
    :func:`.task_infer.infer_task`; INT8 through :mod:`.seg_head`."""
    from edgeship.vocab import Task  # noqa: PLC0415

    from .task_infer import infer_task  # noqa: PLC0415

    return (task if task is not None else infer_task(source)[0]) is Task.SEGMENTATION


def export_onnx_from_onnx(source: Source, request: ExportRequest) -> dict:
    """Exporter ('onnx', 'onnx'): FP32 copy (dims fixed) or INT8 QDQ."""
    info = _onnx_artifact(source.handle, source, request, [])
    return _finish(info, source.layout, request)


def export_onnx_from_keras(source: Source, request: ExportRequest) -> dict:
    """Exporter ('keras', 'onnx'): tf2onnx FP32 (checked within 1e-4), then INT8 QDQ."""
    from .onnx_export import export_keras  # noqa: PLC0415

    fp32 = os.path.join(request.workdir, "keras_fp32.onnx")
    exp = export_keras(source.handle, fp32, samples=request.calib, reference=source.predict,
                       input_shape=input_shape_of(source))
    notes = list(exp["notes"])
    info = _onnx_artifact(fp32, source, request, notes)
    info.setdefault("extra", {})["keras_to_onnx"] = exp["settings"]
    # tf2onnx keeps the Keras input layout (NHWC), so the artifact layout is the source layout.
    return _finish(info, source.layout, request)


def export_tflite_from_onnx(source: Source, request: ExportRequest) -> dict:
    """Exporter ('onnx', 'tflite'): onnx2tf to an NHWC SavedModel, then TFLite quantization."""
    from .onnx_tflite import onnx_to_tflite  # noqa: PLC0415

    onnx_in, bias = source.handle, None
    from .onnx_bias_correction import precompensate_weights, wants_bias_correction  # noqa: PLC0415

    if Precision(request.precision) is Precision.INT8 and request.calib is not None and len(request.calib) \
            and _is_dense_map(source, request.task) and wants_bias_correction(
                [t.get("shape") for t in source.outputs or ()]):

        onnx_in = os.path.join(request.workdir, "bias_precompensated.onnx")
        try:  # TFLite's INT8 weights shift each conv's mean output: moved out of the float biases first
            bias = precompensate_weights(source.handle, onnx_in, request.calib)
        except Exception as exc:  # noqa: BLE001 - the uncorrected model still converts
            onnx_in, bias = source.handle, {"applied": False, "why": f"{type(exc).__name__}: {str(exc)[:120]}"}
    info = onnx_to_tflite(
        onnx_in, request.out_path,
        calib=request.calib,
        source_layout=source.layout,
        precision=Precision(request.precision),
        io=request.io,
        workdir=request.workdir,
        input_shape=input_shape_of(source),
        target=request.target,
        keep_head_float=request.keep_head_float,
    )
    if bias is not None:
        info = dict(info)
        extra = dict(info.get("extra", {}))
        applied = "convs_corrected" in bias
        extra["tflite_bias_correction"] = {**bias, "applied": applied, **(
            {"why": "multi-class segmentation map (auto)"} if applied else {})}
        info["extra"] = extra
        info["notes"] = list(info.get("notes", [])) + ([
            f"bias correction: {bias['convs_corrected']} convolutions' float biases moved by the mean output shift "
            f"of TFLite's INT8 weights on {bias['samples']} calibration samples (largest {bias['max_abs_shift']:.3g}), "
            "chosen for a multi-class segmentation map"] if applied else [f"bias correction skipped ({bias['why']})"])
    return info


registry.register_loader("onnx", _is_onnx_path, load_onnx, priority=10)
