"""TFLite backends: LiteRT, ``tflite_runtime`` and ``tensorflow.lite``.

The three are one class with three imports, tried in this order by the
registry: ``ai_edge_litert.interpreter`` (the LiteRT wheel, what
``pip install edgeship`` brings), ``tflite_runtime.interpreter`` (older device
images) and ``tensorflow.lite`` (last resort: TensorFlow is large and slow to
import). Each module is imported only when that backend is asked for.

CPU kernels use XNNPACK when the interpreter build applies it (LiteRT does by
default for float and INT8 models); ``threads`` sets its ``num_threads``.
The interpreter is built from the model's bytes (``model_content``: the bytes
``load()`` read once and verified), never by reopening the path. Options are
:class:`~edgeship.runtime.backends.options.TFLiteOptions`; external delegates
(``delegates``, then the one for ``device``, see
:func:`~edgeship.runtime.backends.delegates.delegate_for_device`) are loaded
with ``load_delegate``:

========================  =============================================
``device``                delegate library
========================  =============================================
``None`` / ``"cpu"``      none (built-in CPU kernels)
``"edgetpu"``             ``libedgetpu.so.1`` (``.1.dylib``, ``edgetpu.dll``)
``"edgetpu:usb:0"`` ...   same, with the Edge TPU ``device`` option
``"gpu"``                 ``libtensorflowlite_gpu_delegate.so``
``"npu"``, ``"tensorrt"``  none exists: the CPU runs it (one warning,
                          ``info.fallback``; ``FallbackError`` if strict)
========================  =============================================
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os

import numpy as np

from ...errors import BackendUnavailableError, FallbackError, InputError, ModelFormatError
from ...vocab import DeviceKind
from .base import (Backend, ExecutionInfo, ModelSource, RawTensor, as_source, closed_error, quiet_native_enabled, warn,
                   without_native_noise)
from .delegates import delegate_for_device, delegated_ops, dlopen_check
from .options import options_for, TFLiteOptions



__all__ = ["LiteRTBackend", "TFLiteRuntimeBackend", "TensorFlowLiteBackend", "format_error", "raw_tensor"]


def raw_tensor(detail: dict) -> RawTensor:
    """A :class:`RawTensor` from one entry of ``Interpreter.get_input_details()``/``get_output_details()``."""
    sig = detail.get("shape_signature")
    if sig is None or len(sig) != len(detail["shape"]):
        sig = detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in sig)
    qp = detail.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in np.asarray(qp.get("scales", ()), dtype=np.float64).reshape(-1))
    zps = tuple(int(z) for z in np.asarray(qp.get("zero_points", ()), dtype=np.int64).reshape(-1))
    if not scales and detail.get("quantization", (0.0, 0))[0]:
        scales, zps = (float(detail["quantization"][0]),), (int(detail["quantization"][1]),)
    if scales and not zps:
        zps = (0,) * len(scales)
    return RawTensor(name=str(detail["name"]), shape=shape, dtype=np.dtype(detail["dtype"]), scale=scales,
                     zero_point=zps, axis=int(qp.get("quantized_dimension", 0)))


class _TFLiteBackend(Backend):
    """Runs a ``.tflite`` file with one interpreter (not thread-safe: the Model locks)."""

    formats = ("tflite",)
    thread_safe = False
    options_type = TFLiteOptions
    _module = ""  # module holding Interpreter and load_delegate
    _package = ""  # pip package named in messages

    # -- discovery -------------------------------------------------------------------

    @classmethod
    def _import(cls):
        return importlib.import_module(cls._module)

    @classmethod
    def _version(cls) -> str:
        # The package's own __version__ first: importlib.metadata costs ~30 ms and 3 MB
        # at cold start, which is a device's whole budget for this.
        import sys  # noqa: PLC0415

        top = sys.modules.get(cls._module.split(".")[0])
        v = getattr(top, "__version__", None)
        if isinstance(v, str) and v:
            return v
        try:
            from importlib.metadata import version  # noqa: PLC0415

            return version(cls._package)
        except Exception:  # noqa: BLE001 - metadata is best effort
            return ""

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            cls._import()
        except ImportError as exc:
            return False, f"{cls.name}: {cls._module} cannot be imported ({exc.__class__.__name__}: {exc})"
        return True, ""

    # -- life cycle ------------------------------------------------------------------

    def __init__(self, source: ModelSource | str, options: TFLiteOptions | None = None) -> None:
        source = as_source(source)
        options = options_for(options, TFLiteOptions, "TFLite")
        try:
            mod = self._import()
        except ImportError as exc:
            raise BackendUnavailableError(f"{self.name}: cannot import {self._module}: {exc}") from None
        self._label = source.path
        device, strict, threads = options.device, options.strict, options.threads
        skipped: list = []
        fallback = False
        wanted = list(options.delegates)
        try:
            dev = delegate_for_device(device)
        except InputError as exc:  # e.g. npu: no TFLite delegate exists; the CPU runs it
            if strict:
                raise FallbackError(f"{self.name}: {exc}; strict=True forbids running on the CPU instead") from None
            warn("%s: %s; running on the CPU instead", self.name, exc)
            skipped.append(str(exc))
            fallback = True
            dev = None
        if dev is not None:
            wanted.append(dev)
        loaded, names = [], []
        for d in wanted:
            dlib, dopt = d.library, d.as_dict()
            try:
                if os.sep in dlib:  # a bad path: say so before LiteRT's half-built Delegate complains in __del__
                    if not os.path.exists(dlib):
                        raise OSError(f"{dlib}: no such file")
                    dlopen_check(dlib)
                loaded.append(mod.load_delegate(dlib, dopt))
                names.append(os.path.basename(dlib))
            except (ValueError, OSError, RuntimeError) as exc:
                why = f"delegate {dlib}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
                if strict:
                    raise FallbackError(f"{why}; strict=True forbids running without it") from None
                skipped.append(why)
                fallback = True
                warn("%s: %s; running on CPU instead", self.name, why)
        self.threads = threads
        try:
            interp = self._make_interpreter(mod, source.data, threads, loaded)
        except (ValueError, RuntimeError) as exc:
            if not loaded:
                raise format_error(source.path, exc) from None
            # A delegate that cannot take the graph: retry on the CPU unless strict.
            why = f"delegate {', '.join(names)} failed on this model: {str(exc).strip()[:200]}"
            if strict:
                raise FallbackError(f"{why}; strict=True forbids running without it") from None
            warn("%s: %s; running on CPU instead", self.name, why)
            skipped.append(why)
            fallback, loaded, names = True, [], []
            try:
                interp = self._make_interpreter(mod, source.data, threads, [])
            except (ValueError, RuntimeError) as exc2:
                raise format_error(source.path, exc2) from None
        ops_delegated, ops_total = self._ops_account
        if names and ops_delegated == 0:
            # Loaded but took nothing: the model would quietly run on the CPU.
            why = (f"delegate {', '.join(names)} took none of the {ops_total} ops of this model "
                   "(it runs entirely on the CPU)")
            if strict:
                raise FallbackError(f"{why}; strict=True forbids running without it")
            warn("%s: %s", self.name, why)
            skipped.append(why)
            fallback = True
        self._interp = interp
        in_details = interp.get_input_details()
        out_details = interp.get_output_details()
        self._in_idx = tuple(int(d["index"]) for d in in_details)
        self._out_idx = tuple(int(d["index"]) for d in out_details)
        quantized = _quantized_by_model(interp, {int(d["index"]) for d in in_details
                                                 if np.dtype(d["dtype"]).kind == "f"})
        self.inputs = [_mark(raw_tensor(d), int(d["index"]) in quantized) for d in in_details]
        self.outputs = [raw_tensor(d) for d in out_details]
        self._batch = int(in_details[0]["shape"][0]) if in_details and len(in_details[0]["shape"]) else None
        self._full_shapes = [tuple(int(v) for v in d["shape"]) for d in in_details]
        self.reallocations = 0  # allocate_tensors() calls after load: a new batch or input size
        if any(None in t.shape[1:] for t in self.inputs):  # a dynamic height/width...: resized per call
            self.invoke = self._invoke_resizing  # static models keep the plain invoke (no check per call)
        self.info = ExecutionInfo(
            backend=self.name,
            engine_version=self._version(),
            device=_device_name(device, names),
            delegate=", ".join(names) or None,
            ops_delegated=ops_delegated if names else (0 if ops_total is not None else None),
            ops_total=ops_total,
            threads=threads,
            skipped=skipped,
            fallback=fallback,
        )

    def _make_interpreter(self, mod, data: bytes, threads, delegates):
        # The bytes that were read (and verified) once: the file is not opened again.
        kwargs = {"model_content": data}
        if threads is not None:
            kwargs["num_threads"] = int(threads)
        if delegates:
            kwargs["experimental_delegates"] = list(delegates)
        interp = mod.Interpreter(**kwargs)
        # Count before allocate_tensors(): LiteRT applies its default XNNPACK
        # delegate at the first allocation, so only external delegates show here.
        try:
            taken, total, _ = delegated_ops(interp._interpreter)
            self._ops_account = (taken, total)
        except Exception:  # noqa: BLE001 - an interpreter build without node introspection
            self._ops_account = (None, None)
        if quiet_native_enabled():  # the CLI: LiteRT's "Created ... XNNPACK delegate" INFO line is not shown
            without_native_noise(interp.allocate_tensors)
        else:
            interp.allocate_tensors()
        return interp

    # -- running ---------------------------------------------------------------------

    def invoke(self, arrays: list) -> list:
        interp = self._interp
        if interp is None:
            raise closed_error(self._label)
        for idx, arr in zip(self._in_idx, arrays):
            interp.set_tensor(idx, arr)
        interp.invoke()
        get = interp.get_tensor
        return [get(i) for i in self._out_idx]

    def invoke_into(self, write) -> list:
        """Run one batch whose inputs ``write(buffers)`` writes in place, then return the outputs as ``invoke``.

        ``buffers`` are numpy views of the interpreter's own input tensors (engine
        dtype, the current allocation's shape), so the caller's pixels go into the
        engine with no intermediate array and no ``set_tensor`` copy. They are valid
        only during ``write``, which must fill them completely and keep no reference:
        LiteRT refuses to ``invoke()`` while a view of its buffers is alive (such a
        reference would be invalidated by a reallocation), and so would this
        interpreter's every later call. The outputs are copies (``get_tensor``):
        owned by the caller.
        """
        interp = self._interp
        if interp is None:
            raise closed_error(self._label)
        views = [interp.tensor(i)() for i in self._in_idx]
        try:
            write(views)
        except BaseException as exc:
            views = None
            exc.__traceback__ = None  # its frames hold the views: the interpreter would refuse to run again
            raise
        views = None
        interp.invoke()
        get = interp.get_tensor
        return [get(i) for i in self._out_idx]

    def _invoke_resizing(self, arrays: list) -> list:
        """``invoke`` for inputs with dynamic dims past the batch: ``resize_tensor_input`` and
        ``allocate_tensors`` only when the shapes differ from the last call's."""
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != self._full_shapes:
            interp = self._interp
            if interp is None:
                raise closed_error(self._label)
            try:
                for idx, shape in zip(self._in_idx, shapes):
                    interp.resize_tensor_input(idx, list(shape), strict=True)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"{self._label}: the interpreter cannot run inputs shaped "
                                 f"{', '.join(str(s) for s in shapes)} ({first})") from None
            self._full_shapes = shapes
            self._batch = shapes[0][0] if shapes and shapes[0] else self._batch
            self.reallocations += 1
        return _TFLiteBackend.invoke(self, arrays)

    @property
    def input_shapes(self) -> list:
        """The shapes the interpreter's inputs are allocated for now (``get_input_details``)."""
        interp = self._interp
        if interp is None:
            raise closed_error(self._label)
        return [tuple(int(v) for v in d["shape"]) for d in interp.get_input_details()]

    def resize_batch(self, batch: int) -> bool:
        """Resize every input's batch axis to ``batch`` (only if it is dynamic)."""
        if batch == self._batch:
            return True
        if any(not t.shape or t.shape[0] is not None for t in self.inputs):
            return False
        interp = self._interp
        if interp is None:
            raise closed_error(self._label)
        try:
            for idx, full in zip(self._in_idx, self._full_shapes):
                interp.resize_tensor_input(idx, [batch, *full[1:]], strict=True)
            interp.allocate_tensors()
        except (ValueError, RuntimeError):
            return False
        self._batch = batch
        self._full_shapes = [(batch, *full[1:]) for full in self._full_shapes]
        self.reallocations += 1
        return True

    @property
    def batch(self) -> int | None:
        """The batch size the interpreter is currently allocated for."""
        return self._batch

    def close(self) -> None:
        self._interp = None


