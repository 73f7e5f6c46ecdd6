"""The I/O plan: how user arrays become engine tensors and back, computed once at load.

For each input: the expected shape in the source layout, the NHWC <-> NCHW
transpose to the artifact's layout, and the quantization with the model's own
scale and zero point (``clip(round(x / scale) + zero_point)``); for each
output the inverse (dequantize, transpose back). Public tensor names come from
the manifest (:func:`public_order`), never from the engine's per-export names.

Non-finite inputs: a float array fed to an integer-quantized input (an int8/
uint8/int16 engine tensor, or a float input the model quantizes with its first
op: TFLite ``QUANTIZE``, ONNX ``QuantizeLinear``, as in INT8 QDQ ONNX files) is
checked for NaN/Inf before it runs (``check_finite``, default on): rounding and
clipping would otherwise turn NaN into an arbitrary integer and return a
plausible-looking but meaningless result. The check is one vectorised pass,
``np.isfinite(x).all()`` (about 14 us alone for a 224x224x3 float32 image, 2 us
for a tiny input; in ``Model.run`` of MobileNetV2-224 INT8 at 2 threads, p50 1.015x
and min 1.010x of the same run with ``check_finite=False``: about 20 us of 2 ms),
only for float arrays fed to quantized inputs, and names the input in an
:class:`~edgeship.errors.InputError`.
Float models need no check: NaN propagates to their outputs where it is visible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .backends.base import RawTensor

__all__ = ["InputPlan", "OutputPlan", "QuantParams", "Quantization", "TensorSpec", "TRANSPOSE", "axis_shape",
           "public_order", "quantization_of"]

TRANSPOSE = {("NCHW", "NHWC"): (0, 2, 3, 1), ("NHWC", "NCHW"): (0, 3, 1, 2)}  # (from, to) -> axes


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale``.

    ``scale``/``zero_point`` hold one value (per tensor) or one per slice along
    ``axis`` (per channel).
    """

    scale: tuple
    zero_point: tuple
    axis: int = 0


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as :meth:`Model.run` sees it.

    Attributes:
      name: The name used in ``run()``'s dicts (the source model's tensor name
        when the manifest records it, else the engine's).
      shape: The shape in the source layout; ``None`` for dynamic dimensions
        (``run`` takes any batch size whatever the first dimension says).
      dtype: The dtype the engine computes in (``int8`` for a full INT8 model);
        ``run`` takes and returns float32 regardless (see :meth:`Model.run`).
      quantization: The engine tensor's quantization, or ``None``.
    """

    name: str
    shape: tuple
    dtype: np.dtype
    quantization: Quantization | None = None


# -- per-tensor plans (everything computed once, at load) -----------------------------


class InputPlan:
    """One input: checked, cast or quantized, transposed (:meth:`prepare`)."""

    __slots__ = ("name", "sample_shape", "rank", "has_dynamic", "dtype", "to_engine", "quant", "spec",
                 "check_finite")

    def __init__(self, name: str, raw: RawTensor, perm: tuple | None, quant_axis_shape: tuple | None, *,
                 check_finite: bool = True) -> None:
        self.name = name
        self.dtype = np.dtype(raw.dtype)
        self.to_engine = perm  # transpose source->engine, or None
        shape = tuple(raw.shape)
        if perm is not None:
            inverse = tuple(int(i) for i in np.argsort(perm))
            shape = tuple(shape[i] for i in inverse)
        self.rank = len(shape)
        self.sample_shape = shape[1:]
        self.has_dynamic = any(d is None for d in self.sample_shape)
        self.quant = QuantParams(raw, quant_axis_shape) if raw.scale and self.dtype.kind in "iu" else None
        self.spec = TensorSpec(name, shape, self.dtype, quantization_of(raw))
        # NaN/Inf would be quantized to arbitrary integers: by us (integer input) or by the model's
        # first op (a float input it quantizes itself); float models show NaN in their outputs.
        self.check_finite = bool(check_finite) and (self.quant is not None or raw.quantized_inside)

    def expected(self) -> str:
        dims = ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                         for i, d in enumerate((None,) + self.sample_shape))
        return f"({dims})"

    def prepare(self, a: Any) -> np.ndarray:
        """One user array -> the engine array (checked, cast/quantized, transposed)."""
        if type(a) is not np.ndarray:
            try:
                a = np.asarray(a)
            except (ValueError, TypeError) as exc:
                raise InputError(f"input {self.name!r} cannot be read as an array: {exc}") from None
        shape = a.shape
        if len(shape) != self.rank or (
            shape[1:] != self.sample_shape if not self.has_dynamic
            else any(d is not None and d != s for d, s in zip(self.sample_shape, shape[1:]))
        ):
            hint = "; add a batch axis (x[None])" if len(shape) == self.rank - 1 else ""
            raise InputError(f"input {self.name!r} expects an array shaped {self.expected()} "
                             f"(N: any batch size), got {shape}{hint}")
        if shape[0] == 0:
            raise InputError(f"input {self.name!r} got an empty batch (shape {shape})")
        if self.check_finite and a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"input {self.name!r} contains NaN or Inf; this model is integer-quantized, so they "
                             "would be quantized to arbitrary values and give a meaningless result "
                             "(pass check_finite=False to load() to skip this check)")
        if a.dtype != self.dtype:
            if a.dtype.kind not in "fiu":
                raise InputError(f"input {self.name!r} takes numbers (float32), got dtype {a.dtype}")
            if self.quant is None:
                a = a.astype(self.dtype)
            elif self.to_engine is not None:
                return self.quant.quantize(a.transpose(self.to_engine))
            else:
                return self.quant.quantize(a)
        if self.to_engine is not None:
            return np.ascontiguousarray(a.transpose(self.to_engine))
        return a


class OutputPlan:
    """One output: dequantized or cast to float32, transposed back (:meth:`finish`)."""

    __slots__ = ("name", "to_source", "quant", "cast", "spec")

    def __init__(self, name: str, raw: RawTensor, perm: tuple | None, quant_axis_shape: tuple | None) -> None:
        self.name = name
        self.to_source = perm  # transpose engine->source, or None
        dtype = np.dtype(raw.dtype)
        self.quant = QuantParams(raw, quant_axis_shape) if raw.scale and dtype.kind in "iu" else None
        self.cast = dtype != np.float32
        shape = tuple(raw.shape)
        if perm is not None:
            shape = tuple(shape[i] for i in perm)
        self.spec = TensorSpec(name, shape, dtype, quantization_of(raw))

    def finish(self, q: np.ndarray) -> np.ndarray:
        if self.quant is not None:
            a = self.quant.dequantize(q)
        elif self.cast:
            a = q.astype(np.float32)
        else:
            a = q
        if self.to_source is not None:
            a = np.ascontiguousarray(a.transpose(self.to_source))
        return a

    def finish_into(self, q: np.ndarray, out) -> np.ndarray:
        """:meth:`finish` written into the caller's ``out`` (``Model.run(x, out=...)``), with the same float32
        operations (equal values); no new array unless a layout transpose is needed.

        Raises:
          InputError: ``out`` is not a writable float32 array of the result's shape.
        """
        shape = q.shape if self.to_source is None else tuple(q.shape[i] for i in self.to_source)
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape or not out.flags.writeable:
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise InputError(f"out[{self.name!r}] must be a writable float32 array shaped {shape}, got {got}")
        if self.to_source is not None:
            np.copyto(out, self.finish(q))
        elif self.quant is not None:
            qp = self.quant
            if qp.zp_nonzero:
                np.subtract(q, qp.zero_point, out=out, dtype=np.float32)
                np.multiply(out, qp.scale, out=out)
            else:
                np.multiply(q, qp.scale, out=out, dtype=np.float32)
        else:
            np.copyto(out, q, casting="unsafe")
        return out


class QuantParams:
    """Affine quantization prepared for numpy (per tensor or broadcast per channel)."""

    __slots__ = ("scale", "zero_point", "zp_nonzero", "lo", "hi", "dtype")

    def __init__(self, raw: RawTensor, axis_shape: tuple | None) -> None:
        scale = np.asarray(raw.scale, np.float32)
        zp = np.asarray(raw.zero_point or (0,) * len(raw.scale), np.float32)
        if scale.size > 1 and axis_shape is not None:  # per channel along raw.axis (engine layout)
            scale, zp = scale.reshape(axis_shape), zp.reshape(axis_shape)
        elif scale.size == 1:
            scale, zp = np.float32(scale[0]), np.float32(zp[0])
        self.scale, self.zero_point = scale, zp
        self.zp_nonzero = bool(np.any(zp != 0))
        info = np.iinfo(raw.dtype)
        self.lo, self.hi, self.dtype = np.float32(info.min), np.float32(info.max), np.dtype(raw.dtype)

    def quantize(self, a: np.ndarray) -> np.ndarray:
        """``clip(round(a / scale) + zero_point)`` in the tensor's integer dtype (contiguous)."""
        x = np.divide(a, self.scale, dtype=np.float32, order="C")
        np.rint(x, out=x)
        if self.zp_nonzero:
            np.add(x, self.zero_point, out=x)
        np.clip(x, self.lo, self.hi, out=x)
        return x.astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        x = q.astype(np.float32)
        if self.zp_nonzero:
            np.subtract(x, self.zero_point, out=x)
        np.multiply(x, self.scale, out=x)
        return x


