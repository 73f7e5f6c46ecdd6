"""ONNX Runtime backend: execution providers in priority order, checked external data.

The backend opens one ``.onnx`` file with ``onnxruntime.InferenceSession``.
ONNX models carry float inputs and outputs (an INT8 model keeps its
QuantizeLinear/DequantizeLinear pairs inside), so the raw tensors are float.

Execution providers are tried in this order, among those the installed
onnxruntime reports in ``get_available_providers()``: TensorRT, CUDA, OpenVINO,
CoreML, NNAPI, QNN, CPU. ``device`` (or ``options["providers"]``) narrows the
choice; a requested provider that is missing is a fallback, recorded in
``info.skipped``, and an error (:class:`~edgeship.errors.FallbackError`) with
``strict=True``. ``info.providers`` is what the session actually uses
(``session.get_providers()``), not what was asked for.

External data (security)
------------------------
This module must not import the ``onnx`` package, so it carries a small
protobuf *wire-format* reader (no generated classes, no native code) that walks
ModelProto -> graphs, functions, training graphs -> nodes -> attributes ->
tensors and sparse tensors, and collects every ``external_data`` reference.
Each reference is checked by :func:`check_external_location` before ONNX
Runtime sees the model: absolute paths, ``..`` components, symlinks in any
component below the model folder, hard links, non-regular files, files that
resolve outside the folder, and offset/length past the end of the file are
refused with :class:`~edgeship.errors.UnsafeModelError`. The check only
``lstat``s paths below the model folder; it never opens a referenced file.
The converters use the same policy function (``edgeship.converters.onnx_safety``)
after parsing with ``onnx``. ONNX Runtime itself (1.2x+) validates external
paths too; ours is the first line, not the only one.

Limits: the check and the session's own read of the folder are two steps; a
process that can rewrite the model folder between them is outside this threat
model (a model file *from* somebody is inside it). A model without external
data is read once and the checked bytes are what the session parses.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Sequence

import numpy as np

from edgeship.errors import (
    BackendUnavailableError,
    FallbackError,
    InputError,
    ModelFormatError,
    UnsafeModelError,
)

from . import Backend, ExecutionInfo, RawTensor

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

# device name -> providers it asks for, best first (CPU is always the last resort).
DEVICE_PROVIDERS = {
    "auto": PROVIDER_PRIORITY,
    "cpu": (CPU,),
    "gpu": (TENSORRT, CUDA),
    "cuda": (CUDA,),
    "tensorrt": (TENSORRT, CUDA),
    "trt": (TENSORRT, CUDA),
    "jetson": (TENSORRT, CUDA),
    "openvino": (OPENVINO,),
    "coreml": (COREML,),
    "nnapi": (NNAPI,),
    "npu": (QNN, NNAPI),
    "qnn": (QNN,),
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


def _canonical_provider(name: str) -> str:
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


def provider_options(provider: str, *, model_sha256: str, qdq: bool, options: dict) -> dict:
    """The options edgeship passes to one execution provider."""
    if provider == TENSORRT:
        cache = options.get("trt_cache_dir") or trt_cache_dir(model_sha256)
        os.makedirs(cache, exist_ok=True)
        opts = {
            "trt_fp16_enable": "True" if options.get("fp16", True) else "False",
            "trt_int8_enable": "True" if qdq else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
        }
        table = options.get("trt_calibration_table")
        if table and not qdq:  # FP32 model run in INT8 with a table (see edgeship.runtime.accel)
            if os.path.dirname(os.path.abspath(table)) != os.path.abspath(cache):
                import shutil  # noqa: PLC0415

                shutil.copyfile(table, os.path.join(cache, os.path.basename(table)))
            opts.update(trt_int8_enable="True", trt_int8_calibration_table_name=os.path.basename(table),
                        trt_int8_use_native_calibration_table="False")
        if "device_id" in options:
            opts["device_id"] = str(int(options["device_id"]))
        return opts
    if provider == CUDA:
        opts = {"cudnn_conv_algo_search": "HEURISTIC"}
        if "device_id" in options:
            opts["device_id"] = str(int(options["device_id"]))
        return opts
    if provider == OPENVINO:
        return {"device_type": str(options.get("openvino_device", "CPU"))}
    if provider == COREML:
        return {"ModelFormat": "MLProgram", "MLComputeUnits": str(options.get("coreml_units", "ALL"))}
    if provider == QNN:
        backend = options.get("qnn_backend_path")
        return {"backend_path": backend} if backend else {}
    return {}


# --------------------------------------------------------------------------------------
# Protobuf wire-format scan (no `onnx` import)
# --------------------------------------------------------------------------------------

_MAX_DEPTH = 64


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ModelFormatError("malformed protobuf: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field_number, wire_type, value) for one message; value is (s, e) for bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise ModelFormatError("malformed protobuf: field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield field, wt, val
        elif wt == 1:
            pos += 8
            if pos > end:
                raise ModelFormatError("malformed protobuf: truncated fixed64")
        elif wt == 5:
            pos += 4
            if pos > end:
                raise ModelFormatError("malformed protobuf: truncated fixed32")
        elif wt == 2:
            ln, pos = _varint(buf, pos, end)
            if pos + ln > end:
                raise ModelFormatError("malformed protobuf: length-delimited field runs past its message")
            yield field, wt, (pos, pos + ln)
            pos += ln
        else:
            raise ModelFormatError(f"malformed protobuf: unsupported wire type {wt}")
    if pos != end:
        raise ModelFormatError("malformed protobuf: message overruns its end")


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError("malformed protobuf: string field is not UTF-8") from exc


class _Scan:
    def __init__(self, buf) -> None:
        self.buf = buf
        self.refs: list[dict] = []  # {"tensor", "location", "offset", "length", "external"}
        self.op_types: set = set()
        self.has_graph = False

    # ModelProto: graph=7, training_info=20, functions=25
    def model(self, s: int, e: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f == 7:
                self.has_graph = True
                self.graph(*v, 1)
            elif f == 20:  # TrainingInfoProto: initialization=1, algorithm=2
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 in (1, 2):
                        self.graph(*v2, 2)
            elif f == 25:  # FunctionProto: node=7, attribute_proto=11
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 == 7:
                        self.node(*v2, 2)
                    elif wt2 == 2 and f2 == 11:
                        self.attribute(*v2, 2)

    def _depth(self, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ModelFormatError(f"model nests subgraphs more than {_MAX_DEPTH} deep")

    # GraphProto: node=1, initializer=5, sparse_initializer=15
    def graph(self, s: int, e: int, depth: int) -> None:
        self._depth(depth)
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f == 1:
                self.node(*v, depth)
            elif f == 5:
                self.tensor(*v)
            elif f == 15:
                self.sparse(*v)

    # NodeProto: op_type=4, attribute=5
    def node(self, s: int, e: int, depth: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt == 2 and f == 4:
                self.op_types.add(_text(self.buf, v))
            elif wt == 2 and f == 5:
                self.attribute(*v, depth)

    # AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
    def attribute(self, s: int, e: int, depth: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f in (5, 10):
                self.tensor(*v)
            elif f in (6, 11):
                self.graph(*v, depth + 1)
            elif f in (22, 23):
                self.sparse(*v)

    # SparseTensorProto: values=1, indices=2
    def sparse(self, s: int, e: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt == 2 and f in (1, 2):
                self.tensor(*v)

    # TensorProto: name=8, external_data=13 (key=1, value=2), data_location=14
    def tensor(self, s: int, e: int) -> None:
        name = ""
        entries: dict = {}
        external = False
        for f, wt, v in _fields(self.buf, s, e):
            if f == 8 and wt == 2:
                name = _text(self.buf, v)
            elif f == 14 and wt == 0:
                external = v == 1
            elif f == 13 and wt == 2:
                key = val = ""
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 == 1:
                        key = _text(self.buf, v2)
                    elif wt2 == 2 and f2 == 2:
                        val = _text(self.buf, v2)
                if key in entries:
                    raise UnsafeModelError(f"tensor {name or '?'!r} repeats external_data key {key!r}")
                entries[key] = val
        if external or entries:
            self.refs.append({"tensor": name, "external": external, **_ref_fields(name, entries)})


def _ref_fields(name: str, entries: dict) -> dict:
    out = {"location": entries.get("location"), "offset": None, "length": None}
    for k in ("offset", "length"):
        if k in entries and entries[k] != "":
            try:
                out[k] = int(entries[k])
            except ValueError as exc:
                raise ModelFormatError(f"tensor {name!r}: external_data {k}={entries[k]!r} is not an integer") from exc
    return out


def scan_model_bytes(data) -> _Scan:
    """Walk a serialized ModelProto without the ``onnx`` package.

    Raises:
        ModelFormatError: the bytes are not a well-formed ModelProto.
    """
    buf = memoryview(data)
    scan = _Scan(buf)
    scan.model(0, len(buf))
    if not scan.has_graph:
        raise ModelFormatError("not an ONNX model: no graph in the protobuf")
    return scan


# --------------------------------------------------------------------------------------
# External-data policy (shared with edgeship.converters.onnx_safety)
# --------------------------------------------------------------------------------------


def _refuse(tensor: str, location, why: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"tensor {tensor!r} has external data at {location!r}: {why}; refusing to load it "
        "(external data must be a plain file inside the model's folder)"
    )


def check_external_location(model_dir: str, tensor: str, location, offset=None, length=None) -> str:
    """Check one external-data reference and return the file it names.

    Only ``lstat``s components below ``model_dir``; never opens the file.

    Raises:
        UnsafeModelError: absolute path, ``..``, a symlink in any component, a hard
            link, not a regular file, outside the folder after ``realpath``,
            negative or past-the-end offset/length.
        ModelFormatError: no location, or the file does not exist.
    """
    if location is None or location == "":
        raise ModelFormatError(f"tensor {tensor!r} is marked external but names no location")
    if "\x00" in location:
        raise _refuse(tensor, location, "the path contains a NUL byte")
    norm = location.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(location) or (len(norm) > 1 and norm[1] == ":") or norm.startswith("~"):
        raise _refuse(tensor, location, "absolute paths are not allowed")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _refuse(tensor, location, "'..' components are not allowed")
    if not parts:
        raise _refuse(tensor, location, "the path names the model folder itself")
    base = os.path.abspath(model_dir)
    cur = base
    st = None
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError as exc:
            raise ModelFormatError(f"tensor {tensor!r}: external data file {location!r} does not exist in {base}") from exc
        except OSError as exc:
            raise _refuse(tensor, location, f"cannot stat {part!r} ({exc.strerror})") from exc
        if stat.S_ISLNK(st.st_mode):
            which = "the file" if i == len(parts) - 1 else f"the parent folder {part!r}"
            raise _refuse(tensor, location, f"{which} is a symbolic link")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise _refuse(tensor, location, f"{part!r} is not a folder")
    assert st is not None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(tensor, location, "it is not a regular file")
    if st.st_nlink > 1:
        raise _refuse(tensor, location, f"it is a hard link ({st.st_nlink} names for one file)")
    real_base = os.path.realpath(base)
    real = os.path.realpath(cur)
    if os.path.commonpath([real_base, real]) != real_base:
        raise _refuse(tensor, location, "it resolves outside the model folder")
    size = st.st_size
    off = 0 if offset is None else offset
    if off < 0 or (length is not None and length < 0):
        raise _refuse(tensor, location, f"negative offset/length ({offset}, {length})")
    if off > size or (length is not None and off + length > size):
        raise _refuse(tensor, location, f"offset {off} + length {length} is past the end of the {size}-byte file")
    return real


def check_refs(model_path: str, refs: list) -> list:
    """Apply :func:`check_external_location` to every reference; returns the files."""
    model_dir = os.path.dirname(os.path.abspath(model_path))
    return [check_external_location(model_dir, r["tensor"], r["location"], r["offset"], r["length"]) for r in refs]


def read_checked_model(path: str) -> tuple[bytes, _Scan]:
    """Read ``path``, scan its protobuf and check every external-data reference.

    Raises:
        ModelFormatError: not a readable, well-formed ONNX file.
        UnsafeModelError: an external-data reference breaks the policy.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except IsADirectoryError as exc:
        raise ModelFormatError(f"{path} is a folder, not an .onnx file") from exc
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror}") from exc
    if not data:
        raise ModelFormatError(f"{path} is empty")
    try:
        scan = scan_model_bytes(data)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{path} is not a valid ONNX model ({exc})") from None
    check_refs(path, scan.refs)
    return data, scan


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
    """Runs an ``.onnx`` file with ONNX Runtime.

    ``options`` keys: ``device`` (auto|cpu|gpu|cuda|tensorrt|openvino|coreml|nnapi|npu|qnn),
    ``providers`` (explicit list, overrides ``device``), ``device_id``,
    ``trt_cache_dir``, ``fp16`` (TensorRT, default True), ``openvino_device``,
    ``coreml_units``, ``qnn_backend_path``, ``graph_optimization`` (basic|extended|all).

    Raises:
        ModelFormatError: malformed ``.onnx``.
        UnsafeModelError: external data that escapes the model folder.
        FallbackError: ``strict`` and a requested provider cannot be used.
        BackendUnavailableError: onnxruntime is not installed.
    """

    name = "onnxruntime"
    formats = ("onnx",)
    thread_safe = True

    def __init__(self, path: str, *, threads: int | None = None, delegates: Sequence = (), strict: bool = False,
                 options: dict | None = None) -> None:
        options = dict(options or {})
        self.path = os.fspath(path)
        self._session = None
        ort = _import_ort()
        data, scan = read_checked_model(self.path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.qdq = bool({"QuantizeLinear", "DequantizeLinear"} & scan.op_types)

        available = list(ort.get_available_providers())
        requested, device_requested = self._requested(options, delegates)
        skipped: list = []
        chosen: list = []
        for prov in requested:
            if prov in available:
                chosen.append(prov)
            else:
                skipped.append(f"{prov}: not available in this onnxruntime build "
                               f"({ort.get_device()}; available: {', '.join(available)})")
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
        if threads is not None:
            if int(threads) < 1:
                raise InputError(f"threads must be >= 1, got {threads!r}")
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        level = str(options.get("graph_optimization", "all")).lower()
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        # Without external data the checked bytes are what ORT parses (no second read).
        model_arg = self.path if scan.refs else data
        try:
            self._session = ort.InferenceSession(model_arg, sess_options=so, providers=provs)
        except Exception as exc:  # ORT raises its own pybind exception types
            kind = type(exc).__name__
            if kind in ("InvalidProtobuf", "InvalidGraph", "Fail", "NotImplemented", "RuntimeException", "InvalidArgument"):
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
        self.inputs = [self._raw(t) for t in self._session.get_inputs()]
        self.outputs = [self._raw(t) for t in self._session.get_outputs()]
        self._output_names = [t.name for t in self.outputs]

    @staticmethod
    def _requested(options: dict, delegates: Sequence) -> tuple[list, bool]:
        """(providers to try in order, whether the caller asked for them explicitly)."""
        explicit = options.get("providers")
        if explicit:
            return [_canonical_provider(str(p)) for p in explicit], True
        device = options.get("device")
        if device is None and delegates:
            device = str(delegates[0])
        if device is None or str(device).lower() == "auto":
            return list(PROVIDER_PRIORITY), False
        key = str(device).lower()
        if key in DEVICE_PROVIDERS:
            provs = list(DEVICE_PROVIDERS[key])
            return provs, key != "cpu"
        prov = _canonical_provider(str(device))
        if prov in PROVIDER_PRIORITY or prov.endswith("ExecutionProvider"):
            return [prov], prov != CPU
        raise InputError(
            f"unknown device {device!r} for onnxruntime; expected one of {', '.join(sorted(DEVICE_PROVIDERS))} "
            "or an execution provider name"
        )

    @staticmethod
    def _raw(t) -> RawTensor:
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in t.shape)
        dtype = _ORT_DTYPES.get(t.type)
        if dtype is None:
            raise ModelFormatError(f"tensor {t.name!r} has type {t.type}, which edgeship does not handle")
        return RawTensor(name=t.name, shape=shape, dtype=np.dtype(dtype))

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401, PLC0415
        except ImportError:
            return False, "onnxruntime is not installed (pip install \"edgeship[onnx]\")"
        return True, ""

    def invoke(self, arrays: list) -> list:
        if self._session is None:
            raise BackendUnavailableError(f"{self.path}: the model is closed")
        if len(arrays) != len(self.inputs):
            raise InputError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        feed = {}
        for spec, arr in zip(self.inputs, arrays):
            a = np.asarray(arr)
            if a.dtype != spec.dtype:
                a = a.astype(spec.dtype)
            feed[spec.name] = np.ascontiguousarray(a)
        try:
            return list(self._session.run(self._output_names, feed))
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
