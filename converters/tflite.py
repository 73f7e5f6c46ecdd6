"""Keras / SavedModel -> TFLite through ``tf.lite.TFLiteConverter``, one precision per call.

The ``('keras', 'tflite')`` exporter of :data:`edgeship.converters.exporters.EXPORTERS`. Precisions:

========  ==========================================================  ===============
fp32      plain conversion                                             float I/O
fp16      float16 weights (dequantized to float32 on most CPUs)       float I/O
dynamic   int8 weights, float activations (hybrid kernels)            float I/O
int8      full integer, ``TFLITE_BUILTINS_INT8``, calibrated           int8/uint8/float
int16x8   int16 activations, int8 weights (experimental op set)       int16/float
========  ==========================================================  ===============

For ``int16x8`` the integer I/O type is int16: ``IOType.INT8`` (``io="int16"``
in :func:`edgeship.converters.convert`) asks for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Iterator

import numpy as np

from edgeship.errors import CalibrationError, InputError, ModelFormatError, UnsupportedModelError

from . import registry
from .registry import CalibMethod, ExportRequest, IOType, Precision

# Known performance traps on x86 CPUs (measured or documented), shown as notes.
SLOW_ON_X86 = {
    Precision.DYNAMIC: (
        "dynamic-range quantization uses hybrid kernels that ran about 2x slower than FP32 for "
        "MobileNetV2 on x86 CPUs here; prefer int8 (calibrated) or fp32 for speed on x86"
    ),
    Precision.FP16: (
        "float16 weights are dequantized to float32 at load time on CPUs without fp16 arithmetic: "
        "smaller file, no speed gain on x86"
    ),
    Precision.INT16X8: (
        "16x8 quantization is experimental and not accelerated by XNNPACK; on x86 CPUs it runs on "
        "reference kernels and is much slower than int8"
    ),
}

_NP_DTYPES = {
    np.float32: "float32", np.float16: "float16", np.int8: "int8", np.uint8: "uint8",
    np.int16: "int16", np.int32: "int32", np.int64: "int64", np.bool_: "bool",
}


@contextlib.contextmanager
def quiet() -> Iterator[list]:
    """Silence TensorFlow's C++ and Python logging and stdout/stderr chatter.

    Yields a list that receives the captured text once the block ends (for
    error messages). ``EDGESHIP_VERBOSE=1`` disables the silencing.
    """
    captured: list = []
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("EDGESHIP_VERBOSE") == "1":
        yield captured
        return
    try:
        import absl.logging  # noqa: PLC0415

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover
            pass
    sink = tempfile.TemporaryFile(mode="w+b")
    saved = []
    try:
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(sink.fileno(), fd)
    except OSError:  # pragma: no cover - no real fds (embedded interpreters)
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)
        saved = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(_Sink(sink)), contextlib.redirect_stderr(_Sink(sink)):
                yield captured
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover
                pass
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)
        sink.seek(0)
        captured.append(sink.read().decode("utf-8", "replace"))
        sink.close()


class _Sink:
    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        self.fh.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        self.fh.flush()


def _tail(captured: list, lines: int = 6) -> str:
    text = "".join(captured).strip().splitlines()
    keep = [ln for ln in text if "error" in ln.lower()] or text
    return " | ".join(keep[-lines:])


def make_converter(source: registry.Source, request: ExportRequest):
    """A TFLiteConverter for the source, with the input shape fixed when needed."""
    import tensorflow as tf  # noqa: PLC0415

    fixed = tuple(source.inputs[0]["shape"])
    if source.format == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(source.handle, signature_keys=["serving_default"]), "from_saved_model"
    model = source.handle
    declared = tuple(None if d is None else int(d) for d in model.inputs[0].shape)
    needs_fixed = any(d is None for d in declared[1:]) or declared[1:] != fixed[1:] or (
        declared[0] is not None and declared[0] != fixed[0])
    flavor = "tf_keras" if type(model).__module__.startswith("tf_keras") or any(
        c.__module__.startswith("tf_keras") for c in type(model).__mro__) else "keras3"
    if not needs_fixed:
        return tf.lite.TFLiteConverter.from_keras_model(model), "from_keras_model"
    spec = tf.TensorSpec(fixed, tf.float32, name="input")
    if flavor == "keras3":
        # Keras 3 models are traced through their own exporter (a plain tf.function over a
        # Keras 3 model loses its variables in TFLite), then converted as a SavedModel.
        export_dir = os.path.join(request.workdir, "fixed_shape_saved_model")
        model.export(export_dir, format="tf_saved_model", input_signature=[spec], verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(export_dir), "keras.export+from_saved_model"
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model), "from_concrete_functions"


def _configure(conv, request: ExportRequest) -> str:
    """Set the converter's optimisation options; returns the manifest ``io`` value."""
    import tensorflow as tf  # noqa: PLC0415

    p = request.precision
    if p is Precision.FP32:
        _float_io_only(request)
        return "float"
    if p is Precision.FP16:
        _float_io_only(request)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
        return "float"
    if p is Precision.DYNAMIC:
        _float_io_only(request)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return "float"
    calib = request.calib
    if calib is None or len(calib) == 0:
        raise CalibrationError(f"{p.value} quantization needs calibration samples; pass calib=...")
    calib = np.asarray(calib, np.float32)
    batch = int(calib.shape[0])

    def representative():
        for i in range(batch):
            yield [calib[i : i + 1]]

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    if p is Precision.INT8:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.FLOAT: tf.float32}[request.io]
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
        return request.io.value
    if p is Precision.INT16X8:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        if request.io is IOType.UINT8:
            raise InputError("int16x8 models take int16 or float I/O, not uint8; use io='int16' or io='float'")
        if request.io is IOType.INT8:  # integer I/O of a 16x8 model is int16
            conv.inference_input_type = tf.int16
            conv.inference_output_type = tf.int16
            return "int16"
        return "float"
    raise UnsupportedModelError(f"precision {p!r} is not supported by the TFLite exporter")  # pragma: no cover


