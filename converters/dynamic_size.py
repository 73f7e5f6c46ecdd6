"""Dynamic input height/width (issue 12): an ONNX model whose image input has a dynamic
height and/or width keeps them dynamic in its ONNX artifact (the batch is fixed to 1).

- ``convert(input_shape=...)`` / ``--input-shape`` fixes some dimensions and leaves the
  others dynamic: ``(1, 3, None, None)`` / ``1,3,?,?``; fully fixed sizes work as before.
- The manifest records the dynamic dimensions as ``null`` in every tensor shape
  (``source.inputs``, ``artifacts[].inputs``/``outputs``, ``settings.input_shape``) and adds
  ``"dynamic_size": {"stride": 32}``: the runtime runs each image at its own size, each
  dynamic side rounded to a multiple of the stride.
- The ``preprocessing`` spec keeps a ``size``: the size the conversion validated at (default
  :data:`DYNAMIC_DEFAULT_SIZE`); calibration feeds the samples at that size and at
  3/4 of it (:func:`calibration_sizes`: each dynamic side, rounded to the stride; samples
  alternate), so the INT8 ranges are not those of one size only.
- TFLite artifacts need a fixed size: refused in one line naming ``input_shape``.
"""

from __future__ import annotations

import numpy as np

from edgeship.errors import InputError
from edgeship.preprocess import ColorOrder, PreprocessSpec, image_layout

__all__ = ["DYNAMIC_DEFAULT_SIZE", "STRIDE", "dynamic_hw", "example_fixed", "dynamic_preprocess",
           "calibration_sizes", "multi_size", "is_dynamic"]

STRIDE = 32  # what fully convolutional nets with five stride-2 stages need (PP-OCR, U-Nets, YOLO)


DYNAMIC_DEFAULT_SIZE = (640, 640)  # calibration/validation size of a dynamic-H/W model when preprocess= gives none


def dynamic_hw(shape: tuple, source) -> bool:
    """An ONNX image input whose height and/or width (only) are dynamic: kept dynamic in ONNX artifacts."""
    if source.kind != "onnx" or len(shape) != 4 or shape[0] is None:
        return False
    lay = image_layout(shape, source.layout)
    if lay is None:
        return False
    hw, c = (shape[2:4], shape[1]) if lay.value == "NCHW" else (shape[1:3], shape[3])
    return c is not None and any(d is None for d in hw)


def example_fixed(shape: tuple) -> tuple:
    return tuple(320 if d is None else d for d in shape)


def dynamic_preprocess(value, shape: tuple, layout: str, warnings: list) -> PreprocessSpec:
    """The calibration/validation preprocessing of a dynamic-H/W model: the caller's spec, whose
    ``size`` (default :data:`DYNAMIC_DEFAULT_SIZE`, each side a multiple of 32) sets the size
    the conversion measures at; a fixed side of the model wins over it."""
    lay = image_layout(shape, layout)
    ch = shape[1] if lay.value == "NCHW" else shape[3]
    fixed = (shape[2], shape[3]) if lay.value == "NCHW" else (shape[1], shape[2])
    size = tuple(f if f is not None else d for f, d in zip(fixed, DYNAMIC_DEFAULT_SIZE))
    default = PreprocessSpec(size=size, layout=lay, color=ColorOrder.GRAY if ch == 1 else ColorOrder.RGB)
    if value is None:
        spec = default
        warnings.append(f"the model's input height/width are dynamic: calibrated and validated at {size[0]}x{size[1]} "
                        "(and smaller sizes for calibration), RGB, pixels scaled by 1/255; pass preprocess= "
                        "(size=HxW,...) if the model expects otherwise")
    elif isinstance(value, PreprocessSpec):
        spec = value
    elif isinstance(value, dict):
        d = {"size": list(default.size), "layout": lay.value, **dict(value)}
        try:
            spec = PreprocessSpec.from_dict(d)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"preprocess={value!r} is malformed: {exc}") from None
    else:
        spec = PreprocessSpec.parse(value, default=default)
    spec.check_input(shape, layout, what="preprocess")
    return spec


def is_dynamic(tensors) -> bool:
    """Whether the first tensor dict's non-batch dims have a ``None`` (a dynamic dimension)."""
    shape = list((tensors[0] or {}).get("shape") or []) if tensors else []
    return any(d is None for d in shape[1:])


CALIBRATION_SCALES = (1.0, 0.75)  # PP-OCRv4 det, held-out mIoU vs FP32 at 640 / own size: 1x only 0.78 / 0.57,
# 1x + 3/4 0.81 / 0.84, 1x + 3/4 + 1/2 0.76 / 0.71, 1x + 3/2 0.77 / 0.50 (one calibration set; noisy)


def calibration_sizes(hw: tuple, dynamic: tuple, stride: int = STRIDE) -> list:
    """``[(h, w), ...]``: ``hw`` and 3/4 of each dynamic side (``dynamic``: (bool, bool)), rounded
    to ``stride``, distinct, largest first (:data:`CALIBRATION_SCALES`)."""
    out = []
    for f in CALIBRATION_SCALES:
        size = tuple(max(stride, int(round(v * f / stride)) * stride) if d else v for v, d in zip(hw, dynamic))
        if size not in out:
            out.append(size)
    return out


def multi_size(calib: np.ndarray, layout: str, dynamic: tuple, stride: int = STRIDE) -> list:
    """Calibration batches at several sizes: each sample of ``calib`` (N, C, H, W or N, H, W, C)
    at its own size and at the smaller :func:`calibration_sizes` (bilinear resize of the
    preprocessed tensor), cycling sizes over the samples so the count stays ~N."""
    import cv2  # noqa: PLC0415

    calib = np.asarray(calib, np.float32)
    nchw = layout == "NCHW"
    hw = tuple(calib.shape[2:4]) if nchw else tuple(calib.shape[1:3])
    sizes = calibration_sizes(hw, dynamic, stride)
    out = []
    for i, x in enumerate(calib):
        h, w = sizes[i % len(sizes)]
        img = np.transpose(x, (1, 2, 0)) if nchw else x
        if (h, w) != hw:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            if img.ndim == 2:
                img = img[:, :, None]
        out.append((np.transpose(img, (2, 0, 1)) if nchw else img)[None].astype(np.float32))
    return out
