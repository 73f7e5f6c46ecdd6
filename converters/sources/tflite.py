"""A float ``.tflite`` file as a convert source (through tf2onnx's TFLite front end).

The TFLite converter cannot read a ``.tflite`` file, so a float TFLite model (MediaPipe,
TF Hub) reaches INT8 the ONNX way: :func:`check_tflite_file` reads the flatbuffer as data
(the schema classes tf2onnx ships; nothing of the model runs) and refuses

- a file that is not a TFLite flatbuffer (no ``TFL3`` identifier at offset 4);
- custom ops and builtin ops not in :data:`ALLOWED_OPS`;
- tensors, buffers and operator indices that point outside the file or its tables;
- an already-quantized model (int8/uint8/int16 tensors with quantization parameters):
  it has nothing left to quantize, and re-quantizing its dequantized weights would lose more.

Then ``tf2onnx.convert.from_tflite`` writes an FP32 ONNX into a private working folder
and :func:`edgeship.converters.onnx_formats.load_onnx` loads it as an ``onnx`` source
(so every ONNX exporter applies); the manifest's source block keeps the ``.tflite`` path,
its sha256, ``format: "tflite"`` and ``framework_versions.converted_by`` (tf2onnx, opset).
The loader registers itself in :mod:`edgeship.converters.registry` on import.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from edgeship.bundle import sha256_file
from edgeship.errors import ModelFormatError, UnsafeModelError, UnsupportedModelError, require

from .. import registry

__all__ = ["ALLOWED_OPS", "TFLITE_OPSET", "MAX_TFLITE_BYTES", "AlreadyQuantizedError", "matches", "check_tflite_file",
           "load"]

TFLITE_OPSET = 13
MAX_TFLITE_BYTES = 2 << 30  # flatbuffers address at most 2 GiB; larger models keep buffers outside (offset/size)

#: TFLite builtin ops of float models that tf2onnx converts (names as in the TFLite schema).
ALLOWED_OPS = frozenset({
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "POW", "SQUARED_DIFFERENCE", "FLOOR_DIV", "FLOOR_MOD",
    "ABS", "NEG", "SQRT", "RSQRT", "SQUARE", "EXP", "LOG", "SIN", "COS", "FLOOR", "CEIL", "ROUND", "SIGN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "ELU", "LOGISTIC", "TANH", "HARD_SWISH",
    "GELU", "SOFTMAX", "LOG_SOFTMAX", "L2_NORMALIZATION", "LOCAL_RESPONSE_NORMALIZATION",
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD",
    "ARG_MAX", "ARG_MIN",
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION", "PACK", "UNPACK", "SPLIT", "SPLIT_V",
    "SLICE", "STRIDED_SLICE", "GATHER", "GATHER_ND", "TILE", "PAD", "PADV2", "MIRROR_PAD", "SHAPE", "FILL",
    "ZEROS_LIKE", "ONES_LIKE", "BROADCAST_TO", "CAST", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "LOGICAL_AND", "LOGICAL_OR",
    "LOGICAL_NOT", "SELECT", "SELECT_V2", "WHERE", "CUMSUM", "RANGE", "TOPK_V2",
    "DEQUANTIZE",  # only float16 -> float32 (fp16 weights); an integer DEQUANTIZE is an already-quantized model
})

_QUANTIZED_TYPES = {"INT8", "UINT8", "INT16"}


class AlreadyQuantizedError(UnsupportedModelError):
    """The TFLite file is already integer-quantized: there is nothing to convert to INT8."""


def matches(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".tflite")


def _names(enum_cls) -> dict:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _read(path: str) -> bytes:
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path} is not a file; give the path of a .tflite model")
    size = os.path.getsize(path)
    if size > MAX_TFLITE_BYTES:
        raise UnsupportedModelError(f"{path} is {size} bytes; TFLite sources up to {MAX_TFLITE_BYTES >> 30} GiB "
                                    "are converted")
    with open(path, "rb") as fh:
        return fh.read()


def _check_buffers(model, n_file: int, path: str) -> None:
    for b in range(model.BuffersLength()):
        buf = model.Buffers(b)
        off, size = int(buf.Offset()), int(buf.Size())
        if (off or size) and (off <= 1 or off + size > n_file):
            raise UnsafeModelError(f"{path}: buffer {b} points outside the file (offset {off}, {size} bytes, file "
                                   f"{n_file} bytes); the file is damaged or crafted: re-export the model")


def _check_subgraph(model, sg, g: int, ops: dict, types: dict, path: str) -> tuple[set, set]:
    n_tensors, n_buffers, n_codes = sg.TensorsLength(), model.BuffersLength(), model.OperatorCodesLength()
    quantized, used = set(), set()
    for t in range(n_tensors):
        tensor = sg.Tensors(t)
        if not 0 <= tensor.Buffer() < max(n_buffers, 1):
            raise UnsafeModelError(f"{path}: subgraph {g} tensor {t} names buffer {tensor.Buffer()} of {n_buffers}; "
                                   "the file is damaged or crafted: re-export the model")
        q = tensor.Quantization()
        tname = types.get(tensor.Type(), str(tensor.Type()))
        if tname in _QUANTIZED_TYPES and q is not None and q.ScaleLength() > 0:
            quantized.add(tname.lower())
    for idx in (*[sg.Inputs(i) for i in range(sg.InputsLength())], *[sg.Outputs(i) for i in range(sg.OutputsLength())]):
        if not 0 <= idx < n_tensors:
            raise UnsafeModelError(f"{path}: subgraph {g} input/output names tensor {idx} of {n_tensors}; "
                                   "the file is damaged or crafted: re-export the model")
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code_index = op.OpcodeIndex()
        if not 0 <= code_index < n_codes:
            raise UnsafeModelError(f"{path}: operator {k} names operator code {code_index} of {n_codes}; "
                                   "the file is damaged or crafted: re-export the model")
        for j in (*[op.Inputs(i) for i in range(op.InputsLength())], *[op.Outputs(i) for i in range(op.OutputsLength())]):
            if not -1 <= j < n_tensors:  # -1: an optional input left out
                raise UnsafeModelError(f"{path}: operator {k} names tensor {j} of {n_tensors}; "
                                       "the file is damaged or crafted: re-export the model")
        used.add(ops[code_index])
    return quantized, used


def check_tflite_file(path: str) -> dict:
    """Check a ``.tflite`` file as data before anything converts it.

    Returns:
        ``{"ops": sorted builtin op names, "subgraphs": n, "version": schema version}``.

    Raises:
        ModelFormatError: not a TFLite flatbuffer (no ``TFL3`` identifier), or unreadable.
        UnsafeModelError: a custom op, an op not in :data:`ALLOWED_OPS`, or an index or buffer
          pointing outside the file.
        AlreadyQuantizedError: integer tensors with quantization parameters (an INT8 model).
    """
    require("tf2onnx", "convert", "to read and convert TFLite models")
    from tf2onnx.tflite import BuiltinOperator, Model, TensorType  # noqa: PLC0415

    data = _read(path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier at byte 4); give a "
                               ".tflite file written by the TFLite converter")
    names, types = _names(BuiltinOperator.BuiltinOperator), _names(TensorType.TensorType)
    try:
        model = Model.Model.GetRootAs(data, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            name = names.get(code, f"builtin #{code}")
            if name == "CUSTOM":
                custom = (oc.CustomCode() or b"").decode("utf-8", "replace")
                raise UnsafeModelError(f"{path} uses the custom op {custom!r}: custom ops are code outside the "
                                       "TFLite runtime and are not converted; export the model with builtin ops only")
            codes.append(name)
        _check_buffers(model, len(data), path)
        quantized, used = set(), set()
        for g in range(model.SubgraphsLength()):
            q, u = _check_subgraph(model, model.Subgraphs(g), g, dict(enumerate(codes)), types, path)
            quantized |= q
            used |= u
    except (UnsafeModelError, ModelFormatError):
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated/garbled flatbuffer raises anything from struct/IndexError
        raise ModelFormatError(f"{path} is not a readable TFLite flatbuffer ({type(exc).__name__}: {exc}); "
                               "re-export it with the TFLite converter") from None
    if model.SubgraphsLength() < 1:
        raise ModelFormatError(f"{path} has no subgraph; there is no model in it")
    if quantized:
        raise AlreadyQuantizedError(
            f"{path} is already quantized ({', '.join(sorted(quantized))} tensors with quantization parameters): "
            "convert its float original instead (the float .tflite, SavedModel, Keras or ONNX model), or run this "
            "file as it is with edgeship.runtime")
    refused = sorted(used - ALLOWED_OPS)
    if refused:
        raise UnsafeModelError(f"{path} uses TFLite ops outside edgeship's allow-list: {', '.join(refused)}; "
                               "convert the model from its source format (Keras, SavedModel or ONNX) instead")
    return {"ops": sorted(used), "subgraphs": int(model.SubgraphsLength()), "version": int(model.Version())}


def _to_onnx(path: str, out_path: str) -> str:
    """FP32 ONNX of a checked ``.tflite`` file with tf2onnx; returns tf2onnx's version."""
    tf2onnx = require("tf2onnx", "convert", "to convert TFLite models")
    from tf2onnx import convert as t2o  # noqa: PLC0415

    try:
        t2o.from_tflite(path, opset=TFLITE_OPSET, output_path=out_path)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything on a graph it cannot map
        raise UnsupportedModelError(f"tf2onnx could not convert {path} to ONNX ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}); convert the model from its "
                                    "source format (Keras, SavedModel or ONNX) instead") from None
    return str(getattr(tf2onnx, "__version__", ""))


