"""The stream's preprocessing: the one image -> input rule, in three OpenCV calls.

:class:`FastPreprocess` is an optimised implementation of
:meth:`edgeship.preprocess.PreprocessSpec.to_input` followed by
``Model.run``'s input quantization, for the common case: stretch resize, one
image input, NHWC or NCHW. Every per-pixel step after the resize -- colour
order, ``* scale``, ``- mean``, ``/ std``, the spec's integer rounding and,
for a quantized input, the model's own quantization (``round(x / s) + zp``,
clipped) -- is a function of the 8-bit pixel value and the channel, so it
is folded into one 256-entry table per channel (``cv2.LUT``): no float image,
no extra copies. The resize uses the flag the rule uses
(:meth:`PreprocessSpec.resize_flag`) and the colour swap happens on the small
resized image (a swap commutes with a per-channel resize). The result equals
the reference rule bit for bit (``tests/test_preprocess_rule.py``).

The stream resizes with ``interpolation="linear"`` by default, about 10x
cheaper than ``INTER_AREA`` for a 640x480 -> 224x224 frame: that is the rule
with ``PreprocessSpec(..., interpolation="linear")``, not another rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...preprocess import ColorOrder, Interpolation, Layout, PreprocessSpec, ResizeMode, opencv
from ...vocab import parse
from ..tasks.common import input_layout

__all__ = ["FastPreprocess"]


class FastPreprocess:
    """Frame (BGR uint8) -> a model input batch of one, as the rule computes it. Build it with :meth:`build`."""

    def __init__(self, spec: PreprocessSpec, table: np.ndarray, layout: Layout) -> None:
        self.spec = spec
        self.h, self.w = spec.size
        self.table = table  # (256, 1, C), the engine dtype
        self.layout = layout
        self.gray = spec.color is ColorOrder.GRAY
        self.swap = spec.color is ColorOrder.RGB  # frames are BGR

    @classmethod
    def build(cls, model, spec: PreprocessSpec, interpolation: "str | Interpolation | None" = None
              ) -> "FastPreprocess | None":
        """The fast path for ``model`` and ``spec`` (with ``interpolation`` if given), or ``None``
        when it does not apply (letterbox/centre crop, several inputs, per-channel
        quantization, an input shape that differs from the spec): the stream then
        calls the reference rule itself.

        Raises:
            InputError: ``interpolation`` is not ``linear`` or ``area``.
        """
        if interpolation is not None:
            spec = dataclasses.replace(spec, interpolation=parse(Interpolation, interpolation, "interpolation"))
        inputs = tuple(getattr(model, "inputs", ()) or ())
        if len(inputs) != 1 or spec.resize is not ResizeMode.STRETCH:
            return None
        layout = input_layout(model) or spec.layout
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or tuple(shape[1:]) != spec.sample_shape(layout):
            return None
        table = _engine_table(spec, inputs[0])
        if table is None:
            return None
        return cls(spec, np.ascontiguousarray(table.reshape(256, 1, spec.channels)), layout)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """The input batch for one frame, or ``None`` when the frame is not HxWx3 uint8."""
        img = image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            return None
        cv2 = opencv()
        if self.gray:  # as the rule does it: colour first (a gray resize is not a resized gray)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        ih, iw = img.shape[:2]
        if (ih, iw) != (self.h, self.w):
            img = cv2.resize(img, (self.w, self.h), interpolation=self.spec.resize_flag((ih, iw)))
        if self.swap:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        x = cv2.LUT(img, self.table[:, :, 0] if self.gray else self.table)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.layout is Layout.NCHW:
            x = np.ascontiguousarray(x.transpose(2, 0, 1))
        return x[None]


def _engine_table(spec: PreprocessSpec, tensor) -> np.ndarray | None:
    """``spec.pixel_table()`` carried through what ``Model.run`` does to an input of ``tensor``'s dtype."""
    x = spec.pixel_table()  # (256, C) float32: the rule's values
    dtype = np.dtype(tensor.dtype)
    q = getattr(tensor, "quantization", None)
    if dtype == np.float32:
        return x
    if dtype.kind not in "iu":
        return None
    if spec.dtype == dtype.name:  # run() passes data already in the engine dtype through
        return x.astype(dtype)
    if q is None or len(q.scale) != 1:
        return None
    qs, zp = np.float32(q.scale[0]), np.float32((q.zero_point or (0,))[0])
    info = np.iinfo(dtype)
    x = np.divide(x, qs, dtype=np.float32)
    np.rint(x, out=x)
    if zp:
        x += zp
    return np.clip(x, np.float32(info.min), np.float32(info.max)).astype(dtype)
