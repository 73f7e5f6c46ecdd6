"""``Model``: a loaded model, float arrays in and out, in the source layout.

Create one with :func:`edgeship.runtime.load`. The model wraps an opened
backend (:mod:`edgeship.runtime.backends`) and the I/O plan computed at load
(:mod:`edgeship.runtime.io_plan`: quantization with the model's own
parameters, layouts, names from the manifest); it adds batching,
preprocessing (:meth:`Model.predict`, the one rule of :mod:`edgeship.preprocess`),
task adapters and the lock that makes one model usable from several threads.

Example::

    import edgeship.runtime as rt

    with rt.load("artifacts/digits") as model:
        print(model.info.backend, model.inputs)
        for c in model.classify(frame, top_k=3):
            print(c.label, c.score)
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping

import numpy as np

from ..errors import EdgeshipError, InputError, ModelClosedError, ModelNotFoundError  # noqa: F401 - re-exported
from ..ragged import concat_ragged
from . import tasks as _tasks
from .backends.base import Backend, ExecutionInfo
from .io_plan import TRANSPOSE, InputPlan, OutputPlan, TensorSpec, axis_shape, public_order

__all__ = ["Model", "ModelClosedError", "ModelNotFoundError"]


class Model:
    """A loaded model: float arrays in, float arrays out, in the source layout.

    Create it with :func:`load`. A ``Model`` owns one engine instance (one
    TFLite interpreter or one ONNX Runtime session); :meth:`close` it or use it
    as a context manager.

    Thread safety: one TFLite interpreter must not run two calls at once, so
    ``run``/``predict``/``classify`` hold a lock around the engine call
    (setting inputs, invoking, reading outputs) while preparing inputs and
    post-processing outputs outside it (``predict``'s fused path resizes
    outside it and writes colour + table into the input tensor inside it,
    which replaces the input copy). Calls from several threads are
    therefore safe but run one at a time on the engine; for parallel
    throughput load one ``Model`` per thread. Backends that declare
    ``thread_safe = True`` (ONNX Runtime) skip the lock.
    """

    def __init__(self, backend: Backend, *, path: str, manifest: dict | None = None,
                 artifact: dict | None = None, check_finite: bool = True, exact_input: bool = False) -> None:
        """Use :func:`load`; this wraps an already opened backend.

        ``check_finite``: refuse NaN/Inf in float arrays fed to integer-quantized
        inputs (see :mod:`edgeship.runtime.io_plan`). ``exact_input``: see :func:`load`.
        """
        self._exact_input = exact_input
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
        in_perm = TRANSPOSE.get((self._source_layout, art_layout))
        out_perm = TRANSPOSE.get((art_layout, self._source_layout))
        in_order = public_order(backend.inputs, art.get("inputs") if artifact else None,
                                 src.get("inputs"), "input", path)
        out_order = public_order(backend.outputs, art.get("outputs") if artifact else None,
                                  src.get("outputs"), "output", path)
        self._in_engine_pos = tuple(i for i, _ in in_order)
        in_plans_engine: list = [None] * len(backend.inputs)
        for i, name in in_order:
            raw = backend.inputs[i]
            in_plans_engine[i] = InputPlan(name, raw, in_perm if len(raw.shape) == 4 else None, axis_shape(raw),
                                           check_finite=check_finite)
        self._in_plans = tuple(in_plans_engine)  # engine order (what backend.invoke takes)
        self._in_by_name = {p.name: p for p in self._in_plans}
        self._single = len(self._in_plans) == 1
        self._out_plans = tuple(
            (i, OutputPlan(name, backend.outputs[i], out_perm if len(backend.outputs[i].shape) == 4 else None,
                           axis_shape(backend.outputs[i])))
            for i, name in out_order
        )  # public order, each with its engine position
        self._inputs = tuple(in_plans_engine[i].spec for i, _ in in_order)
        self._outputs = tuple(p.spec for _, p in self._out_plans)
        self._out_names = frozenset(p.name for _, p in self._out_plans)
        first = backend.inputs[0].shape if backend.inputs else ()
        self._dynamic_batch = bool(first) and all(t.shape and t.shape[0] is None for t in backend.inputs)
        cur = getattr(backend, "batch", None)
        self._batch = cur if cur is not None else (first[0] if first else None)
        self._fixed_batch = None if self._dynamic_batch else self._batch
        self._labels = tuple((manifest or {}).get("labels") or ()) or None
        self._spec = None  # preprocessing spec, built on first predict()
        self._default_spec = False
        self._fast = None  # predict(): the fused uint8 -> integer-input path (runtime/fastimage.py), built once

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
    def exact_input(self) -> bool:
        """Whether uint8 frames are quantized exactly as ``run()`` would (``load(..., exact_input=True)``)
        rather than to within one quantization step by a cheaper operation."""
        return self._exact_input

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

    def run(self, x, *, out: Mapping | None = None) -> dict[str, np.ndarray]:
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

          out: Optional ``{output name: float32 array}`` to write those outputs
            into (each shaped like the result, writable), e.g. the previous
            call's result: no new array per call. Names left out get new arrays.

        Returns:
          A dict mapping each output name to a float32 array (dequantized with
          the model's parameters, source layout, batch N), in ``outputs`` order.
          The arrays are the caller's: a later call never overwrites them,
          unless they are passed back as ``out``.

        Batching: if N equals the batch the engine is allocated for, it is
        invoked once; else, if the model's batch dimension is dynamic, the
        engine is resized to N (and stays so until another N comes); else the
        samples are run in chunks of the model's batch and stacked.

        Raises:
          InputError: ``x`` has missing/unknown names or a wrong shape/dtype
            (the message names the expected shape).
          ModelClosedError: the model was closed.
        """
        if self._backend is None:
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
                backend = self._backend  # read under the lock: close() may have run meanwhile
                if backend is None:
                    raise ModelClosedError(f"model {self._path} is closed; load it again to run it")
                if n == self._batch:
                    outs = backend.invoke(raws)
                else:
                    outs = self._run_other_batch(backend, raws, n)
        except ValueError as exc:  # the engine refused a shape it could not check up front
            if isinstance(exc, EdgeshipError):
                raise
            raise InputError(f"the engine rejected the input: {exc}; expected "
                             + ", ".join(f"{p.name} {p.expected()}" for p in self._in_plans)) from None
        if out is not None:
            return self._finish_into(outs, out)
        return {p.name: p.finish(outs[i]) for i, p in self._out_plans}

    def _finish_into(self, outs: list, out) -> dict:
        if not isinstance(out, Mapping) or any(k not in self._out_names for k in out):
            raise InputError(f"out must be a dict of output names {list(self._out_names)} to float32 arrays")
        return {p.name: p.finish(outs[i]) if p.name not in out else p.finish_into(outs[i], out[p.name])
                for i, p in self._out_plans}

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
        return [concat_ragged([p[j] for p in parts]) for j in range(len(parts[0]))]  # NMS inside: K varies

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
        ``value = pixel / 255``. An input with a dynamic height/width and no
        spec fixing it runs each image at its own size, sides rounded to a
        multiple of 32 (:mod:`edgeship.runtime.tasks.common`); the outputs are at
        that size. The image becomes the input through
        :meth:`PreprocessSpec.to_input`, the one rule. For an integer-quantized
        input and a BGR uint8 frame, the rule and the quantization run as one
        lookup table per channel after the resize (:mod:`.fastimage`), compiled
        into the cheapest operation within one quantization step of it (equal
        bit for bit with ``load(..., exact_input=True)``).

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
        if spec is None:  # a dynamic height/width: this image's own size (tasks.common.preprocess_spec)
            return self.run(_tasks.prepare_input(self, _tasks.preprocess_spec(self, image), image))
        if self._fast is None:
            from . import fastimage  # noqa: PLC0415

            direct = hasattr(self._backend, "invoke_into") and self._in_plans[0].to_engine is None
            self._fast = fastimage.build(self, spec, direct=direct, tolerance=0 if self._exact_input else 1) or False
        img = self._fast.prepare(image) if self._fast else None  # integer input: resized here, no float image
        if img is None:
            return self.run(_tasks.prepare_input(self, spec, image))
        if self._fast.direct:  # colour + table straight into the engine's input tensor, under the lock
            with self._lock:
                backend = self._backend
                if backend is None:
                    raise ModelClosedError(f"model {self._path} is closed; load it again to run it")
                outs = backend.invoke_into(self._fast.writer(img)) if self._batch == 1 else None
            if outs is not None:
                return {p.name: p.finish(outs[i]) for i, p in self._out_plans}
        return self.run(self._fast.array(img))

    def _preprocess_spec(self):
        if _tasks.common.per_image(self):  # dynamic height/width: one spec per image, never cached
            return None
        self._spec = _tasks.preprocess_spec(self)  # the manifest's, else the default for the input's shape and layout
        self._default_spec = not (self._manifest or {}).get("preprocessing")
        return self._spec

    def classify(self, image, top_k: int = 5, threshold: float = 0.0) -> tuple[_tasks.Class, ...]:
        """Classify one image: :meth:`predict`, then :func:`~edgeship.runtime.tasks.get_classes`.

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

        A thin wrapper over :func:`edgeship.runtime.tasks.detect.detect` (SSD- and
        YOLO-style outputs; ``format="auto"`` tells them apart by shape).

        Args:
          image: HxWx3 BGR uint8 image (as OpenCV gives it) or an image path.
          threshold: Minimum score of a detection.
          iou: NMS overlap above which the weaker box of a class is dropped.
          max_detections: Most detections returned.
          format: ``auto`` (the manifest's decoder spec, else from the output shapes), ``ssd``,
            ``ssd_raw``, ``yolo``, ``yolov5``, ``yolov8``, ``end2end``, ``blazeface``, or, for
            exports with NMS inside, ``nms`` / ``nms_indices``.
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
        return _tasks.detect.detect(self, image, threshold, iou=iou, max_detections=max_detections, format=format,
                                    anchors=anchors)

    def segment(self, image, *, probabilities: bool = False):
        """Segment one image: ``Segmentation(mask, classes, probabilities)`` with the mask at the
        image's size (letterbox/crop undone); a one-channel map is thresholded (0.5, or 0 for logits).

        A thin wrapper over :func:`edgeship.runtime.tasks.segment.segment`.

        Raises:
          InputError: the image is not an image or the output is not a per-pixel map.
          ModelClosedError: the model was closed.
        """
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            from edgeship.preprocess import read_image  # noqa: PLC0415

            image = read_image(str(image))
        return _tasks.segment.segment(self, image, probabilities=probabilities)

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
