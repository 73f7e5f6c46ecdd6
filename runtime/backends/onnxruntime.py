"""ONNX Runtime backend: execution providers in priority order, checked external data.

The backend opens one ``.onnx`` model with ``onnxruntime.InferenceSession``
from the bytes that were read (and, for a bundle, verified) once. ONNX models
carry float inputs and outputs (an INT8 model keeps its QuantizeLinear /
DequantizeLinear pairs inside), so the raw tensors are float.

Execution providers are tried in this order, among those the installed
onnxruntime reports in ``get_available_providers()``: TensorRT, CUDA, OpenVINO,
CoreML, NNAPI, QNN, CPU. :class:`~edgeship.runtime.backends.options.OrtOptions`
``device`` (gpu/tensorrt: TensorRT then CUDA; npu: QNN, NNAPI, CoreML; cpu) or
``providers`` narrows the choice; a requested provider that is missing is a
fallback, recorded in ``info.skipped``, and an error
(:class:`~edgeship.errors.FallbackError`) with ``strict=True``. ``info.providers``
is what the session actually uses (``session.get_providers()``).

External data follows the ONNX file policy (:mod:`edgeship.onnx_policy`): every
reference is checked before anything reads it, each referenced file is read
once below the model folder without following links (and, in a bundle, checked
against the manifest's sha256), and those bytes are handed to the session with
``add_external_initializers_from_files_in_memory``: the session never reopens a
path that could have been swapped after the check.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from edgeship.errors import (
    BackendUnavailableError,
    FallbackError,
    InputError,
    IntegrityError,
    ModelFormatError,
)

from ... import bundle as _bundle
from ...onnx_policy import read_checked_model, read_external_data
from ...vocab import DeviceKind
from .base import Backend, ExecutionInfo, ModelSource, RawTensor, as_source, closed_error
from .options import options_for, OrtOptions

_log = logging.getLogger("edgeship.runtime")

__all__ = ["DEVICE_PROVIDERS", "OnnxRuntimeBackend", "PROVIDER_PRIORITY", "canonical_provider", "provider_options",
           "trt_cache_dir"]

# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
COREML = "CoreMLExecutionProvider"
NNAPI = "NnapiExecutionProvider"
QNN = "QNNExecutionProvider"
CPU = "CPUExecutionProvider"

PROVIDER_PRIORITY = (TENSORRT, CUDA, OPENVINO, COREML, NNAPI, QNN, CPU)

# device kind -> providers it asks for, best first (CPU is always the last resort).
DEVICE_PROVIDERS = {
    DeviceKind.CPU: (CPU,),
    DeviceKind.GPU: (TENSORRT, CUDA),
    DeviceKind.TENSORRT: (TENSORRT, CUDA),
    DeviceKind.NPU: (QNN, NNAPI, COREML),
}

_SHORT = {
    TENSORRT: "tensorrt", CUDA: "cuda", OPENVINO: "openvino", COREML: "coreml",
    NNAPI: "nnapi", QNN: "qnn", CPU: "cpu",
}
_DEVICE_OF = {TENSORRT: "gpu", CUDA: "gpu", OPENVINO: "cpu", COREML: "npu", NNAPI: "npu", QNN: "npu", CPU: "cpu"}

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def canonical_provider(name: str) -> str:
    """'cuda' / 'CUDA' / 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'."""
    low = name.lower().replace("executionprovider", "")
    for full in PROVIDER_PRIORITY:
        if full.lower() == name.lower() or _SHORT[full] == low or full.lower().replace("executionprovider", "") == low:
            return full
    if low in ("trt",):
        return TENSORRT
    return name


def trt_cache_dir(model_sha256: str, base: str | None = None) -> str:
    """Folder for TensorRT engine caches of one model (keyed by its sha256)."""
    root = base or os.environ.get("EDGESHIP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeship")
    return os.path.join(root, "tensorrt", model_sha256[:32])