def _float_io_only(request: ExportRequest) -> None:
    if request.io is not IOType.FLOAT:
        raise InputError(
            f"precision {request.precision.value} has float inputs and outputs; io={request.io.value!r} needs "
            "precision 'int8' (or 'int16x8'); use io='float'"
        )


def tensor_entries(details: list) -> list:
    """Manifest tensor dicts from LiteRT ``get_input_details()``/``get_output_details()``."""
    out = []
    for d in details:
        q = d.get("quantization_parameters") or {}
        scales = [float(s) for s in np.asarray(q.get("scales", [])).reshape(-1)]
        zps = [int(z) for z in np.asarray(q.get("zero_points", [])).reshape(-1)]
        quant = None
        if scales:
            quant = {"scale": scales, "zero_point": zps, "axis": int(q.get("quantized_dimension", 0))}
        shape = [int(s) for s in d["shape"]]
        sig = d.get("shape_signature")
        if sig is not None and len(sig) == len(shape):
            shape = [None if int(s) < 0 else int(v) for s, v in zip(sig, shape)]
            if shape and shape[0] is None:
                shape[0] = int(d["shape"][0])
        out.append({
            "name": str(d["name"]),
            "shape": shape,
            "dtype": _NP_DTYPES.get(np.dtype(d["dtype"]).type, str(np.dtype(d["dtype"]))),
            "quantization": quant,
        })
    return out


def read_io(path: str) -> tuple[list, list]:
    """``(inputs, outputs)`` tensor entries of a ``.tflite`` file, read with LiteRT.

    Raises:
        ModelFormatError: LiteRT cannot open the file.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:  # pragma: no cover - fall back to TensorFlow's copy
        import tensorflow as tf  # noqa: PLC0415

        Interpreter = tf.lite.Interpreter
    try:
        with quiet():
            it = Interpreter(model_path=path)
    except (ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"LiteRT cannot open the converted model {path}: {exc}") from None
    return tensor_entries(it.get_input_details()), tensor_entries(it.get_output_details())


def export(source: registry.Source, request: ExportRequest) -> dict:
    """Write one ``.tflite`` file for ``source`` at ``request.out_path``.

    Returns:
        The artifact entry parts (see :mod:`edgeship.converters.registry`).

    Raises:
        CalibrationError: int8/int16x8 without calibration samples.
        InputError: an ``io`` type the precision cannot have.
        UnsupportedModelError: the TFLite converter rejects the model (the
            message carries the converter's own error lines).
    """
    with quiet() as captured:
        import tensorflow as tf  # noqa: PLC0415

        tf.get_logger().setLevel("ERROR")
        conv, how = make_converter(source, request)
        io_value = _configure(conv, request)
        keep_head = request.keep_head_float and request.precision is Precision.INT8
        if keep_head:  # calibrate only; quantized below with the decode head kept float
            conv._experimental_calibrate_only = True  # noqa: SLF001 - TF's calibrate-then-quantize switch
        head: list = []
        try:
            flat = conv.convert()
            if keep_head:
                from .tflite_head import describe as describe_head  # noqa: PLC0415
                from .tflite_head import quantize_keep_head  # noqa: PLC0415

                calibrated = flat
                flat, head = quantize_keep_head(calibrated, conv.inference_input_type,
                                                disable_per_channel=bool(getattr(conv, "_experimental_disable_per_channel", False)))
        except Exception as exc:  # the converter raises ConverterError and friends
            err = exc
        else:
            err = None
    if err is not None:
        detail = str(err).strip().splitlines()
        raise UnsupportedModelError(
            f"the TFLite converter failed for precision {request.precision.value}: "
            f"{(detail[0] if detail else type(err).__name__)[:400]} {_tail(captured)[:600]}"
        )
    with open(request.out_path, "wb") as fh:
        fh.write(flat)
    inputs, outputs = read_io(request.out_path)
    notes = []
    extra = {"tflite_converter": how, "tensorflow": tf.__version__}
    if head:
        extra["tflite_detection_head"] = {"tensors": list(head), "summary": describe_head(calibrated, head)}
        notes.append(f"detection head: {extra['tflite_detection_head']['summary']} (TFLite denylisted_nodes), so "
                     "boxes and scores keep their own ranges; the outputs stay float32")
    if request.precision in SLOW_ON_X86:
        notes.append("slow on x86: " + SLOW_ON_X86[request.precision])
    if request.exclude:
        notes.append(f"warning: exclude={list(request.exclude)} is applied by the ONNX exporter only; the TFLite "
                     "converter quantizes every supported op")
    if request.calib_method is not CalibMethod.MINMAX and request.precision in (
            Precision.INT8, Precision.INT16X8):
        notes.append(f"warning: calib_method={request.calib_method.value} is not available in the TFLite converter; "
                     "it calibrated with min/max ranges")
    return {
        "format": "tflite",
        "precision": request.precision.value,
        "io": io_value,
        "layout": source.layout,
        "inputs": inputs,
        "outputs": outputs,
        "notes": notes,
        "extra": extra,
    }