def load(model, *, input_shape=None, allow_legacy_h5=False, allow_unsafe=False):
    """Loader for ``.tflite`` paths (see :mod:`..registry`): checked, converted to FP32 ONNX,
    loaded as an ``onnx`` source whose manifest names the ``.tflite`` file.

    ``allow_unsafe`` does not lift the op allow-list: tf2onnx has no converter for ops outside it.

    Raises:
        ModelFormatError, UnsafeModelError, AlreadyQuantizedError: see :func:`check_tflite_file`.
        UnsupportedModelError: tf2onnx cannot convert the graph.
    """
    del allow_legacy_h5, allow_unsafe
    from ..onnx_formats import load_onnx  # noqa: PLC0415

    path = os.path.abspath(os.fspath(model))
    info = check_tflite_file(path)
    work = tempfile.mkdtemp(prefix="edgeship-tflite-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the ONNX is needed until the conversion ends
    onnx_path = os.path.join(work, os.path.splitext(os.path.basename(path))[0] + ".onnx")
    version = _to_onnx(path, onnx_path)
    source = load_onnx(onnx_path, input_shape=input_shape)
    source.format = "tflite"
    source.path = path
    source.sha256 = sha256_file(path, error=ModelFormatError)
    source.framework_versions = {**source.framework_versions, "tflite_schema": info["version"],
                                 "converted_by": f"tf2onnx {version} (TFLite front end, opset {TFLITE_OPSET})"}
    source.notes = [f"converted from TFLite to FP32 ONNX by tf2onnx {version} (opset {TFLITE_OPSET}; ops: "
                    f"{', '.join(info['ops'])})"] + list(source.notes)
    return source


registry.register_loader("tflite", matches, load, priority=10)
