"""``load()`` and ``Model``: run a bundle or a bare model file on a device.

Everything user-facing lives here: choosing the artifact and the backend,
float I/O (quantizing INT8/UINT8/INT16 inputs and dequantizing outputs with
the model's own parameters), layouts, batching, preprocessing, labels and the
lock that makes one model usable from several threads. Backends only run raw
tensors (see :mod:`edgeship.runtime.backends`).

Example::

    import edgeship.runtime as rt

    with rt.load("artifacts/digits") as model:
        print(model.info.backend, model.inputs)
        for c in model.classify(frame, top_k=3):
            print(c.label, c.score)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import bundle as _bundle
from .. import manifest as _manifest
from ..errors import (
    BackendUnavailableError,
    BundleError,
    EdgeshipError,
    FallbackError,
    InputError,
    ModelFormatError,
    UnsupportedModelError,
)
from . import tasks as _tasks
from . import backends as _backends
from .backends import ExecutionInfo, RawTensor

_log = logging.getLogger("edgeship.runtime")

FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8")
_EXTENSIONS = {".tflite": "tflite", ".onnx": "onnx"}
_INSTALL_HINT = {
    "tflite": "install a TFLite interpreter: `pip install ai-edge-litert` (or tflite-runtime)",
    "onnx": 'install ONNX Runtime: `pip install "edgeship[onnx]"`',
}
# Precision preference per device kind (lower is better).
_PRECISION_RANK = {
    "cpu": {"int8": 0, "dynamic": 1, "fp16": 2, "fp32": 3, "int16x8": 4},
    "gpu": {"fp16": 0, "fp32": 1, "dynamic": 2, "int8": 3, "int16x8": 4},
    "edgetpu": {"int8": 0, "int16x8": 1, "dynamic": 2, "fp16": 3, "fp32": 4},
}
_TRANSPOSE = {("NCHW", "NHWC"): (0, 2, 3, 1), ("NHWC", "NCHW"): (0, 3, 1, 2)}  # (from, to) -> axes


from ..errors import ModelClosedError, ModelNotFoundError  # noqa: E402  (re-exported)


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


class _InPlan:
    __slots__ = ("name", "sample_shape", "rank", "has_dynamic", "dtype", "to_engine", "quant", "spec")

    def __init__(self, name: str, raw: RawTensor, perm: tuple | None, quant_axis_shape: tuple | None) -> None:
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
        self.quant = _QuantParams(raw, quant_axis_shape) if raw.scale and self.dtype.kind in "iu" else None
        self.spec = TensorSpec(name, shape, self.dtype, _quantization(raw))

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


class _OutPlan:
    __slots__ = ("name", "to_source", "quant", "cast", "spec")

    def __init__(self, name: str, raw: RawTensor, perm: tuple | None, quant_axis_shape: tuple | None) -> None:
        self.name = name
        self.to_source = perm  # transpose engine->source, or None
        dtype = np.dtype(raw.dtype)
        self.quant = _QuantParams(raw, quant_axis_shape) if raw.scale and dtype.kind in "iu" else None
        self.cast = dtype != np.float32
        shape = tuple(raw.shape)
        if perm is not None:
            shape = tuple(shape[i] for i in perm)
        self.spec = TensorSpec(name, shape, dtype, _quantization(raw))

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


class _QuantParams:
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


def _quantization(raw: RawTensor) -> Quantization | None:
    if not raw.scale:
        return None
    return Quantization(tuple(raw.scale), tuple(raw.zero_point or (0,) * len(raw.scale)), int(raw.axis))


def _axis_shape(raw: RawTensor) -> tuple | None:
    if len(raw.scale) <= 1 or not raw.shape:
        return None
    shape = [1] * len(raw.shape)
    shape[raw.axis] = -1
    return tuple(shape)


# -- the model -------------------------------------------------------------------------


class Model:
    """A loaded model: float arrays in, float arrays out, in the source layout.

    Create it with :func:`load`. A ``Model`` owns one engine instance (one
    TFLite interpreter or one ONNX Runtime session); :meth:`close` it or use it
    as a context manager.

    Thread safety: one TFLite interpreter must not run two calls at once, so
    ``run``/``predict``/``classify`` hold a lock around the engine call
    (setting inputs, invoking, reading outputs) while preparing inputs and
    post-processing outputs outside it. Calls from several threads are
    therefore safe but run one at a time on the engine; for parallel
    throughput load one ``Model`` per thread. Backends that declare
    ``thread_safe = True`` (ONNX Runtime) skip the lock.
    """

    def __init__(self, backend: _backends.Backend, *, path: str, manifest: dict | None = None,
                 artifact: dict | None = None) -> None:
        """Use :func:`load`; this wraps an already opened backend."""
        self._backend = backend
        self._path = path
        self._manifest = manifest
        self._artifact = artifact
        self._info = backend.info
        self._lock = contextlib.nullcontext() if getattr(backend, "thread_safe", False) else threading.Lock()
        src = (manifest or {}).get("source") or {}
        art = artifact or {}
        self._source_layout = src.get("layout") or art.get("layout") or "other"
        art_layout = art.get("layout") or self._source_layout
        in_perm = _TRANSPOSE.get((self._source_layout, art_layout))
        out_perm = _TRANSPOSE.get((art_layout, self._source_layout))
        in_order = _public_order(backend.inputs, art.get("inputs") if artifact else None,
                                 src.get("inputs"), "input", path)
        out_order = _public_order(backend.outputs, art.get("outputs") if artifact else None,
                                  src.get("outputs"), "output", path)
        self._in_engine_pos = tuple(i for i, _ in in_order)
        in_plans_engine: list = [None] * len(backend.inputs)
        for i, name in in_order:
            raw = backend.inputs[i]
            in_plans_engine[i] = _InPlan(name, raw, in_perm if len(raw.shape) == 4 else None, _axis_shape(raw))
        self._in_plans = tuple(in_plans_engine)  # engine order (what backend.invoke takes)
        self._in_by_name = {p.name: p for p in self._in_plans}
        self._single = len(self._in_plans) == 1
        self._out_plans = tuple(
            (i, _OutPlan(name, backend.outputs[i], out_perm if len(backend.outputs[i].shape) == 4 else None,
                         _axis_shape(backend.outputs[i])))
            for i, name in out_order
        )  # public order, each with its engine position
        self._inputs = tuple(in_plans_engine[i].spec for i, _ in in_order)
        self._outputs = tuple(p.spec for _, p in self._out_plans)
        first = backend.inputs[0].shape if backend.inputs else ()
        self._dynamic_batch = bool(first) and all(t.shape and t.shape[0] is None for t in backend.inputs)
        cur = getattr(backend, "batch", None)
        self._batch = cur if cur is not None else (first[0] if first else None)
        self._fixed_batch = None if self._dynamic_batch else self._batch
        self._labels = tuple((manifest or {}).get("labels") or ()) or None
        self._spec = None  # preprocessing spec, built on first predict()
        self._default_spec = False

    # -- properties ----------------------------------------------------------------------

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs ``run`` takes, in order (source-facing names and layout)."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs ``run`` returns, in order."""
        return self._outputs

    @property
    def info(self) -> ExecutionInfo:
        """Which backend, engine version, device/delegate and threads run the model, and what was skipped."""
        return self._info

    @property
    def manifest(self) -> dict | None:
        """The bundle manifest (treat as read-only), or ``None`` for a bare model file."""
        return self._manifest

    @property
    def artifact(self) -> dict | None:
        """The manifest entry of the artifact being run, or ``None`` for a bare file."""
        return self._artifact

    @property
    def path(self) -> str:
        """The model file being run."""
        return self._path

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Class labels from the manifest, or ``None``."""
        return self._labels

    @property
    def closed(self) -> bool:
        return self._backend is None

    # -- running -----------------------------------------------------------------------

    def run(self, x) -> dict[str, np.ndarray]:
        """Run a batch through the model.

        Args:
          x: For a single-input model, an array shaped like ``inputs[0].shape``
            with any batch size N >= 1; for any model, a dict mapping every
            input name to such an array (all with the same N). Arrays are in
            the source model's layout (``manifest["source"]["layout"]``; when
            the artifact's layout differs, 4-D tensors are transposed NHWC <->
            NCHW here) and float. Inputs of a quantized model are quantized
            with its own scale and zero point (rounded, clipped). An array
            already in the engine tensor's integer dtype (e.g. ``int8`` for an
            INT8-I/O model, see ``inputs[i].dtype``) is passed through
            unquantized, as already-quantized data.

        Returns:
          A dict mapping each output name to a float32 array (dequantized with
          the model's parameters, source layout, batch N), in ``outputs`` order.

        Batching: if N equals the batch the engine is allocated for, it is
        invoked once; else, if the model's batch dimension is dynamic, the
        engine is resized to N (and stays so until another N comes); else the
        samples are run in chunks of the model's batch and stacked.

        Raises:
          InputError: ``x`` has missing/unknown names or a wrong shape/dtype
            (the message names the expected shape).
          ModelClosedError: the model was closed.
        """
        backend = self._backend
        if backend is None:
            raise ModelClosedError(f"model {self._path} is closed; load it again to run it")
        if self._single and not isinstance(x, Mapping):
            raws = [self._in_plans[0].prepare(x)]
        else:
            raws = self._from_mapping(x)
        n = raws[0].shape[0]
        if len(raws) > 1 and any(r.shape[0] != n for r in raws):
            raise InputError("all inputs must have the same batch size, got "
                             + ", ".join(f"{p.name}: {r.shape[0]}" for p, r in zip(self._in_plans, raws)))
        try:
            with self._lock:  # the batch check belongs inside: another thread may resize
                if n == self._batch:
                    outs = backend.invoke(raws)
                else:
                    outs = self._run_other_batch(backend, raws, n)
        except ValueError as exc:  # the engine refused a shape it could not check up front
            if isinstance(exc, EdgeshipError):
                raise
            raise InputError(f"the engine rejected the input: {exc}; expected "
                             + ", ".join(f"{p.name} {p.expected()}" for p in self._in_plans)) from None
        return {p.name: p.finish(outs[i]) for i, p in self._out_plans}

    def _from_mapping(self, x) -> list:
        if not isinstance(x, Mapping):
            raise InputError(f"this model has {len(self._in_plans)} inputs; pass a dict "
                             f"{{{', '.join(repr(p.name) for p in self._in_plans)}: array}}")
        unknown = [k for k in x if k not in self._in_by_name]
        missing = [p.name for p in self._in_plans if p.name not in x]
        if unknown or missing:
            raise InputError(f"input names do not match the model: missing {missing}, unknown {unknown}; "
                             f"expected {[s.name for s in self._inputs]}")
        return [p.prepare(x[p.name]) for p in self._in_plans]

    def _run_other_batch(self, backend, raws: list, n: int) -> list:
        """Called with the lock held."""
        if self._dynamic_batch and backend.resize_batch(n):
            self._batch = n
            return backend.invoke(raws)
        step = self._fixed_batch or 1
        if n % step:
            raise InputError(f"this model runs batches of exactly {step} (its batch size is fixed); "
                             f"got {n} samples, which is not a multiple of {step}")
        if self._batch != step:  # a dynamic model whose resize failed: go back to its allocation
            if not backend.resize_batch(step):
                raise InputError(f"the engine cannot run a batch of {n} nor of {step}")
            self._batch = step
        parts = [backend.invoke([r[i:i + step] for r in raws]) for i in range(0, n, step)]
        return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(parts[0]))]

    def predict(self, image) -> dict[str, np.ndarray]:
        """Preprocess one image as the manifest says, and run it.

        Args:
          image: An ``HxWxC`` uint8 array in OpenCV's BGR order (or ``HxW``
            gray), or the path of an image file (decoded with OpenCV).

        Returns:
          ``run()``'s output for that one sample (each array has batch 1).

        Preprocessing is ``manifest["preprocessing"]``. Without one (a bare
        model file, or a bundle without a spec) it is
        :meth:`PreprocessSpec.default_for` the first input's shape and layout
        (read from the shape for a bare file: ``(None, 3, H, W)`` is NCHW):
        stretch to its height and width, gray for 1 channel or RGB for 3,
        ``value = pixel / 255``. The image becomes the input through
        :meth:`PreprocessSpec.to_input`, the one rule.

        Raises:
          InputError: the image cannot be read or is not an image, or the
            model's input is not image-shaped and there is no spec.
          MissingDependencyError: OpenCV is needed (to decode, resize or
            convert colours) and is not installed.
          ModelClosedError: the model was closed.
        """
        from .. import preprocess as _pre  # noqa: PLC0415

        if self._backend is None:
            raise ModelClosedError(f"model {self._path} is closed; load it again to run it")
        spec = self._spec or self._preprocess_spec()
        if isinstance(image, (str, os.PathLike)):
            image = _pre.read_image(os.fspath(image))
        elif not isinstance(image, np.ndarray):
            raise InputError(f"predict() takes an image array (HxWxC, BGR uint8) or a path, got {type(image).__name__}")
        if len(self._in_plans) != 1:
            raise InputError(f"predict() needs a single-input model; this one has {len(self._in_plans)} inputs: use run()")
        return self.run(_tasks.prepare_input(self, spec, image))

    def _preprocess_spec(self):
        self._spec = _tasks.preprocess_spec(self)  # the manifest's, else the default for the input's shape and layout
        self._default_spec = not (self._manifest or {}).get("preprocessing")
        return self._spec

    def classify(self, image, top_k: int = 5, threshold: float = 0.0) -> tuple[_tasks.Class, ...]:
        """Classify one image: :meth:`predict`, then :func:`~edgeship.runtime.adapters.get_classes`.

        The scores are the first output of the model. Softmax is applied only
        when they are not already probabilities (all in [0, 1], summing to 1).

        Args:
          image: As for :meth:`predict`.
          top_k: The most classes to return.
          threshold: The smallest probability to return.

        Returns:
          A tuple of ``Class(id, score, label)``, best first; ``label`` comes
          from the manifest's labels (``None`` without labels).

        Raises:
          InputError: as for :meth:`predict`, or ``top_k``/``threshold`` are invalid.
          ModelClosedError: the model was closed.
        """
        out = self.predict(image)
        scores = out[self._outputs[0].name][0]
        return _tasks.get_classes(scores, top_k=top_k, threshold=threshold, labels=self._labels)

    def detect(self, image, threshold: float = 0.5, *, iou: float = 0.45, max_detections: int = 100,
               format: str = "auto", anchors=None) -> tuple:
        """Detect objects in one image: preprocessing, run, box decoding and NMS.

        A thin wrapper over :func:`edgeship.runtime.detect.detect` (SSD- and
        YOLO-style outputs; ``format="auto"`` tells them apart by shape).

        Args:
          image: HxWx3 BGR uint8 image (as OpenCV gives it) or an image path.
          threshold: Minimum score of a detection.
          iou: NMS overlap above which the weaker box of a class is dropped.
          max_detections: Most detections returned.
          format: ``auto``, ``ssd``, ``ssd_raw``, ``yolo``, ``yolov5`` or ``yolov8``.
          anchors: ``[A, 4]`` anchors for ``ssd_raw`` outputs.

        Returns:
          A tuple of ``Detection(bbox, id, score, label)``, best first, boxes in
          the image's pixels.

        Raises:
          InputError: the image is not an image or the outputs are not a known layout.
          ModelClosedError: the model was closed.
        """
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            from edgeship.preprocess import read_image  # noqa: PLC0415

            image = read_image(str(image))
        return _tasks.detect(self, image, threshold, iou=iou, max_detections=max_detections, format=format,
                             anchors=anchors)

    # -- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        """Release the engine. Calling it again does nothing."""
        backend, self._backend = self._backend, None
        if backend is not None:
            with self._lock:
                backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._backend is None else self._info.backend
        ins = ", ".join(f"{s.name}{tuple(s.shape)}" for s in self._inputs)
        return f"<edgeship.runtime.Model {os.path.basename(self._path)} [{state}] inputs: {ins}>"


def _public_order(raw: list, art_entries, src_entries, kind: str, path: str) -> list:
    """[(engine position, public name)] in the public (manifest/source) order.

    Manifest artifact entries are matched to engine tensors by name (by
    position when the names differ); the public name is the source tensor at
    the same position when ``source`` lists as many, else the artifact's.
    """
    n = len(raw)
    engine_names = [t.name for t in raw]
    if art_entries is None:
        return _dedupe(list(range(n)), engine_names, engine_names)
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
    return _dedupe(order, public, engine_names)


def _dedupe(order, public, engine_names) -> list:
    if len(set(public)) != len(public) or not all(public):
        public = [engine_names[i] or f"tensor{i}" for i in order]
        if len(set(public)) != len(public):
            public = [f"{name}#{j}" for j, name in enumerate(public)]
    return list(zip(order, public))


# -- load ---------------------------------------------------------------------------------


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def _sniff_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from None
    if head[4:8] == b"TFL3":
        return "tflite"
    raise UnsupportedModelError(f"{path} is neither a bundle folder nor a .tflite/.onnx file; "
                                "pass a bundle written by `edgeship convert` or a model file")


_AVAILABLE: dict = {}


def _backend_class(entry) -> tuple[type | None, str]:
    """(class, "") when ``entry`` can run here, else (None, reason). Cached per process."""
    hit = _AVAILABLE.get(entry.name)
    if hit is not None:
        return hit
    try:
        cls = entry.loader()
        ok, why = cls.available()
        res = (cls, "") if ok else (None, why or f"{entry.name}: not available")
    except ImportError as exc:
        res = (None, f"{entry.name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken backend must not break the others
        res = (None, f"{entry.name}: {type(exc).__name__}: {exc}")
    _AVAILABLE[entry.name] = res
    return res


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every registered backend -> (usable here, why not), best first per format."""
    return {e.name: ((c := _backend_class(e))[0] is not None, c[1]) for e in _backends.registered()}


