"""OpenVINO backend: a bundle's ``.onnx`` (FP32, INT8 QDQ) and ``.tflite`` files on Intel CPU, GPU and NPU.

Optional (``pip install "edgeship[openvino]"``); ``openvino`` is imported only
when this backend opens a model or reports its devices, never at
``import edgeship.runtime``.

The model is built from the bytes ``load()`` read once and verified:
``Core.read_model(bytes)`` for an ONNX file without external data (read in
memory). OpenVINO reads TFLite files, and ONNX external data, only from a path,
so those bytes (the verified ones, external data checked against the manifest
like ONNX Runtime does) are written to a private temporary folder (mode 0700)
that is removed once the model is compiled: nothing is read from the user's
folder after the check.

Options are :class:`~edgeship.runtime.backends.options.OpenVINOOptions`
(device, threads, performance hint, inference precision). ``info.delegate`` is
the OpenVINO device that runs the model and the precision of its float parts
(``"CPU bf16"``); a requested device or precision that cannot be had is a
fallback (one warning, ``info.fallback``; a ``FallbackError`` with ``strict``).

Thread safety: the compiled model is shared, each calling thread gets its own
infer request (``thread_safe = True``: the Model takes no lock, threads run in
parallel). Dynamic dimensions are compiled static per input shape on first use
(a dynamic batch: batch 1 at load; a dynamic height/width: each new image size),
which is what OpenVINO's CPU plugin runs fastest; the last ``MAX_SHAPES`` (8)
compiled shapes are kept (the oldest is dropped first).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading

import numpy as np

from ... import bundle as _bundle
from ...errors import BackendUnavailableError, FallbackError, InputError, IntegrityError, ModelFormatError
from ...onnx_policy import read_checked_model, read_external_data
from ...vocab import DeviceKind
from .base import Backend, ExecutionInfo, ModelSource, RawTensor, as_source, closed_error
from .options import options_for, InferencePrecision, OpenVINOOptions

_log = logging.getLogger("edgeship.runtime")

__all__ = ["OpenVINOBackend", "ov_devices"]

_OV_DEVICE = {DeviceKind.CPU: "CPU", DeviceKind.GPU: "GPU", DeviceKind.NPU: "NPU"}
_PRECISION = {InferencePrecision.F32: "f32", InferencePrecision.BF16: "bf16", InferencePrecision.F16: "f16"}
_INSTALL = 'openvino is not installed; install it with `pip install "edgeship[openvino]"`'
MAX_SHAPES = 8  # compiled input shapes kept per model (dynamic dims: one static compile per shape)


def _import_ov():
    try:
        import openvino as ov  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailableError(_INSTALL) from exc
    return ov


def ov_devices() -> dict:
    """{"available", "version", "devices": [{"name", "full_name", "capabilities"}], "reason"} (imports openvino)."""
    import importlib.util  # noqa: PLC0415

    out = {"available": False, "version": None, "devices": [], "reason": None}
    if importlib.util.find_spec("openvino") is None:
        out["reason"] = 'not installed: pip install "edgeship[openvino]"'
        return out
    try:
        ov = _import_ov()
        core = ov.Core()
        for name in core.available_devices:
            row = {"name": name, "full_name": None, "capabilities": []}
            try:
                row["full_name"] = str(core.get_property(name, "FULL_DEVICE_NAME"))
                row["capabilities"] = [str(c) for c in core.get_property(name, "OPTIMIZATION_CAPABILITIES")]
            except Exception:  # noqa: BLE001 - a device that cannot answer is still listed
                pass
            out["devices"].append(row)
        out.update(available=True, version=ov.get_version().split("-")[0])
    except Exception as exc:  # noqa: BLE001 - a broken install must not break `edgeship devices`
        out["reason"] = f"openvino cannot be used: {type(exc).__name__}: {exc}"
    return out


def _is_tflite(source: ModelSource) -> bool:
    return source.data[4:8] == b"TFL3" or source.path.lower().endswith(".tflite")


class OpenVINOBackend(Backend):
    """Runs ``.onnx`` and ``.tflite`` files with OpenVINO (see :class:`OpenVINOOptions`).

    Raises:
        ModelFormatError: a file OpenVINO cannot read or compile.
        UnsafeModelError: ONNX external data that escapes the model folder.
        IntegrityError: a bundle's external data does not match the manifest.
        FallbackError: ``strict`` and the requested device or precision cannot be used.
        BackendUnavailableError: openvino is not installed.
    """

    name = "openvino"
    formats = ("onnx", "tflite")
    thread_safe = True
    options_type = OpenVINOOptions

    def __init__(self, source: ModelSource | str, options: OpenVINOOptions | None = None) -> None:
        options = options_for(options, OpenVINOOptions, "openvino")
        source = as_source(source)
        self.path = source.path
        self._compiled: dict = {}
        self._closed = False
        self._compile_lock = threading.Lock()
        self._local = threading.local()
        ov = _import_ov()
        self._ov = ov
        core = ov.Core()
        if options.cache_dir:
            core.set_property({"CACHE_DIR": os.fspath(options.cache_dir)})
        tflite = _is_tflite(source)
        tflite_raw = _tflite_raw(source) if tflite else None
        model = self._read(core, source, tflite)
        skipped: list = []
        device, fallback = self._device(core, options, skipped)
        config = {"PERFORMANCE_HINT": options.performance_hint.value.upper()}
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        if device.startswith("CPU"):  # off unless asked: see OpenVINOOptions.cpu_pinning
            config["ENABLE_CPU_PINNING"] = bool(options.cpu_pinning)
        if options.inference_precision is not InferencePrecision.DEFAULT:
            config["INFERENCE_PRECISION_HINT"] = _PRECISION[options.inference_precision]
        self._core, self._model, self._device_name, self._config = core, model, device, config
        self.inputs = _raw_ports(model.inputs, tflite_raw[0] if tflite_raw else None)
        self.outputs = _raw_ports(model.outputs, tflite_raw[1] if tflite_raw else None)
        if tflite and tflite_raw is None and any(t.dtype.kind in "iu" for t in self.inputs + self.outputs):
            raise BackendUnavailableError(f"{self.path}: openvino runs this integer-I/O .tflite file only with a "
                                          "TFLite interpreter to read its quantization (pip install ai-edge-litert)")
        self._dynamic = all(t.shape and t.shape[0] is None for t in self.inputs) and bool(self.inputs)
        self._reshape = any(None in t.shape for t in self.inputs)  # any dynamic dim: compiled per shape
        self.compiles = 0  # models compiled (one per input shape seen, for dynamic dims)
        sized = all(None not in t.shape[1:] for t in self.inputs)
        compiled = self._compiled_for(tuple((1, *t.shape[1:]) for t in self.inputs) if self._reshape and sized
                                      else None)
        precision = _property(compiled, "INFERENCE_PRECISION_HINT")
        want = _PRECISION.get(options.inference_precision)
        if want is not None and precision and want not in precision.lower():
            why = f"inference precision {want}: {device} runs {precision} instead"
            if options.strict:
                raise FallbackError(f"{self.path}: {why}; strict=True refuses to fall back")
            _log.warning("openvino: %s", why)
            skipped.append(why)
            fallback = True
        threads = _property(compiled, "INFERENCE_NUM_THREADS")
        execution = _property(compiled, "EXECUTION_DEVICES") or device
        self.info = ExecutionInfo(
            backend="openvino",
            engine_version=ov.get_version().split("-")[0],
            device=device.split(".")[0].lower() if device.split(".")[0] in ("CPU", "GPU", "NPU") else "cpu",
            delegate=f"{execution} {precision}".strip() if precision else str(execution),
            threads=int(threads) if threads not in (None, "", 0) else None,
            skipped=skipped,
            fallback=fallback,
        )

    # -- opening ---------------------------------------------------------------------

    def _read(self, core, source: ModelSource, tflite: bool):
        try:
            if tflite:
                return _read_via_private_folder(core, {"model.tflite": source.data}, "model.tflite")
            data, scan = read_checked_model(self.path, source.data)
            if not scan.refs:
                return core.read_model(data)
            files = {"model.onnx": data, **_external_bytes(source, scan.refs)}
            return _read_via_private_folder(core, files, "model.onnx")
        except (ModelFormatError, IntegrityError, BackendUnavailableError):
            raise
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ModelFormatError(f"{self.path}: openvino cannot read this model ({first})") from None

    def _device(self, core, options: OpenVINOOptions, skipped: list) -> tuple[str, bool]:
        """(OpenVINO device to compile for, whether that is a fallback)."""
        have = list(core.available_devices)
        if options.ov_device:
            want, what = options.ov_device.strip(), f"OpenVINO device {options.ov_device!r}"
        elif options.device is None or options.device.kind is DeviceKind.CPU:
            return "CPU", False
        else:
            want, what = _OV_DEVICE.get(options.device.kind), f"device {str(options.device)!r}"
        base = want.split(".")[0] if want else None
        kinds = {h.split(".")[0] for h in have}  # "GPU" is there when OpenVINO lists GPU.0, GPU.1
        if want and (want in have or base in ("AUTO", "MULTI", "HETERO") or ("." not in want and base in kinds)):
            return want, False
        why = (f"{what}: OpenVINO has no such device here (available: {', '.join(have) or 'none'})" if want
               else f"{what}: OpenVINO has no device of that kind")
        if options.strict:
            raise FallbackError(f"{self.path}: {why}; strict=True refuses to fall back to CPU")
        _log.warning("openvino: %s; running %s on CPU instead", why, os.path.basename(self.path))
        skipped.append(why)
        return "CPU", True

    def _compiled_for(self, shapes: tuple | None):
        """The compiled model for input ``shapes`` (one static shape per input; None: the file's
        own shapes), compiled once and kept among the last ``MAX_SHAPES``."""
        hit = self._compiled.get(shapes)
        if hit is not None:
            return hit
        with self._compile_lock:
            hit = self._compiled.get(shapes)
            if hit is not None:
                return hit
            model = self._model
            if shapes is not None:
                model = model.clone()
                try:
                    model.reshape({port: self._ov.PartialShape(list(s)) for port, s in zip(model.inputs, shapes)})
                except RuntimeError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise InputError(f"{self.path}: openvino cannot run inputs shaped "
                                     f"{', '.join(str(s) for s in shapes)} ({first})") from None
            try:
                compiled = self._core.compile_model(model, self._device_name, dict(self._config))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise ModelFormatError(f"{self.path}: openvino cannot compile this model for "
                                       f"{self._device_name} ({first})") from None
            self.compiles += 1
            cache = dict(self._compiled)  # readers never see a dict being changed
            cache[shapes] = compiled
            while len(cache) > MAX_SHAPES:
                cache.pop(next(iter(cache)))  # the oldest compiled shape
            self._compiled = cache
            return compiled

    @classmethod
    def available(cls) -> tuple[bool, str]:
        import importlib.util  # noqa: PLC0415 - never import openvino to answer this

        if importlib.util.find_spec("openvino") is None:
            return False, 'openvino is not installed (pip install "edgeship[openvino]")'
        return True, ""

    # -- running ---------------------------------------------------------------------

    def _request(self, shapes: tuple | None):
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        hit = reqs.get(shapes)
        if hit is None:  # the request's own tensors, viewed once: invoke copies into and out of them
            req = self._compiled_for(shapes).create_infer_request()
            hit = reqs[shapes] = (req, [req.get_input_tensor(i).data for i in range(len(self.inputs))],
                                  [req.get_output_tensor(i).data for i in range(len(self.outputs))])
            while len(reqs) > MAX_SHAPES:
                reqs.pop(next(iter(reqs)))
        return hit

    def invoke(self, arrays: list) -> list:
        if self._closed:
            raise closed_error(self.path)
        if len(arrays) != len(self.inputs):
            raise InputError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        feed = []
        for spec, arr in zip(self.inputs, arrays):
            a = np.asarray(arr)
            if len(a.shape) != len(spec.shape) or any(
                    s is not None and s != d for s, d in zip(spec.shape[1:], a.shape[1:])):
                raise InputError(f"{self.path}: input {spec.name!r} must be shaped {spec.shape}, got {a.shape}")
            feed.append(a)
        shapes = None
        if self._reshape:  # dynamic dims: the compiled model for these very shapes
            shapes = tuple(tuple(int(d) for d in a.shape) for a in feed)
        if not self._dynamic and feed and feed[0].shape[0] != self.inputs[0].shape[0]:
            raise InputError(f"{self.path}: this model runs batches of {self.inputs[0].shape[0]}, "
                             f"got {feed[0].shape[0]}")
        req, ins, outs = self._request(shapes)
        for view, a in zip(ins, feed):  # one copy (and cast) into the request's tensor: ~25 us less than infer(list)
            view[...] = a
        try:
            req.infer()
        except RuntimeError as exc:
            raise InputError(f"{self.path}: openvino rejected the input ({exc})") from None
        if self._closed:
            raise closed_error(self.path)
        return [o.copy() for o in outs]

    def resize_batch(self, batch: int) -> bool:
        return self._dynamic or (bool(self.inputs) and self.inputs[0].shape[:1] == (batch,))

    def close(self) -> None:
        self._closed = True
        self._compiled = {}
        self._local = threading.local()


def _property(compiled, key: str):
    try:
        value = compiled.get_property(key)
    except Exception:  # noqa: BLE001 - older OpenVINO or a device without the property
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else value


def _read_via_private_folder(core, files: dict, main: str):
    """Write ``files`` (relative name -> verified bytes) to a private temp folder, read ``main``, remove the folder."""
    folder = tempfile.mkdtemp(prefix="edgeship-ov-")  # mode 0700, a fresh name
    try:
        for rel, blob in files.items():
            dest = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
        model = core.read_model(os.path.join(folder, main))
        # Constants may still be mapped from the files: copy them out before the folder goes.
        return model.clone()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _external_bytes(source: ModelSource, refs: list) -> dict:
    """External data read once below the model folder (and checked against the manifest for a bundle)."""
    data = read_external_data(source.path, refs)
    if source.external_sha256 is not None:
        for loc, blob in data.items():
            want = source.external_sha256.get(loc)
            if want is None or _bundle.sha256_bytes(blob) != want:
                raise IntegrityError(f"external data {loc!r} of {source.path} is not listed in the manifest or "
                                     "does not match its sha256: re-copy the bundle or re-convert")
    return data


def _tflite_raw(source: ModelSource) -> tuple[list, list] | None:
    """The TFLite file's own tensors (names, dtypes, quantization) read by a TFLite interpreter, if one is here.

    OpenVINO does not expose a TFLite tensor's scale and zero point, and the
    Model quantizes integer I/O with them.
    """
    from .tflite import raw_tensor  # noqa: PLC0415

    for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            import importlib  # noqa: PLC0415

            interp = importlib.import_module(mod).Interpreter(model_content=source.data)
        except ImportError:
            continue
        except (ValueError, RuntimeError) as exc:
            raise ModelFormatError(f"{source.path} is not a valid TFLite model ({exc})") from None
        return ([raw_tensor(d) for d in interp.get_input_details()],
                [raw_tensor(d) for d in interp.get_output_details()])
    return None


def _raw_ports(ports, tflite: list | None) -> list:
    out = []
    for i, port in enumerate(ports):
        names = port.get_names()
        name = port.get_any_name() if names else f"tensor_{i}"
        ps = port.get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else None for d in ps) if ps.rank.is_static else ()
        dtype = np.dtype(port.get_element_type().to_dtype())
        raw = RawTensor(name=name, shape=shape, dtype=dtype)
        if tflite is not None:
            match = next((t for t in tflite if t.name in names), tflite[i] if i < len(tflite) else None)
            if match is not None and match.dtype == dtype:
                raw = RawTensor(name=match.name, shape=match.shape if len(match.shape) == len(shape) else shape,
                                dtype=dtype, scale=match.scale, zero_point=match.zero_point, axis=match.axis)
        out.append(raw)
    return out