def _quantized_by_model(interp, wanted: set) -> set:
    """Which of the float input tensors ``wanted`` the model feeds to a QUANTIZE op (a float input
    of a full-INT8 model with float I/O). Ops are read one at a time and the walk stops once every
    wanted tensor is found (the QUANTIZE ops come first): a few ops, not the whole table, at load."""
    if not wanted:
        return set()
    found: set = set()
    try:  # LiteRT's op table; older builds may lack it
        for i in range(interp._interpreter.NumNodes()):
            op = interp._get_op_details(i)
            if op.get("op_name") == "QUANTIZE":
                found |= wanted & {int(t) for t in op.get("inputs", ())}
                if found == wanted:
                    break
    except Exception:  # noqa: BLE001 - then no input counts as quantized inside
        return found
    return found


def _mark(raw: RawTensor, quantized: bool) -> RawTensor:
    if quantized and raw.dtype.kind == "f":
        return dataclasses.replace(raw, quantized_inside=True)
    return raw


def _device_name(device, names: list) -> str:
    if not names:
        return "cpu"
    if device is not None and device.kind is not DeviceKind.CPU:
        return device.kind.value
    return "delegate"


def format_error(path: str, exc: Exception) -> ModelFormatError:
    """The :class:`ModelFormatError` for a file the interpreter refused with ``exc``."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelFormatError(
        f"{path} cannot be loaded as a TFLite model ({msg}): the file is corrupt, truncated or not a .tflite "
        "flatbuffer, or it needs custom ops this interpreter lacks; re-copy or re-convert it"
    )


class LiteRTBackend(_TFLiteBackend):
    name = "litert"
    _module = "ai_edge_litert.interpreter"
    _package = "ai-edge-litert"


class TFLiteRuntimeBackend(_TFLiteBackend):
    name = "tflite_runtime"
    _module = "tflite_runtime.interpreter"
    _package = "tflite-runtime"


class TensorFlowLiteBackend(_TFLiteBackend):
    """``tf.lite.Interpreter``: only when neither LiteRT nor tflite_runtime is installed."""

    name = "tensorflow.lite"
    _module = "tensorflow.lite"
    _package = "tensorflow"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        # Do not import TensorFlow (seconds, gigabytes) just to ask.
        try:
            found = importlib.util.find_spec("tensorflow") is not None
        except (ImportError, ValueError) as exc:
            return False, f"{cls.name}: tensorflow cannot be imported ({exc})"
        return (True, "") if found else (False, f"{cls.name}: tensorflow is not installed")

    @classmethod
    def _import(cls):
        tf = importlib.import_module("tensorflow")

        class _Mod:  # Interpreter and load_delegate under one name, like the other two
            Interpreter = tf.lite.Interpreter
            load_delegate = staticmethod(tf.lite.experimental.load_delegate)

        return _Mod