def _format_available(fmt: str) -> bool:
    return any(_backend_class(e)[0] is not None for e in _backends.registered(fmt))


def _is_edgetpu(art: dict) -> bool:
    return "edgetpu" in (art.get("targets") or ()) or "_edgetpu" in art["file"]


def _device_kind(device: str | None) -> str:
    if device is None or device == "cpu":
        return "cpu"
    return "edgetpu" if device.startswith("edgetpu") else ("gpu" if device == "gpu" else "cpu")


def choose_artifact(manifest: dict, artifact: str | None = None, *, backend: str | None = None,
                    device: str | None = None) -> dict:
    """The manifest entry :func:`load` runs.

    ``artifact`` is a file name of the bundle, a format (``"tflite"``,
    ``"onnx"``) or a precision (``"int8"``, ``"fp16"`` ...). Among the
    candidates the default rule is, in order:

    1. a format some installed backend can run (``backend=`` restricts to its formats);
    2. TFLite before ONNX;
    3. on ``device="edgetpu"`` Edge TPU-compiled artifacts first, elsewhere last;
    4. precision: on CPU int8, dynamic, fp16, fp32, int16x8; on GPU fp16 first;
    5. manifest order.

    Raises:
      BundleError: no artifact matches ``artifact``.
      InputError: ``backend`` cannot run any artifact of the bundle.
    """
    arts = list(manifest["artifacts"])
    files = [a["file"] for a in arts]
    if artifact is not None:
        if artifact in files:
            return arts[files.index(artifact)]
        if artifact in FORMATS:
            arts = [a for a in arts if a["format"] == artifact]
        elif artifact in PRECISIONS:
            arts = [a for a in arts if a["precision"] == artifact]
        else:
            raise BundleError(f"the bundle has no artifact {artifact!r}; pass one of its files {files}, "
                              f"a format {list(FORMATS)} or a precision {list(PRECISIONS)}")
        if not arts:
            raise BundleError(f"the bundle has no {artifact} artifact; it has {files}")
    if backend is not None:
        formats = _backend_entry(backend).formats
        matching = [a for a in arts if a["format"] in formats]
        if not matching:
            raise InputError(f"backend {backend!r} runs {', '.join(formats)} files, but the chosen artifacts are "
                             f"{[a['file'] for a in arts]}")
        arts = matching
    kind = _device_kind(device)
    ranks = _PRECISION_RANK[kind]

    def key(item):
        i, a = item
        return (0 if _format_available(a["format"]) else 1,
                FORMATS.index(a["format"]) if a["format"] in FORMATS else len(FORMATS),
                (0 if _is_edgetpu(a) else 1) if kind == "edgetpu" else (1 if _is_edgetpu(a) else 0),
                ranks.get(a["precision"], 9), i)

    return min(enumerate(arts), key=key)[1]