def quantization_of(raw: RawTensor) -> Quantization | None:
    if not raw.scale:
        return None
    return Quantization(tuple(raw.scale), tuple(raw.zero_point or (0,) * len(raw.scale)), int(raw.axis))


def axis_shape(raw: RawTensor) -> tuple | None:
    if len(raw.scale) <= 1 or not raw.shape:
        return None
    shape = [1] * len(raw.shape)
    shape[raw.axis] = -1
    return tuple(shape)


# -- public names: from the manifest, matched to the engine's tensors ------------------------------


def public_order(raw: list, art_entries, src_entries, kind: str, path: str) -> list:
    """[(engine position, public name)] in the public (manifest/source) order.

    Manifest artifact entries are matched to engine tensors by name (by
    position when the names differ); the public name is the source tensor at
    the same position when ``source`` lists as many, else the artifact's.
    """
    n = len(raw)
    engine_names = [t.name for t in raw]
    if art_entries is None:
        return dedupe(list(range(n)), engine_names, engine_names)
    if len(art_entries) != n:
        raise BundleError(f"the manifest lists {len(art_entries)} {kind}s for {os.path.basename(path)} "
                          f"but the file has {n}; the bundle is inconsistent: re-convert it")
    art_names = [str(e.get("name", "")) for e in art_entries]
    if len(set(engine_names)) == n and sorted(art_names) == sorted(engine_names):
        order = [engine_names.index(a) for a in art_names]
    else:
        order = list(range(n))
    if src_entries and len(src_entries) == n:
        public = [str(e.get("name", "")) for e in src_entries]
    else:
        public = art_names
    if len(set(public)) != n or not all(public):
        public = art_names if len(set(art_names)) == n and all(art_names) else [engine_names[i] for i in order]
    return dedupe(order, public, engine_names)


def dedupe(order, public, engine_names) -> list:
    if len(set(public)) != len(public) or not all(public):
        public = [engine_names[i] or f"tensor{i}" for i in order]
        if len(set(public)) != len(public):
            public = [f"{name}#{j}" for j, name in enumerate(public)]
    return list(zip(order, public))