def provider_options(provider: str, *, model_sha256: str, qdq: bool, options: OrtOptions) -> dict:
    """The options edgeship passes to one execution provider."""
    dev = {"device_id": str(options.device_id)} if options.device_id is not None else {}
    if provider == TENSORRT:
        cache = options.trt_cache_dir or trt_cache_dir(model_sha256)
        os.makedirs(cache, exist_ok=True)
        opts = {
            "trt_fp16_enable": "True" if options.trt_fp16 else "False",
            "trt_int8_enable": "True" if qdq else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
        }
        table = options.trt_calibration_table
        if table and not qdq:  # FP32 model run in INT8 with a table (edgeship.converters.targets.tensorrt)
            if os.path.dirname(os.path.abspath(table)) != os.path.abspath(cache):
                import shutil  # noqa: PLC0415

                shutil.copyfile(table, os.path.join(cache, os.path.basename(table)))
            opts.update(trt_int8_enable="True", trt_int8_calibration_table_name=os.path.basename(table),
                        trt_int8_use_native_calibration_table="False")
        return {**opts, **dev}
    if provider == CUDA:
        return {"cudnn_conv_algo_search": "HEURISTIC", **dev}
    if provider == OPENVINO:
        return {"device_type": str(options.openvino_device)}
    if provider == COREML:
        return {"ModelFormat": "MLProgram", "MLComputeUnits": str(options.coreml_units)}
    if provider == QNN:
        return {"backend_path": options.qnn_backend_path} if options.qnn_backend_path else {}
    return {}


# --------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------