def _backend_entry(name: str):
    try:
        return _backends.get(name)
    except KeyError:
        known = [e.name for e in _backends.registered()]
        raise InputError(f"unknown backend {name!r}; registered backends are {known}") from None


def _open_backend(path: str, fmt: str, *, backend: str | None, device: str | None, threads: int | None,
                  strict: bool, delegates: list | None = None) -> _backends.Backend:
    entries = _backends.registered(fmt)
    if not entries:
        raise UnsupportedModelError(f"no registered backend runs {fmt} files ({path})")
    skipped: list = []
    fallback = False
    if backend is not None:
        forced = _backend_entry(backend)
        if fmt not in forced.formats:
            raise InputError(f"backend {backend!r} runs {', '.join(forced.formats)} files, not {fmt} ({path})")
        entries = [forced] + [e for e in entries if e is not forced]
    options = {"device": device} if device is not None else None
    delegate_skip: list = []
    if delegates:
        if fmt != "tflite":
            why = (f"delegate {', '.join(os.path.basename(d[0]) for d in delegates)}: TFLite delegates do not "
                   f"apply to {fmt} files ({os.path.basename(path)}); use device= for ONNX Runtime providers")
            if strict:
                raise FallbackError(f"{why}; strict=True forbids running without it")
            _log.warning("%s; running without it", why)
            delegate_skip = [why]
        else:
            options = dict(options or {}, delegates=list(delegates))
    for entry in entries:
        cls, why = _backend_class(entry)
        if cls is not None:
            try:
                be = cls(path, threads=threads, strict=strict, options=options)
            except FallbackError:
                raise
            except BackendUnavailableError as exc:
                cls, why = None, str(exc)
        if cls is None:
            skipped.append(why)
            if entry.name == backend:
                if strict:
                    raise FallbackError(f"backend {backend!r} was requested with strict=True but cannot run "
                                        f"here: {why}")
                fallback = True
            continue
        if fallback:
            _log.warning("backend %r is not usable (%s); running %s with %r instead",
                         backend, skipped[0], os.path.basename(path), entry.name)
        be.info.skipped[:0] = delegate_skip + skipped
        be.info.fallback = be.info.fallback or fallback or bool(delegate_skip)
        return be
    raise BackendUnavailableError(f"no backend can run {path} here: {'; '.join(skipped)}; {_INSTALL_HINT.get(fmt, '')}")


