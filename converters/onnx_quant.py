"""FP32 ONNX -> INT8 QDQ ONNX through ``onnxruntime.quantization``.

Steps: check the file (:mod:`.onnx_safety`), fix dynamic dimensions (batch 1
unless ``input_shape`` says otherwise), upgrade opset < 13 to 13 when
per-channel QDQ needs it, ``quant_pre_process`` (symbolic + ONNX shape
inference, ORT graph optimisation), then ``quantize_static`` in QDQ format with
a calibration reader over the real calibration samples.

Activation/weight types are chosen per target so that INT8 is really faster
(see :data:`TARGET_SCHEMES`). Measured on MobileNetV2, 2 threads, x86: FP32
2.4 ms; int8 activations + int8 weights 2.6 ms (no gain: the x86 kernels want
u8 activations); uint8 activations + int8 weights 1.1 ms.

Re-checked with ``benchmarks/bench_onnx.py --variants`` (MobileNetV2 224, 2 threads,
AVX-512 VNNI CPU shared with other jobs, all variants interleaved in one run; speedup =
FP32 p50 / variant p50): U8S8 per-channel QDQ (the x86 choice here) 1.73x; per-tensor
1.66x; reduce_range 1.52x; QOperator 1.59x (same kernels as fused QDQ); S8S8 1.08x
(ORT leaves 25 float ops and 97 Q/DQ nodes unfused); U8U8 0.89x; without
``quant_pre_process`` 1.12x (10 Q/DQ nodes left); only Conv/Gemm/MatMul quantized
1.17x (72 Q/DQ nodes left: float islands between them); the U8S8 model at ORT's
"basic" optimization level 0.40x (nothing fused). The same model in the separate
4-engine run: 2.06-2.24x. So: U8S8, per-channel, no reduce_range on VNNI, every
quantizable op, ``quant_pre_process`` and ORT's full graph optimization; the x86
test checks that ORT fuses every Q/DQ pair into integer kernels.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from edgeship.errors import CalibrationError, InputError, ModelFormatError, require

from .detection_head import describe as describe_head
from .detection_head import head_nodes
from .onnx_calib import activation_bytes, calib_stride, calibration_reader
from .registry import CalibMethod

__all__ = ["quantize_onnx", "prepare_fp32", "io_tensors", "read_qdq", "scheme_for_target", "QuantScheme", "TARGET_SCHEMES",
           "calibration_reader"]


@dataclass(frozen=True)
class QuantScheme:
    """Activation/weight types and symmetry for one target, and why."""

    activation: str  # "uint8" | "int8"
    weight: str  # "int8" | "uint8"
    activation_symmetric: bool
    weight_symmetric: bool
    reason: str


TARGET_SCHEMES = {
    "x86": QuantScheme(
        "uint8", "int8", False, True,
        "x86 CPU: ONNX Runtime's int8 GEMM/conv kernels (AVX2/AVX-512/VNNI) take uint8 activations "
        "and int8 weights (U8S8); int8 activations gain nothing (MobileNetV2, 2 threads: FP32 2.4 ms, "
        "S8S8 2.6 ms, U8S8 1.1 ms)",
    ),
    "arm": QuantScheme(
        "int8", "int8", False, True,
        "ARM64 CPU: ONNX Runtime's QDQ kernels run S8S8 (dot-product instructions) as fast as U8U8; "
        "int8/int8 is the recommended default there",
    ),
    "openvino": QuantScheme(
        "int8", "int8", True, True,
        "Intel CPU/GPU/NPU through OpenVINO (target intel without NNCF): symmetric int8 activations and weights "
        "(zero point 0), as NNCF's performance preset chooses, so OpenVINO's kernels need no zero-point compensation",
    ),
    "tensorrt": QuantScheme(
        "int8", "int8", True, True,
        "TensorRT (Jetson/GPU): explicit-quantization QDQ must be int8 and symmetric "
        "(zero point 0) for activations and weights; TensorRT fuses the Q/DQ pairs into int8 kernels",
    ),
}

_TARGET_ALIASES = {
    "cpu": None,  # resolved from the machine
    "edgetpu": None,  # the ONNX artifact of an Edge TPU bundle runs on the host CPU
    "x86": "x86", "x86_64": "x86", "amd64": "x86",
    "arm": "arm", "arm64": "arm", "aarch64": "arm", "rpi": "arm", "raspberrypi": "arm",
    "intel": "openvino", "openvino": "openvino",
    "tensorrt": "tensorrt", "trt": "tensorrt", "jetson": "tensorrt", "gpu": "tensorrt", "cuda": "tensorrt",
}


def scheme_for_target(target: str) -> tuple[str, QuantScheme]:
    """(resolved target name, scheme) for ``target`` ("cpu" follows this machine)."""
    key = str(target or "cpu").lower()
    if key not in _TARGET_ALIASES:
        raise InputError(
            f"unknown ONNX quantization target {target!r}; expected one of {', '.join(sorted(_TARGET_ALIASES))}"
        )
    resolved = _TARGET_ALIASES[key]
    if resolved is None:
        mach = platform.machine().lower()
        resolved = "arm" if mach.startswith(("arm", "aarch")) else "x86"
    return resolved, TARGET_SCHEMES[resolved]


def _has_vnni() -> bool | None:
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as fh:
            flags = fh.read()
    except OSError:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


# ---------------------------------------------------------------------------------------
# Tensor dicts for the manifest
# ---------------------------------------------------------------------------------------

_ELEM = {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 5: "int16", 6: "int32", 7: "int64", 9: "bool"}


def _value_info_dict(vi) -> dict:
    tt = vi.type.tensor_type
    dtype = _ELEM.get(tt.elem_type)
    if dtype is None:
        raise ModelFormatError(f"tensor {vi.name!r} has ONNX element type {tt.elem_type}, which edgeship does not handle")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return {"name": vi.name, "shape": shape, "dtype": dtype, "quantization": None}


def io_tensors(model) -> tuple[list, list]:
    """(inputs, outputs) tensor dicts of a ModelProto (initializers excluded from inputs)."""
    inits = {t.name for t in model.graph.initializer}
    ins = [_value_info_dict(v) for v in model.graph.input if v.name not in inits]
    outs = [_value_info_dict(v) for v in model.graph.output]
    return ins, outs


def default_opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


# ---------------------------------------------------------------------------------------
# Preparation: dims and opset
# ---------------------------------------------------------------------------------------


def _fix_dims(model, input_shape, calib: np.ndarray | None) -> list:
    """Fix dynamic input dims in place. Returns notes."""
    notes = []
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    params: dict = {}
    for idx, vi in enumerate(inputs):
        dims = vi.type.tensor_type.shape.dim
        want = None
        if input_shape is not None:
            shp = list(input_shape[idx] if (len(inputs) > 1 and isinstance(input_shape[0], (list, tuple))) else input_shape)
            if len(shp) == len(dims) - 1:
                shp = [1] + shp
            if len(shp) != len(dims):
                raise InputError(
                    f"input_shape {tuple(input_shape)} does not fit input {vi.name!r} of rank {len(dims)}"
                )
            want = shp
        for j, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                if want is not None and want[j] is not None and want[j] != d.dim_value:
                    raise InputError(
                        f"input_shape says dim {j} of {vi.name!r} is {want[j]}, but the model fixes it to {d.dim_value}"
                    )
                continue
            if want is not None:
                value = want[j]
            elif j == 0:
                value = 1
            elif calib is not None and calib.ndim == len(dims) and len(inputs) == 1:
                value = int(calib.shape[j])
            else:
                value = None
            if value is None or value == -1:
                continue  # kept dynamic, as asked
            name = d.dim_param
            d.ClearField("dim_param")
            d.dim_value = int(value)
            if name:
                params[name] = int(value)
            notes.append(f"input {vi.name!r} dim {j} ({name or '?'}) fixed to {value}")
    if params:
        for vi in list(model.graph.output) + list(model.graph.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param in params:
                    value = params[d.dim_param]
                    d.ClearField("dim_param")
                    d.dim_value = value
    return notes


def prepare_fp32(src_path: str, dst_path: str, *, input_shape=None, calib=None, per_channel=True) -> dict:
    """Checked copy of ``src_path`` with fixed dims and opset >= 13 (per-channel). Returns info."""
    onnx = require("onnx", "convert", "for ONNX quantization")
    from .onnx_safety import load_checked  # noqa: PLC0415

    model = load_checked(src_path)
    notes = _fix_dims(model, input_shape, calib)
    opset = default_opset(model)
    if per_channel and opset < 13:
        from onnx import version_converter  # noqa: PLC0415

        try:
            model = version_converter.convert_version(model, 13)
        except Exception as exc:
            raise ModelFormatError(
                f"{src_path}: cannot upgrade opset {opset} to 13 for per-channel quantization ({exc}); "
                "pass per_channel=False or export the model with opset >= 13"
            ) from None
        notes.append(f"opset {opset} upgraded to 13 (per-channel QDQ needs opset >= 13)")
        opset = 13
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort here; quant_pre_process does it again
        pass
    onnx.save(model, dst_path)
    return {"opset": opset, "notes": notes}


# ---------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------


def _split_exclude(model, exclude) -> tuple[list, list]:
    names = {n.name for n in model.graph.node if n.name}
    ops = {n.op_type for n in model.graph.node}
    nodes, op_types = [], []
    for item in exclude or ():
        if item in names:
            nodes.append(item)
        elif item in ops:
            op_types.append(item)
        else:
            raise InputError(
                f"exclude entry {item!r} is neither a node name nor an op type of this model "
                f"(op types: {', '.join(sorted(ops))})"
            )
    return nodes, op_types


_QUANTIZABLE = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "LeakyRelu", "Sigmoid",
    "MaxPool", "GlobalAveragePool", "AveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Resize", "Split", "Pad", "Softmax", "HardSwish", "HardSigmoid", "Gather", "Where",
    "InstanceNormalization", "LayerNormalization", "ArgMax", "Sub", "Div", "Slice",
)


def read_qdq(out_path: str, fp32_path: str, who: str):
    """The quantized model at ``out_path``: ``(model, inputs, outputs, QuantizeLinear count, DequantizeLinear count)``.

    Raises:
        ModelFormatError: ``who`` (the quantizer) produced no QDQ nodes.
    """
    import onnx  # noqa: PLC0415

    qmodel = onnx.load(out_path)
    qins, qouts = io_tensors(qmodel)
    n_q = sum(1 for n in qmodel.graph.node if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in qmodel.graph.node if n.op_type == "DequantizeLinear")
    if n_dq == 0:
        raise ModelFormatError(f"{fp32_path}: {who} produced no QDQ nodes; nothing was quantized")
    return qmodel, qins, qouts, n_q, n_dq


def quantize_onnx(
    fp32_path: str,
    out_path: str,
    calib: np.ndarray,
    *,
    target: str = "cpu",
    calib_method: CalibMethod = CalibMethod.MINMAX,
    per_channel: bool = True,
    exclude=(),
    input_shape=None,
    workdir: str | None = None,
    keep_head_float: bool = False,
    dense_map: bool = False,
    bias_correction: bool | None = None,
) -> dict:
    """Quantize ``fp32_path`` to an INT8 QDQ model at ``out_path``.

    ``calib``: float32 samples ``(N, ...)`` in the model's own input layout.
    ``exclude``: node names or op types kept in float.
    ``keep_head_float``: keep a detector's decode head (found in the graph by
    :func:`edgeship.converters.detection_head.head_nodes`) in float.
    ``dense_map``: a segmentation/dense-map model: rewrite decomposed blocks and keep the
    map head float (:func:`edgeship.converters.seg_head.plan_int8`).
    ``calib`` of a model with a dynamic height/width calibrates at several sizes
    (:func:`edgeship.converters.dynamic_size.multi_size`); the artifact keeps them dynamic.
    ``bias_correction``: take each INT8 convolution's mean output shift, measured on ``calib``,
    out of its bias (:mod:`.onnx_bias_correction`); ``None`` (default): on for ``dense_map``
    models with a multi-class map, where the shifts move class boundaries (DeepLabV3: -2.3 ->
    -0.2 points mIoU), off for one-channel maps (measured worse on PP-OCR).

    Returns the exporter dict (format, precision, io, layout-free inputs/outputs,
    notes, extra) with the chosen activation/weight types and the reason.

    Raises:
        CalibrationError: no or mis-shaped calibration samples.
        InputError: an unknown target or exclude entry, a bad input_shape.
        ModelFormatError / UnsafeModelError: see :mod:`.onnx_safety`.
    """
    onnx = require("onnx", "convert", "for ONNX quantization")
    require("onnxruntime", "convert", "for ONNX quantization")
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if calib is None or len(calib) == 0:
        raise CalibrationError("INT8 ONNX quantization needs calibration samples; none were given")
    calib = np.asarray(calib, dtype=np.float32)
    resolved, scheme = scheme_for_target(target)
    method = CalibMethod(calib_method)
    own_tmp = workdir is None
    work = tempfile.mkdtemp(prefix="edgeship-onnxq-") if own_tmp else os.path.abspath(workdir)
    try:
        prepared = os.path.join(work, "q_prepared.onnx")
        pre = os.path.join(work, "q_preprocessed.onnx")
        qout = os.path.join(work, "q_int8.onnx")
        prep = prepare_fp32(fp32_path, prepared, input_shape=input_shape, calib=calib, per_channel=per_channel)
        notes = list(prep["notes"])
        try:  # in ``work``: a failing symbolic shape inference saves sym_shape_infer_temp.onnx in the cwd
            with contextlib.chdir(work):
                quant_pre_process(prepared, pre, skip_optimization=False)
        except Exception as exc:  # symbolic shape inference fails on some graphs (dynamic H/W); go without it
            try:
                with contextlib.chdir(work):
                    quant_pre_process(prepared, pre, skip_optimization=False, skip_symbolic_shape=True)
                notes.append(f"quant_pre_process without symbolic shape inference ({type(exc).__name__}: "
                             f"{str(exc)[:80]})")
            except Exception as exc2:  # noqa: BLE001 - nothing left to try: quantize the prepared model as is
                notes.append(f"quant_pre_process skipped ({type(exc2).__name__}: {str(exc2)[:120]})")
                shutil.copyfile(prepared, pre)
        model = onnx.load(pre)
        dense = None
        if dense_map:
            from .seg_head import plan_int8_file  # noqa: PLC0415

            dense = plan_int8_file(model, pre)  # rewrites ``pre`` (and ``model``) in place
        ins, _ = io_tensors(model)
        if len(ins) != 1:
            raise CalibrationError(f"calibration feeds one input; this model has {len(ins)}: "
                                   f"{', '.join(t['name'] for t in ins)}")
        want = ins[0]["shape"][1:]
        if len(want) != calib.ndim - 1 or any(w is not None and w != s for w, s in zip(want, calib.shape[1:])):
            raise CalibrationError(
                f"calibration samples have shape {tuple(calib.shape[1:])} per sample, the model input "
                f"{ins[0]['name']!r} takes {tuple(want)}"
            )
        nodes_ex, ops_ex = _split_exclude(model, exclude)
        head = head_nodes(model) if keep_head_float else []
        nodes_ex = nodes_ex + [n for n in head if n not in nodes_ex]
        if dense is not None:
            nodes_ex = nodes_ex + [n for n in dense["float_nodes"] if n not in nodes_ex]
        feed = calib
        if any(d is None for d in ins[0]["shape"][1:]) and calib.ndim == 4:
            from .dynamic_size import multi_size  # noqa: PLC0415

            lay = "NCHW" if calib.shape[1] in (1, 3) and calib.shape[-1] not in (1, 3) else "NHWC"
            dims = ins[0]["shape"][2:4] if lay == "NCHW" else ins[0]["shape"][1:3]
            feed = multi_size(calib, lay, tuple(d is None for d in dims))
            sizes = sorted({tuple(f.shape[2:4] if lay == "NCHW" else f.shape[1:3]) for f in feed}, reverse=True)
            notes.append(f"dynamic input size kept; calibrated at {len(sizes)} sizes: "
                         f"{', '.join(f'{h}x{w}' for h, w in sizes)}")
            if method is not CalibMethod.MINMAX:
                notes.append(f"calibration {method.value} needs one input size; minmax used for the dynamic size")
                method = CalibMethod.MINMAX
        present = {n.op_type for n in model.graph.node}
        op_types = None
        if ops_ex:
            op_types = sorted((present & set(_QUANTIZABLE)) - set(ops_ex))
        vnni = _has_vnni()
        reduce_range = bool(resolved == "x86" and vnni is False)
        qt = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        cm = {
            CalibMethod.MINMAX: CalibrationMethod.MinMax,
            CalibMethod.ENTROPY: CalibrationMethod.Entropy,
            CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
        }[method]
        extra = {
            "ActivationSymmetric": scheme.activation_symmetric,
            "WeightSymmetric": scheme.weight_symmetric,
        }
        if method is CalibMethod.PERCENTILE:
            extra["CalibPercentile"] = 99.999
        reader = calibration_reader([ins[0]["name"]], feed, ins[0]["shape"][0] or 1)
        hist = method is not CalibMethod.MINMAX  # histogram calibrators keep every activation of a chunk
        stride = calib_stride(len(reader), activation_bytes(model, calib.shape) if hist else 0, histogram=hist)
        extra["CalibStridedMinMax"] = stride  # ranges computed and merged every ``stride`` batches (.onnx_calib)
        try:
            # ORT's calibrators print progress to stdout; keep stdout clean for `--json`.
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    pre, qout, reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=qt[scheme.activation],
                    weight_type=qt[scheme.weight],
                    nodes_to_exclude=nodes_ex or None,
                    calibrate_method=cm,
                    extra_options=extra,
                )
        except (CalibrationError, InputError):
            raise
        except Exception as exc:
            raise ModelFormatError(f"{fp32_path}: ONNX Runtime quantization failed ({type(exc).__name__}: {exc})") from exc
        from .onnx_bias_correction import bias_correct, wants_bias_correction  # noqa: PLC0415

        correct = (dense_map and wants_bias_correction(
            [t["shape"] for t in io_tensors(model)[1]])) if bias_correction is None else bool(bias_correction)
        bias = None
        if correct:

            try:
                bias = bias_correct(qout, pre, calib)  # ``pre``: the float graph that was quantized
            except Exception as exc:  # noqa: BLE001 - the uncorrected INT8 model is still a valid artifact
                notes.append(f"bias correction skipped ({type(exc).__name__}: {str(exc)[:120]})")
        shutil.copyfile(qout, out_path)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    qmodel, qins, qouts, n_q, n_dq = read_qdq(out_path, fp32_path, "quantization")
    reason = scheme.reason
    if reduce_range:
        reason += "; reduce_range (7-bit weights) because this CPU has no VNNI and U8S8 could saturate"
    notes.append(
        f"INT8 QDQ for target {resolved}: activations {scheme.activation}"
        f"{' symmetric' if scheme.activation_symmetric else ''}, weights {scheme.weight}"
        f"{' per-channel' if per_channel else ' per-tensor'} symmetric; calibration {method.value} "
        f"on {len(calib)} samples; because {reason}"
    )
    if head:
        notes.append(f"detection head: {describe_head(model, head)}, so boxes and scores keep their own ranges")
    if dense is not None:
        notes.append(f"segmentation: {dense['summary']}")
    if bias is not None:
        notes.append(f"bias correction: {bias['convs_corrected']} INT8 convolutions' biases take out their mean "
                     f"output shift on {bias['samples']} calibration samples (largest {bias['max_abs_shift']:.3g})"
                     + (" (chosen for a multi-class segmentation map)" if bias_correction is None else ""))
    asked = [n for n in nodes_ex if n not in head]
    if asked or ops_ex:
        notes.append(f"kept in float: nodes {asked or '-'}, op types {ops_ex or '-'}")
    settings = {
        "target": resolved,
        "requested_target": str(target),
        "format": "QDQ",
        "activation_type": scheme.activation,
        "weight_type": scheme.weight,
        "activation_symmetric": scheme.activation_symmetric,
        "weight_symmetric": scheme.weight_symmetric,
        "per_channel": bool(per_channel),
        "reduce_range": reduce_range,
        "cpu_vnni": vnni,
        "calibrate_method": method.value,
        "calibration_samples": int(len(calib)),
        "calibration_chunk_batches": stride,
        "nodes_to_exclude": list(nodes_ex),
        "detection_head": {"nodes": list(head), "summary": describe_head(model, head)} if head else {},
        **({"segmentation_head": {k: v for k, v in dense.items() if k != "float_nodes"}} if dense is not None else {}),
        "op_types_excluded": list(ops_ex),
        "bias_correction": ({**bias, "applied": True, "why": "multi-class segmentation map (auto)" if bias_correction is None
                             else "asked"} if bias is not None else {"applied": False}),
        "opset": default_opset(qmodel),
        "quantize_linear_nodes": n_q,
        "dequantize_linear_nodes": n_dq,
        "reason": reason,
    }
    return {
        "format": "onnx",
        "precision": "int8",
        "io": "float",
        "inputs": qins,
        "outputs": qouts,
        "notes": notes,
        "extra": {"onnx_quantization": settings},
    }
