"""The model's side of the image -> input rule, shared by every task adapter and the stream.

pycoral's ``adapters/common.py`` in spirit: small free functions over anything
that looks like a model (``inputs``, and optionally ``manifest``, ``artifact``,
``labels``), so a stand-in model in a test works as well as
:class:`edgeship.runtime.Model`.

- :func:`input_layout`: the layout ``model.run`` takes (the manifest's source
  layout, else the artifact's, else read from the input shape: a bare NCHW
  ``.onnx`` with a dynamic batch is NCHW).
- :func:`preprocess_spec`: the manifest's spec, else
  :meth:`PreprocessSpec.default_for` the first input.
- :func:`prepare_input`: :meth:`PreprocessSpec.to_input` in that layout.

Dynamic sizes (:func:`own_size`): when the first input is an image whose height
and/or width are dynamic (``None`` in the engine's or the manifest's shape) and
no spec fixes its size (no manifest ``preprocessing``, a bare file; or the
manifest says ``"dynamic_size": {...}``), each image runs at its own size: a
fixed side keeps its value and the other side keeps the image's aspect ratio;
an image larger than ``max_side`` (default 2048) on its longer side is scaled
down first; each dynamic side is rounded to the nearest multiple of ``stride``
(default 32, what fully convolutional nets with five stride-2 stages need:
PP-OCR, YOLO, U-Nets; at least one stride); the resize is a stretch, so task
adapters map outputs back exactly as for a fixed size. Colour/scale/mean/std
are the manifest spec's when there is one, else the defaults (RGB or gray,
``pixel / 255``). ``manifest["dynamic_size"] = {"stride": S, "max_side": M}``
overrides both (``stride: 1`` keeps the exact size).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ...errors import BundleError, InputError
from ...preprocess import ColorOrder, Layout, PreprocessSpec, ResizeMode, image_layout
from ...vocab import Task as VTask

__all__ = ["dynamic_sides", "infer_task", "input_layout", "model_labels", "own_size", "per_image", "preprocess_spec",
           "prepare_input"]

DEFAULT_STRIDE = 32  # dynamic sides are rounded to a multiple of this (see own_size)
DEFAULT_MAX_SIDE = 2048  # longer side of an image run at its own size, at most


def _manifest(model) -> Mapping:
    man = getattr(model, "manifest", None)
    return man if isinstance(man, Mapping) else {}


def _first_shape(model) -> tuple:
    inputs = getattr(model, "inputs", None) or ()
    if not inputs:
        raise InputError("the model reports no inputs, so its preprocessing cannot be derived")
    return tuple(inputs[0].shape)


def input_layout(model) -> Layout | None:
    """The image layout ``model.run`` takes its first input in, or ``None`` when it is not an image.

    The manifest's ``source.layout`` (``run`` speaks the source layout), else
    the artifact's ``layout``, else what the input shape says (see
    :func:`edgeship.preprocess.image_layout`).
    """
    declared = (_manifest(model).get("source") or {}).get("layout")
    if declared not in ("NHWC", "NCHW"):
        art = getattr(model, "artifact", None)
        declared = art.get("layout") if isinstance(art, Mapping) else None
    try:
        shape = _first_shape(model)
    except InputError:
        shape = ()
    return image_layout(shape, declared)


def preprocess_spec(model, image=None) -> PreprocessSpec:
    """The preprocessing a model's first input needs (for ``image`` when its size is dynamic).

    ``model.preprocessing`` when it is a spec, else the manifest's
    ``preprocessing``, else :meth:`PreprocessSpec.default_for` the input shape
    in :func:`input_layout` (stretch, RGB or gray, ``pixel / 255``). When the
    input's height/width are dynamic and :func:`per_image` says so, the spec
    at ``image``'s own size (see the module's doc and :func:`own_size`);
    ``image`` is an image array or its ``(height, width)``.

    Raises:
        BundleError: the manifest's spec is malformed.
        InputError: no spec and the input is not image-shaped, or its size is
            dynamic and no ``image`` was given.
    """
    spec = getattr(model, "preprocessing", None)
    if isinstance(spec, PreprocessSpec):
        return spec
    man = _manifest(model)
    d = man.get("preprocessing")
    base = None
    if d:
        try:
            base = PreprocessSpec.from_dict(d)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise BundleError(f"the manifest's preprocessing spec is malformed: {exc}") from None
        if "dynamic_size" not in man:
            return base
    shape, layout = _first_shape(model), input_layout(model)
    sides = dynamic_sides(shape, layout)
    if sides is None:
        return base if base is not None else PreprocessSpec.default_for(shape, layout)
    if image is None:
        raise InputError(f"the input shape {shape} has a dynamic height/width: its preprocessing depends on the "
                         "image (pass the image, or give a preprocessing spec with size=HxW)")
    hw = tuple(image.shape[:2]) if hasattr(image, "shape") else tuple(image)
    fixed = _hw(shape, layout)
    opts = man.get("dynamic_size") if isinstance(man.get("dynamic_size"), Mapping) else {}
    size = own_size(hw, fixed, stride=opts.get("stride", DEFAULT_STRIDE), max_side=opts.get("max_side", DEFAULT_MAX_SIDE))
    if base is not None:
        return dataclasses.replace(base, size=size, resize=ResizeMode.STRETCH)
    c = shape[3] if layout is Layout.NHWC else shape[1]
    return PreprocessSpec(size=size, color=ColorOrder.GRAY if c == 1 else ColorOrder.RGB, layout=layout)


def _hw(shape: tuple, layout: Layout) -> tuple:
    return (shape[1], shape[2]) if layout is Layout.NHWC else (shape[2], shape[3])


def dynamic_sides(shape: Sequence, layout=None) -> tuple[bool, bool] | None:
    """``(height dynamic, width dynamic)`` of an image input ``shape`` (batch first) with a dynamic
    height or width and a fixed 1- or 3-channel axis; ``None`` otherwise (fixed size, or not an image)."""
    shape = tuple(shape)
    if len(shape) != 4:
        return None
    lay = image_layout(shape, layout)
    if lay is None:
        return None
    c = shape[3] if lay is Layout.NHWC else shape[1]
    h, w = _hw(shape, lay)
    if c not in (1, 3) or (h is not None and w is not None):
        return None
    return h is None, w is None


def per_image(model) -> bool:
    """Whether ``model``'s preprocessing depends on each image's size (see :func:`preprocess_spec`)."""
    if isinstance(getattr(model, "preprocessing", None), PreprocessSpec):
        return False
    man = _manifest(model)
    if man.get("preprocessing") and "dynamic_size" not in man:
        return False
    try:
        shape = _first_shape(model)
    except InputError:
        return False
    return dynamic_sides(shape, input_layout(model)) is not None


def own_size(image_hw: Sequence[int], fixed_hw: Sequence = (None, None), *, stride: int = DEFAULT_STRIDE,
             max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``image_hw`` runs at on an input whose sides are
    ``fixed_hw`` (``None``: dynamic): see the module's doc.

    Raises:
        InputError: ``stride``/``max_side`` are not positive integers.
    """
    for name, v in (("stride", stride), ("max_side", max_side)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"dynamic_size {name} must be a positive integer, got {v!r}")
    ih, iw = max(1, int(image_hw[0])), max(1, int(image_hw[1]))
    fh, fw = fixed_hw
    if fh is not None:
        scale = fh / ih
    elif fw is not None:
        scale = fw / iw
    else:
        scale = min(1.0, max_side / max(ih, iw))
    h = fh if fh is not None else _to_stride(ih * scale, stride, max_side)
    w = fw if fw is not None else _to_stride(iw * scale, stride, max_side)
    return int(h), int(w)