def _import_ort():
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed; install it with `pip install \"edgeship[onnx]\"`"
        ) from exc
    return ort


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` model with ONNX Runtime (see :class:`OrtOptions`).

    Raises:
        ModelFormatError: malformed ``.onnx``.
        UnsafeModelError: external data that escapes the model folder.
        IntegrityError: a bundle's external data does not match the manifest.
        FallbackError: ``strict`` and a requested provider cannot be used.
        BackendUnavailableError: onnxruntime is not installed.
    """

    name = "onnxruntime"
    formats = ("onnx",)
    thread_safe = True
    options_type = OrtOptions

    def __init__(self, source: ModelSource | str, options: OrtOptions | None = None) -> None:
        options = options_for(options, OrtOptions, "onnxruntime")
        source = as_source(source)
        self.path = source.path
        self._session = None
        ort = _import_ort()
        data, scan = read_checked_model(self.path, source.data)
        self.sha256 = source.sha256 or _bundle.sha256_bytes(data)
        self.qdq = bool({"QuantizeLinear", "DequantizeLinear"} & scan.op_types)
        external = _external_bytes(source, scan.refs)
        strict = options.strict

        available = list(ort.get_available_providers())
        requested, device_requested = _requested(options)
        skipped: list = []
        chosen: list = []
        for prov in requested:
            if prov in available:
                chosen.append(prov)
            else:
                skipped.append(f"{prov}: not available in this onnxruntime build "
                               f"({ort.get_device()}; available: {', '.join(available)})")
        if device_requested and not requested:  # a device no provider serves (edgetpu)
            why = f"no ONNX Runtime execution provider runs on device {str(options.device)!r}"
            if strict:
                raise FallbackError(f"{self.path}: {why}; strict=True refuses to fall back to CPU")
            skipped.append(why)
        missing_requested = device_requested and not chosen
        if missing_requested and strict:
            raise FallbackError(
                f"{self.path}: requested execution provider(s) {', '.join(requested)} not available here "
                f"(available: {', '.join(available)}); strict=True refuses to fall back to CPU"
            )
        if CPU not in chosen:
            chosen.append(CPU)
        provs = [(p, provider_options(p, model_sha256=self.sha256, qdq=self.qdq, options=options)) for p in chosen]

        so = ort.SessionOptions()
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }.get(options.graph_optimization.value, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if external:
            names = list(external)
            buffers = [np.frombuffer(external[n], dtype=np.uint8) for n in names]
            so.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
            self._external = buffers  # the session reads them at creation; keep them alive with it
        try:
            self._session = ort.InferenceSession(data, sess_options=so, providers=provs)
        except Exception as exc:  # ORT raises its own pybind exception types
            kind = type(exc).__name__
            if kind in ("InvalidProtobuf", "InvalidGraph", "Fail", "NotImplemented", "RuntimeException",
                        "InvalidArgument", "NoSuchFile"):
                raise ModelFormatError(f"{self.path}: onnxruntime cannot load this model ({kind}: {exc})") from exc
            raise
        in_use = tuple(self._session.get_providers())
        for prov in chosen:
            if prov not in in_use:
                skipped.append(f"{prov}: available but the session did not use it (failed to initialise)")
        fallback = bool(device_requested and not any(p in in_use for p in requested))
        if fallback and strict:
            raise FallbackError(
                f"{self.path}: requested execution provider(s) {', '.join(requested)} could not be used "
                f"(session runs on {', '.join(in_use)}); strict=True refuses to fall back"
            )
        if fallback:
            what = ", ".join(requested) or f"device {str(options.device)!r}"
            _log.warning("onnxruntime: %s cannot run %s here; running on %s instead", what,
                         os.path.basename(self.path), ", ".join(in_use) or CPU)
        top = in_use[0] if in_use else CPU
        self.info = ExecutionInfo(
            backend="onnxruntime",
            engine_version=getattr(ort, "__version__", ""),
            device=_DEVICE_OF.get(top, "cpu"),
            delegate=top,
            providers=in_use,
            threads=so.intra_op_num_threads or None,
            skipped=skipped,
            fallback=fallback,
        )
        self.inputs = [_raw(t, t.name in scan.quantized) for t in self._session.get_inputs()]
        self.outputs = [_raw(t) for t in self._session.get_outputs()]
        self._output_names = [t.name for t in self.outputs]

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401, PLC0415
        except ImportError:
            return False, "onnxruntime is not installed (pip install \"edgeship[onnx]\")"
        return True, ""

    def invoke(self, arrays: list) -> list:
        session = self._session  # one read: close() in another thread cannot pull it away mid-call
        if session is None:
            raise closed_error(self.path)
        if len(arrays) != len(self.inputs):
            raise InputError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        feed = {}
        for spec, arr in zip(self.inputs, arrays):
            a = np.asarray(arr)
            if a.dtype != spec.dtype:
                a = a.astype(spec.dtype)
            feed[spec.name] = np.ascontiguousarray(a)
        try:
            return list(session.run(self._output_names, feed))
        except Exception as exc:
            if type(exc).__name__ in ("InvalidArgument", "Fail", "RuntimeException"):
                raise InputError(f"{self.path}: onnxruntime rejected the input ({exc})") from exc
            raise

    def resize_batch(self, batch: int) -> bool:
        for spec in self.inputs:
            if not spec.shape:
                return False
            if spec.shape[0] is not None and spec.shape[0] != batch:
                return False
        return True

    def close(self) -> None:
        self._session = None


def _requested(options: OrtOptions) -> tuple[list, bool]:
    """(providers to try in order, whether the caller asked for them explicitly)."""
    if options.providers:
        return [canonical_provider(p) for p in options.providers], True
    if options.device is None:
        return list(PROVIDER_PRIORITY), False
    kind = options.device.kind
    return list(DEVICE_PROVIDERS.get(kind, ())), kind is not DeviceKind.CPU


def _external_bytes(source: ModelSource, refs: list) -> dict:
    """External data read once (and checked against the manifest for a bundle)."""
    if not refs:
        return {}
    data = read_external_data(source.path, refs)
    if source.external_sha256 is not None:
        for loc, blob in data.items():
            want = source.external_sha256.get(loc)
            if want is None:
                raise IntegrityError(f"{source.path} references external data {loc!r}, which the manifest does not "
                                     "list with a sha256; re-convert the bundle")
            if _bundle.sha256_bytes(blob) != want:
                raise IntegrityError(f"external data {loc!r} of {source.path} does not match its sha256 in the "
                                     "manifest: the file was modified; re-copy the bundle or re-convert")
    return data


def _raw(t, quantized_inside: bool = False) -> RawTensor:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in t.shape)
    dtype = _ORT_DTYPES.get(t.type)
    if dtype is None:
        raise ModelFormatError(f"tensor {t.name!r} has type {t.type}, which edgeship does not handle")
    dtype = np.dtype(dtype)
    return RawTensor(name=t.name, shape=shape, dtype=dtype, quantized_inside=quantized_inside and dtype.kind == "f")