def load(path, *, artifact: str | None = None, backend: str | None = None, device: str | None = None,
         threads: int | None = None, strict: bool = False, isolate: bool = False, delegate=None) -> Model:
    """Open a bundle folder or a bare ``.tflite``/``.onnx`` file for inference.

    For a bundle, ``manifest.json`` is read and checked against the schema,
    the artifact to run is chosen (see :func:`choose_artifact`: by default the
    INT8 TFLite file when a TFLite interpreter is installed, else ONNX), and
    its size and sha256 are verified before any engine reads it.

    TFLite files run on the first available of ``ai_edge_litert`` ("litert"),
    ``tflite_runtime`` ("tflite_runtime") and ``tensorflow.lite``
    ("tensorflow.lite"), each imported only when tried; ONNX files on
    ONNX Runtime ("onnxruntime"). :attr:`Model.info` reports what runs the
    model and why anything else was skipped.

    Args:
      path: A bundle folder (with ``manifest.json``) or a model file.
      artifact: Bundle only: a file name, a format (``"tflite"``/``"onnx"``) or
        a precision (``"int8"``, ``"fp16"`` ...) to run instead of the default.
      backend: A registered backend name (``"litert"``, ``"tflite_runtime"``,
        ``"tensorflow.lite"``, ``"onnxruntime"``) to use first. If it cannot
        run here, the next one for the format is used, with one logged
        warning and ``info.fallback`` set (an error with ``strict``).
      device: ``None``/``"cpu"``, ``"gpu"``, ``"edgetpu"`` or
        ``"edgetpu:usb:0"``...; the backend loads the matching delegate or
        execution provider, falling back to the CPU (warning) unless ``strict``.
      threads: CPU threads for the engine (XNNPACK ``num_threads``). Default:
        the CPUs this process may use, at most 4.
      strict: Turn any fallback (backend, delegate) into a :class:`FallbackError`.
      isolate: First load the model and run one zero input in a child process
        (:func:`edgeship.isolate.probe_model`), so that a malformed or hostile
        file that crashes or hangs the engine raises :class:`ModelFormatError`
        here instead of killing this process. Costs one interpreter start-up.
      delegate: TFLite external delegate(s) to load with ``load_delegate``:
        ``"PATH[:key=value,...]"``, ``(path, {options})`` or a list of them.
        :attr:`Model.info` then reports the delegate and how many of the
        model's ops it took (``ops_delegated``/``ops_total``). A delegate that
        cannot be created, or takes no op, is a fallback: one warning, or a
        :class:`FallbackError` with ``strict``.

    Returns:
      A :class:`Model`.

    Raises:
      ModelNotFoundError: ``path`` does not exist.
      BundleError: a folder without (or with an invalid) ``manifest.json``, or
        no artifact matches ``artifact``.
      IntegrityError: the artifact's size or sha256 differs from the manifest.
      ModelFormatError: the model file is corrupt, truncated or not a model.
      UnsupportedModelError: a file that is neither ``.tflite`` nor ``.onnx``.
      InputError: an unknown ``backend`` or ``device``, or bad ``threads``.
      BackendUnavailableError: no installed backend can run the model.
      FallbackError: ``strict`` and the requested backend/delegate is unusable.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"load() takes a path, got {type(path).__name__}") from None
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise InputError(f"threads must be a positive integer or None, got {threads!r}")
        threads = int(threads)
    else:
        threads = _default_threads()
    if device is not None and not isinstance(device, str):
        raise InputError(f"device must be a string such as 'cpu' or 'edgetpu', got {device!r}")
    if backend is not None:
        _backend_entry(backend)
    from .accel import normalize_delegates  # noqa: PLC0415

    delegates = normalize_delegates(delegate)
    if not os.path.exists(path):
        raise ModelNotFoundError(f"{path!r} does not exist; pass a bundle folder or a .tflite/.onnx file")
    if isolate:
        from ..isolate import probe_model  # noqa: PLC0415

        probe_model(path, backend=backend, artifact=artifact)
    if os.path.isdir(path):
        manifest = _manifest.read(path)
        entry = choose_artifact(manifest, artifact, backend=backend, device=device)
        if _is_edgetpu(entry) and _device_kind(device) == "edgetpu" and artifact is None:
            opened = _open_edgetpu(path, entry, backend=backend, device=device, threads=threads, strict=strict)
            if opened[0] is not None:
                return _wrap(opened[0], opened[1], manifest, entry)
            entry = choose_artifact(_without_edgetpu(manifest), None, backend=backend, device="cpu")
            skipped = [f"{entry['file']}: the Edge TPU delegate is not usable ({opened[1]}), ran the CPU artifact "
                       "instead"]
        else:
            skipped = []
        file = _bundle.verify_file(path, entry)
        fmt = entry["format"]
        be = _open_backend(file, fmt, backend=backend, device=None if skipped else device, threads=threads,
                           strict=strict, delegates=delegates)
        if skipped:
            be.info.skipped[:0] = skipped
            be.info.fallback = True
        return _wrap(be, file, manifest, entry)
    else:
        if artifact is not None:
            raise InputError(f"artifact={artifact!r} applies to bundle folders only; {path} is a file")
        manifest = entry = None
        file, fmt = path, _sniff_format(path)
        if os.path.getsize(path) == 0:
            raise ModelFormatError(f"{path} is empty; re-copy or re-convert the model")
    be = _open_backend(file, fmt, backend=backend, device=device, threads=threads, strict=strict,
                       delegates=delegates)
    return _wrap(be, file, manifest, entry)


def _wrap(be, file: str, manifest: dict | None, entry: dict | None) -> Model:
    try:
        return Model(be, path=file, manifest=manifest, artifact=entry)
    except BaseException:
        be.close()
        raise


def _without_edgetpu(manifest: dict) -> dict:
    rest = [a for a in manifest["artifacts"] if not _is_edgetpu(a)]
    if not rest:
        raise FallbackError("the Edge TPU delegate cannot be loaded and the bundle has no CPU artifact; "
                            "install libedgetpu (https://coral.ai/software) or re-convert for the CPU")
    return dict(manifest, artifacts=rest)


def _open_edgetpu(path, entry, *, backend, device, threads, strict):
    """(backend, file) of an Edge TPU-compiled artifact; (None, why) (after one warning) when the TPU is unusable.

    An Edge TPU-compiled file cannot run without the delegate, so a fallback
    means another artifact of the bundle, not the same file on the CPU.
    """
    file = _bundle.verify_file(path, entry)
    why = "the delegate took no op"
    try:  # strict inside: a failing delegate raises with its reason instead of warning (one warning, below)
        be = _open_backend(file, entry["format"], backend=backend, device=device, threads=threads, strict=True)
    except FallbackError as exc:
        be, why = None, str(exc).replace("; strict=True forbids running without it", "")
    except ModelFormatError as exc:
        be, why = None, str(exc)
    if be is not None and be.info.delegate is not None:
        return be, file
    if be is not None:
        be.close()
    if strict:
        raise FallbackError(f"{entry['file']} needs the Edge TPU delegate, which cannot be loaded ({why}); "
                            "strict=True forbids running another artifact")
    _log.warning("%s needs the Edge TPU, which is not usable here (%s); running a CPU artifact instead",
                 entry["file"], why)
    return None, why