def _to_stride(v: float, stride: int, max_side: int) -> int:
    n = max(1, int(round(v / stride))) * stride
    return min(n, max(stride, max_side // stride * stride))


def prepare_input(model, spec: PreprocessSpec, image: np.ndarray) -> np.ndarray:
    """One BGR image -> a batch of one for ``model.run`` (the one rule, in the model's layout)."""
    return spec.to_input(image, bgr=True, layout=input_layout(model))


def model_labels(model) -> Sequence[str] | None:
    """The model's class labels (its ``labels``, else the manifest's), or ``None``."""
    labels = getattr(model, "labels", None)
    if labels:
        return list(labels)
    labels = _manifest(model).get("labels")
    return list(labels) if labels else None


def model_decoder(model) -> Mapping | None:
    """The detection decoder spec the conversion recorded (manifest ``decoder``), or ``None``."""
    dec = getattr(model, "decoder", None)
    if isinstance(dec, Mapping):
        return dec
    dec = _manifest(model).get("decoder")
    return dec if isinstance(dec, Mapping) else None


# -- what a model does, read from its manifest or its outputs ---------------------------------


def _spatial(shape: tuple, layout) -> tuple:
    return tuple(shape[2:4]) if str(getattr(layout, "value", layout)) == "NCHW" else tuple(shape[1:3])


def _dense(out: tuple, inp: tuple, layout) -> bool:
    """A 4-D output at the input's height and width (or 1/2, 1/4, 1/8 of it): a per-pixel map."""
    if len(out) != 4 or len(inp) != 4:
        return False
    for o, i in zip(_spatial(out, layout), _spatial(inp, layout)):
        if o is None and i is None:
            continue
        if o is None or i is None or not (o == i or (o > 1 and i % o == 0 and i // o in (2, 4, 8))):
            return False
    return True


def _size(dims) -> int | None:
    n = 1
    for d in dims:
        if d is None:
            return None
        n *= int(d)
    return n


def infer_task(model) -> tuple[str, str]:
    """``(task, how it is known)`` for a loaded model, in the vocabulary's words (``classification``,
    ``detection``, ``segmentation``, ``other``): the manifest's task or decoder, else its output shapes."""
    man = getattr(model, "manifest", None) or {}
    t = str(man.get("task") or "")
    if t in (VTask.CLASSIFICATION.value, VTask.DETECTION.value, VTask.SEGMENTATION.value):
        return t, "the manifest"
    if isinstance(man.get("decoder"), dict):
        return VTask.DETECTION.value, "the manifest's decoder"
    outs = [tuple(o.shape) for o in model.outputs]
    inp = tuple(model.inputs[0].shape) if model.inputs else ()
    layout = input_layout(model)
    if layout is not None and len(outs) >= 2:
        return VTask.DETECTION.value, f"{len(outs)} outputs of an image model (boxes and scores)"
    if layout is not None and len(outs) == 1 and len(outs[0]) == 3:
        a, b = outs[0][1], outs[0][2]
        if isinstance(a, int) and isinstance(b, int) and max(a, b) >= 100 and min(a, b) >= 5:
            return VTask.DETECTION.value, f"a {list(outs[0])} output: a box and class scores per candidate"
    if layout is not None and len(outs) == 1 and _dense(outs[0], inp, layout):
        return VTask.SEGMENTATION.value, f"a {list(outs[0])} output: a map at the input's height and width"
    if len(outs) == 1 and len(outs[0]) >= 2 and _size(outs[0][1:]) != 1:
        return VTask.CLASSIFICATION.value, f"a {list(outs[0])} output: a score per class"
    return VTask.OTHER.value, f"outputs {[list(o) for o in outs]}"
