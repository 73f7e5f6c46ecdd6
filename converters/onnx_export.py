"""Keras -> FP32 ONNX through tf2onnx, checked against Keras before anything else.

The model is traced as a ``tf.function`` with a fixed input signature (batch
dimension left dynamic) and converted with ``tf2onnx.convert.from_function`` at
opset 17; this works the same for Keras 3 and tf_keras models (``from_keras``
does not support Keras 3). tf2onnx keeps the Keras input layout (NHWC), so the
ONNX model takes exactly what the Keras model takes.

The FP32 ONNX must reproduce the source within ``atol`` (1e-4) max abs error
on the calibration samples, or :class:`~edgeship.errors.ValidationFailedError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

import numpy as np

from edgeship.errors import CalibrationError, UnsupportedModelError, ValidationFailedError, require

__all__ = ["export_keras", "OPSET", "ATOL"]

OPSET = 17
ATOL = 1e-4


def _clean_name(name: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name or "")).strip("_")
    return name or fallback


def _keras_io(model):
    """(input specs [(name, shape)], output names) of a Keras 3 or tf_keras model."""
    ins = []
    for i, t in enumerate(getattr(model, "inputs", None) or []):
        shape = tuple(None if d is None else int(d) for d in t.shape)
        name = getattr(t, "name", None) or f"input_{i}"
        ins.append((_clean_name(name.split(":")[0], f"input_{i}"), shape))
    outs = list(getattr(model, "output_names", None) or [])
    return ins, outs


def _rename_outputs(model_proto, names: list) -> None:
    used = set()
    for i, out in enumerate(model_proto.graph.output):
        new = _clean_name(names[i] if i < len(names) else "", f"output_{i}")
        if new in used:
            new = f"{new}_{i}"
        used.add(new)
        old = out.name
        if old == new:
            continue
        for node in model_proto.graph.node:
            for k, o in enumerate(node.output):
                if o == old:
                    node.output[k] = new
            for k, x in enumerate(node.input):
                if x == old:
                    node.input[k] = new
        out.name = new


def _fn_and_signature(handle, input_shape):
    tf = require("tensorflow", "convert", "to export Keras models to ONNX")
    if isinstance(handle, (str, os.PathLike)):
        path = os.fspath(handle)
        if not os.path.isdir(path):
            raise UnsupportedModelError(
                f"Keras -> ONNX takes an in-memory Keras model or a SavedModel folder, got {path!r}"
            )
        loaded = tf.saved_model.load(path)
        sig = loaded.signatures.get("serving_default")
        if sig is None:
            raise UnsupportedModelError(f"{path}: SavedModel has no serving_default signature")
        (key, spec), = sig.structured_input_signature[1].items()
        out_keys = sorted(sig.structured_outputs)
        shape = list(spec.shape)
        if input_shape is not None and len(input_shape) == len(shape):
            shape = [None] + list(input_shape[1:])
        fn = tf.function(lambda x: [sig(**{key: x})[k] for k in out_keys])
        return fn, [tf.TensorSpec([None] + shape[1:], tf.float32, name=_clean_name(key, "input"))], out_keys, loaded
    ins, outs = _keras_io(handle)
    if len(ins) != 1:
        raise UnsupportedModelError(
            f"Keras -> ONNX supports models with one input; this one has {len(ins)}"
        )
    name, shape = ins[0]
    shape = list(shape)
    if input_shape is not None and len(input_shape) == len(shape):
        shape = [None] + [s if s is not None else d for s, d in zip(list(input_shape)[1:], shape[1:])]
    if any(d is None for d in shape[1:]):
        raise CalibrationError(
            f"input {name!r} has dynamic dimensions {tuple(shape)}; pass input_shape (e.g. 1,224,224,3)"
        )

    @tf.function
    def fn(x):
        return handle(x, training=False)

    return fn, [tf.TensorSpec([None] + shape[1:], tf.float32, name=name)], outs, None


def export_keras(handle, out_path: str, *, samples=None, reference=None, input_shape=None,
                 opset: int = OPSET, atol: float = ATOL) -> dict:
    """Export a Keras model (Keras 3, tf_keras or SavedModel folder) to FP32 ONNX.

    ``reference(x) -> list`` runs the source model (defaults to ``handle``);
    ``samples`` (float32, source layout) are what the export is checked on.

    Returns ``{"notes": [...], "settings": {...}}`` with the measured error.

    Raises:
        ValidationFailedError: the ONNX model differs from Keras by more than ``atol``.
        UnsupportedModelError: more than one input, or a path that is not a SavedModel.
        MissingDependencyError: tensorflow, tf2onnx, onnx or onnxruntime missing.
    """
    tf2onnx = require("tf2onnx", "convert", "to export Keras models to ONNX")
    onnx = require("onnx", "convert", "to export Keras models to ONNX")
    ort = require("onnxruntime", "convert", "to check the exported ONNX model")
    fn, signature, out_names, _keep = _fn_and_signature(handle, input_shape)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except (UnsupportedModelError, CalibrationError):
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"tf2onnx could not convert this model ({type(exc).__name__}: {exc})") from exc
    _rename_outputs(model_proto, out_names)
    model_proto.producer_name = "edgeship+tf2onnx"
    onnx.save(model_proto, out_path)

    settings = {"tool": "tf2onnx", "tf2onnx": getattr(tf2onnx, "__version__", ""), "opset": opset,
                "input": signature[0].name, "atol": atol}
    notes = [f"Keras -> ONNX with tf2onnx {settings['tf2onnx']} (opset {opset}), input layout kept"]
    if samples is None or len(samples) == 0:
        settings["max_abs_error"] = None
        notes.append("FP32 ONNX not checked against Keras: no samples")
        return {"notes": notes, "settings": settings}
    x = np.asarray(samples[: min(len(samples), 32)], dtype=np.float32)
    if reference is None:
        def reference(a):
            y = handle(a, training=False)
            ys = y if isinstance(y, (list, tuple)) else [y]
            return [np.asarray(t) for t in ys]
    ref = [np.asarray(r, dtype=np.float32) for r in reference(x)]
    sess = ort.InferenceSession(out_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    if len(got) != len(ref):
        raise ValidationFailedError(f"ONNX export has {len(got)} outputs, the Keras model {len(ref)}")
    err = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise ValidationFailedError(f"ONNX export output shape {g.shape} differs from Keras {r.shape}")
        err = max(err, float(np.max(np.abs(r - g))) if r.size else 0.0)
    settings["max_abs_error"] = err
    settings["checked_samples"] = int(len(x))
    if not err <= atol:
        raise ValidationFailedError(
            f"the FP32 ONNX export differs from the Keras model by {err:.3g} (max abs) on {len(x)} samples; "
            f"the limit is {atol:g}. An op is converted inexactly by tf2onnx; the ONNX artifact is refused"
        )
    notes.append(f"FP32 ONNX matches Keras: max abs error {err:.2e} on {len(x)} samples (limit {atol:g})")
    return {"notes": notes, "settings": settings}
