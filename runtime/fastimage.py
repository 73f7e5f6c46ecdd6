"""The fused image path: a BGR uint8 frame -> a model input in one pass over the pixels, no float image.

:class:`FastPreprocess` is an optimised implementation of
:meth:`edgeship.preprocess.PreprocessSpec.to_input` followed by ``Model.run``'s
input quantization, for the common case: stretch resize, one image input,
NHWC or NCHW. Every per-pixel step after the resize -- colour order,
``* scale``, ``- mean``, ``/ std``, the spec's integer rounding and, for a
quantized input, the model's own quantization (``round(x / s) + zp``,
clipped) -- is a function of the 8-bit pixel value and the channel, so it is
folded into one 256-entry table per channel (:func:`engine_table`). The table
is then compiled once into the cheapest equivalent operation
(:class:`PixelMap`):

- ``affine``: the table is ``clip(p, lo, hi)``, possibly ``XOR 0x80`` (i.e.
  ``p - 128`` seen as int8): the common INT8 model fed ``pixel / 127.5 - 1``
  or ``pixel / 255`` with an input scale of the same step. Two or three
  SIMD passes in place (``cv2.threshold`` TRUNC, ``np.bitwise_xor``): ~2-10 us for a
  224x224x3 frame where ``cv2.LUT`` takes ~40-75 us. With ``tolerance=1``
  (``Model.predict``'s default) a table within one quantization step of such a
  map takes it too: MobileNetV2's ``pixel / 127.5 - 1`` at scale 1/127.5 is
  ``pixel - 128`` except on 17 values where float32 rounding ties go one step
  down; ``max_error`` says how far the compiled map is from the table;
- ``lut1``: one table for every channel (``cv2.LUT`` with a 1-channel table, half
  the cost of a per-channel one);
- ``lut``: one table per channel.

The resize uses the flag the rule uses (:meth:`PreprocessSpec.resize_flag`,
cached per frame size) and is skipped when the frame already has the model's
size; the colour swap happens on the small resized image (a swap commutes with
a per-channel resize). :meth:`FastPreprocess.write` writes the result into a
given buffer -- ``Model.predict`` passes the engine's own input tensor
(``Backend.invoke_into``), so the frame goes from the camera's array to the
interpreter in two passes, with no intermediate array and no ``set_tensor``
copy. With ``tolerance=0`` the result equals the reference rule bit for bit
(``tests/test_preprocess_rule.py``, ``tests/test_fast_predict.py``); with
``tolerance=1`` (what ``Model.predict`` and streams use unless the model was
loaded with ``exact_input=True``) it is within one quantization step of it.

The stream (:mod:`edgeship.runtime.stream`) resizes with
``interpolation="linear"`` by default, about 10x cheaper than ``INTER_AREA``
for a 640x480 -> 224x224 frame: that is the rule with
``PreprocessSpec(..., interpolation="linear")``, not another rule. Float
inputs of integer models (``Model.predict`` only takes this path for integer
inputs), letterbox/centre-crop specs, per-channel input quantization and
non-BGR frames keep the reference path.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import MissingDependencyError
from ..preprocess import ColorOrder, Interpolation, Layout, PreprocessSpec, ResizeMode, opencv
from ..vocab import parse
from .tasks.common import input_layout

__all__ = ["FastImage", "FastPreprocess", "PixelMap", "build", "engine_table"]


_CV2 = None  # the cv2 module once imported (opencv() sets its pixel limits first)


def _opencv():
    global _CV2  # noqa: PLW0603 - a cache of an import
    _CV2 = opencv()
    return _CV2


class PixelMap:
    """A 256-entry table per channel, compiled once into the cheapest equal operation on a frame's bytes."""

    __slots__ = ("kind", "lo", "hi", "xor", "table", "bytes", "max_error")

    def __init__(self, table: np.ndarray, tolerance: int = 0) -> None:
        """``tolerance``: how many quantization steps the compiled operation may differ from the table
        on any entry (0: equal; 1: lets a table with rounding ties take the ``affine`` path)."""
        t = np.asarray(table)  # (256, C)
        self.table = np.ascontiguousarray(t.reshape(256, 1, t.shape[1]))
        self.bytes = t.dtype.itemsize == 1  # int8/uint8: worked on in place as bytes
        self.lo = self.hi = self.xor = self.max_error = 0
        same = bool((t == t[:, :1]).all())
        if self.bytes and same:
            col = t[:, 0].view(np.uint8).astype(np.int32)
            p = np.arange(256, dtype=np.int32)
            for xor in (0, 0x80):
                # XOR 0x80 maps int8 onto uint8 monotonically (+128), so a step in c is a step of the table
                c = col ^ xor  # the clipped pixel value, if the table is affine
                lo, hi = int(c[0]), int(c[255])
                if lo > hi:
                    continue
                # the fewest passes first: no clip at an end where the table is within tolerance of it
                for lo_, hi_ in ((0, 255), (lo, 255), (0, hi), (lo, hi)):
                    err = int(np.abs(c - np.clip(p, lo_, hi_)).max())
                    if err <= max(0, int(tolerance)):
                        self.kind, self.lo, self.hi, self.xor, self.max_error = "affine", lo_, hi_, xor, err
                        return
        if same:
            self.kind, self.table = "lut1", np.ascontiguousarray(t[:, 0])
        else:
            self.kind = "lut"
        if self.bytes:
            self.table = self.table.view(np.uint8)  # LUT on the bytes: same values, 8U everywhere

    def apply(self, cv2, img: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = table[img]`` for a table of another dtype than bytes (``img``: HxWxC uint8; ``out``: HxWxC)."""
        cv2.LUT(img, self.table if self.kind == "lut" else self.table.reshape(256, 1), dst=out)

    def apply_in_place(self, cv2, u: np.ndarray) -> None:
        """``u[...] = table[u]`` for a table of bytes (``u``: HxWxC uint8, contiguous: the output's bytes)."""
        if self.kind == "lut":
            cv2.LUT(u, self.table, dst=u)
            return
        flat = u.reshape(u.shape[0], -1)  # one channel for OpenCV: a scalar then applies to every byte
        if self.kind == "lut1":
            cv2.LUT(flat, self.table, dst=flat)
            return
        if self.hi < 255:
            cv2.threshold(flat, self.hi, 255, cv2.THRESH_TRUNC, dst=flat)
        if self.lo > 0:
            cv2.max(flat, self.lo, dst=flat)
        if self.xor:
            np.bitwise_xor(flat, np.uint8(self.xor), out=flat)


class FastPreprocess:
    """Frame (BGR uint8) -> a model input batch of one, as the rule computes it. Build it with :meth:`build`."""

    def __init__(self, spec: PreprocessSpec, table: np.ndarray, layout: Layout, tolerance: int = 0) -> None:
        self.spec = spec
        self.h, self.w = spec.size
        self.layout = layout
        self.gray = spec.color is ColorOrder.GRAY
        self.swap = spec.color is ColorOrder.RGB  # frames are BGR
        self.map = PixelMap(table.reshape(256, -1), tolerance)
        self.dtype = np.dtype(table.dtype)
        self.channels = 1 if self.gray else 3
        self.shape = (1, self.channels, self.h, self.w) if layout is Layout.NCHW else (1, self.h, self.w, self.channels)
        self._flags: dict = {}  # frame (h, w) -> the rule's resize flag

    @property
    def table(self) -> np.ndarray:
        """The per-channel table as :class:`PixelMap` keeps it."""
        return self.map.table

    @classmethod
    def build(cls, model, spec: PreprocessSpec, interpolation: "str | Interpolation | None" = None, *,
              tolerance: int = 0) -> "FastPreprocess | None":
        """The fast path for ``model`` and ``spec`` (with ``interpolation`` if given), or ``None``
        when it does not apply (letterbox/centre crop, several inputs, per-channel
        quantization, an input shape that differs from the spec): the caller then
        uses the reference rule itself. ``tolerance``: as for :class:`PixelMap`
        (0: the result equals the rule bit for bit).

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
        table = engine_table(spec, inputs[0])
        if table is None:
            return None
        return cls(spec, table, layout, tolerance)

    # -- the two halves: outside the engine lock (resize), inside it (into the engine's buffer)

    def prepare(self, image: np.ndarray) -> np.ndarray | None:
        """The frame at the model's size (gray when the rule is gray), still BGR; ``None`` when it is not HxWx3 uint8."""
        img = image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            return None
        cv2 = _CV2 or _opencv()
        if self.gray:  # as the rule does it: colour first (a gray resize is not a resized gray)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        hw = img.shape[:2]
        if hw != (self.h, self.w):
            flag = self._flags.get(hw)
            if flag is None:
                flag = self._flags[hw] = self.spec.resize_flag(hw)
            img = cv2.resize(img, (self.w, self.h), interpolation=flag)
        return img

    def write(self, img: np.ndarray, out: np.ndarray) -> None:
        """Colour order and the table, from :meth:`prepare`'s ``img`` into ``out`` (``self.shape``, ``self.dtype``,
        contiguous: e.g. the engine's own input tensor)."""
        cv2 = _CV2 or _opencv()
        nchw = self.layout is Layout.NCHW
        dst = np.empty((self.h, self.w, self.channels), self.dtype) if nchw else out[0]
        if img.ndim == 2:
            img = img[:, :, None]
        if self.map.bytes:  # colour order straight into the destination's bytes; the table runs in place
            u = dst.view(np.uint8)
            if self.swap:
                cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=u)
            else:
                np.copyto(u, img)
            self.map.apply_in_place(cv2, u)
        else:
            self.map.apply(cv2, cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if self.swap else img, dst)
        if nchw:
            np.copyto(out[0], dst.transpose(2, 0, 1))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """The input batch for one frame (a new array), or ``None`` when the frame is not HxWx3 uint8."""
        img = self.prepare(image)
        if img is None:
            return None
        out = np.empty(self.shape, self.dtype)
        self.write(img, out)
        return out


class FastImage:
    """``Model.predict``'s fused path: ``prepare`` outside the engine lock, ``write`` into the engine's buffer.

    ``direct``: the engine takes ``write`` into its own input tensor (``Backend.invoke_into``) and the input
    needs no transpose; else :meth:`array` gives ``run()`` an already-quantized array.
    """

    def __init__(self, fast: FastPreprocess, direct: bool) -> None:
        self.fast = fast
        self.direct = direct
        self._usable = True

    def prepare(self, image) -> np.ndarray | None:
        """The resized frame, or ``None`` (use the reference path)."""
        if not self._usable:
            return None
        try:
            return self.fast.prepare(image)
        except MissingDependencyError:  # no OpenCV: the reference path may still do without it
            self._usable = False
            return None

    def writer(self, img: np.ndarray):
        """A callable filling the engine's input buffers (one, here) from ``img``."""
        write = self.fast.write
        return lambda buffers: write(img, buffers[0])

    def array(self, img: np.ndarray) -> np.ndarray:
        out = np.empty(self.fast.shape, self.fast.dtype)
        self.fast.write(img, out)
        return out

    def __call__(self, image) -> np.ndarray | None:
        """The input batch (a new array) for one frame, or ``None``."""
        img = self.prepare(image)
        return None if img is None else self.array(img)


def build(model, spec, *, direct: bool = False, tolerance: int = 0) -> FastImage | None:
    """The fast path for ``model`` (a Model) and ``spec``, or ``None`` when its input is not integer-quantized
    or the fast path does not apply. ``tolerance``: quantization steps the result may differ from the
    rule by (:class:`PixelMap`)."""
    inputs = tuple(model.inputs)
    if len(inputs) != 1 or np.dtype(inputs[0].dtype).kind not in "iu" or inputs[0].quantization is None:
        return None
    fast = FastPreprocess.build(model, spec, tolerance=tolerance)
    return FastImage(fast, direct) if fast is not None else None


def engine_table(spec: PreprocessSpec, tensor) -> np.ndarray | None:
    """``spec.pixel_table()`` carried through what ``Model.run`` does to an input of ``tensor``'s dtype:
    (256, C) in the engine dtype, or ``None`` when no table can express it."""
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
