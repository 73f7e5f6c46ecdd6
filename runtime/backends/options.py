"""Typed, frozen options per backend (instead of a string-keyed dict).

Every field has the default the backend uses; devices are
:class:`edgeship.vocab.Device` (a string is parsed by ``Device.parse``, the one
parser). :func:`edgeship.runtime.load` builds these from its own arguments;
pass one as ``load(..., options=OrtOptions(...))`` for the long tail.

Example::

    from edgeship.runtime import OrtOptions, load

    model = load("bundle/", artifact="onnx",
                 options=OrtOptions(providers=("tensorrt", "cuda"), trt_fp16=False))
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ...errors import InputError
from ...vocab import Device, parse

__all__ = ["BackendOptions", "CompiledModelOptions", "DelegateSpec", "GraphOptimization", "InferencePrecision",
           "OpenVINOOptions", "OrtOptions", "PerformanceHint", "TFLiteOptions", "options_for"]


def _threads(value, what: str = "threads") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise InputError(f"{what} must be a positive integer or None, got {value!r}")
    value = int(value)
    if value < 1:
        raise InputError(f"{what} must be a positive integer or None, got {value!r}")
    return value


@dataclass(frozen=True)
class DelegateSpec:
    """One TFLite external delegate: its library and ``load_delegate`` options."""

    library: str
    options: tuple = ()  # ((key, value), ...) strings

    def __post_init__(self) -> None:
        opts = self.options.items() if isinstance(self.options, dict) else self.options
        object.__setattr__(self, "options", tuple((str(k), str(v)) for k, v in opts))

    def as_dict(self) -> dict:
        return dict(self.options)


@dataclass(frozen=True)
class BackendOptions:
    """What every backend takes.

    Attributes:
      threads: CPU threads for the engine (``None``: the engine's default).
      device: Where to run (``Device``; a string is parsed). ``None``: the
        backend's default (CPU for TFLite; ONNX Runtime's provider order).
      strict: Turn any fallback into a :class:`~edgeship.errors.FallbackError`.
    """

    threads: int | None = None
    device: Device | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "threads", _threads(self.threads))
        if self.device is not None:
            object.__setattr__(self, "device", Device.parse(self.device))
        object.__setattr__(self, "strict", bool(self.strict))


@dataclass(frozen=True)
class TFLiteOptions(BackendOptions):
    """LiteRT / tflite_runtime / tensorflow.lite: XNNPACK threads and external delegates.

    ``device`` edgetpu (``edgetpu:usb:0`` ...) or gpu adds the matching delegate
    library after ``delegates``.
    """

    delegates: tuple = ()  # (DelegateSpec, ...)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "delegates", tuple(
            d if isinstance(d, DelegateSpec) else DelegateSpec(*d) for d in self.delegates))


@dataclass(frozen=True)
class CompiledModelOptions(BackendOptions):
    """LiteRT CompiledModel: ``device`` cpu, gpu or npu picks the accelerator.

    ``delegates`` do not apply (a warning, or an error with ``strict``).
    """

    delegates: tuple = ()


class GraphOptimization(str, Enum):
    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


@dataclass(frozen=True)
class OrtOptions(BackendOptions):
    """ONNX Runtime: execution providers and their options.

    Attributes:
      providers: Explicit providers in order (``"tensorrt"``, ``"cuda"``,
        ``"CUDAExecutionProvider"`` ...); overrides ``device``. CPU is always
        added last.
      device_id: GPU ordinal (TensorRT, CUDA).
      trt_cache_dir: TensorRT engine cache (default ``~/.cache/edgeship/tensorrt/<sha>``).
      trt_fp16: Let TensorRT use FP16 kernels.
      trt_calibration_table: A TensorRT INT8 calibration table for an FP32 model
        (see :mod:`edgeship.converters.targets.tensorrt`).
      openvino_device: OpenVINO ``device_type``.
      coreml_units: CoreML ``MLComputeUnits``.
      qnn_backend_path: QNN ``backend_path``.
      graph_optimization: ONNX Runtime's graph optimisation level.
    """

    providers: tuple = ()
    device_id: int | None = None
    trt_cache_dir: str | None = None
    trt_fp16: bool = True
    trt_calibration_table: str | None = None
    openvino_device: str = "CPU"
    coreml_units: str = "ALL"
    qnn_backend_path: str | None = None
    graph_optimization: GraphOptimization = GraphOptimization.ALL

    def __post_init__(self) -> None:
        super().__post_init__()
        provs = (self.providers,) if isinstance(self.providers, str) else tuple(self.providers)
        object.__setattr__(self, "providers", tuple(str(p) for p in provs))
        if self.device_id is not None and (isinstance(self.device_id, bool) or not isinstance(self.device_id, int)
                                           or self.device_id < 0):
            raise InputError(f"device_id must be a GPU ordinal (0, 1 ...), got {self.device_id!r}")
        object.__setattr__(self, "graph_optimization",
                           parse(GraphOptimization, self.graph_optimization, "graph_optimization"))


class PerformanceHint(str, Enum):
    """OpenVINO ``PERFORMANCE_HINT``: one request as fast as possible, or many in parallel."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


class InferencePrecision(str, Enum):
    """OpenVINO ``INFERENCE_PRECISION_HINT`` (``DEFAULT``: the device's own, bf16 on AMX CPUs, f16 on GPU/NPU)."""

    DEFAULT = "default"
    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    """OpenVINO: device, performance hint and inference precision.

    ``device`` cpu, gpu or npu picks the OpenVINO device (``CPU``, ``GPU``,
    ``NPU``); one this machine lacks is a fallback to the CPU (one warning, or a
    :class:`~edgeship.errors.FallbackError` with ``strict``). ``device=None``: CPU.

    Attributes:
      performance_hint: ``latency`` (default: batch 1, one stream) or ``throughput``
        (several streams; for many threads calling at once).
      inference_precision: ``default`` (the device's choice: bf16 on CPUs with
        AMX/AVX-512 BF16, f32 elsewhere), ``f32`` (exact FP32), ``bf16``, ``f16``.
        Applies to float parts of the model; INT8 (QDQ) parts stay INT8.
      ov_device: An explicit OpenVINO device string (``"GPU.1"``, ``"AUTO"``);
        overrides ``device``.
      cache_dir: OpenVINO's compiled-model cache folder (``None``: none).
      cpu_pinning: OpenVINO's ``ENABLE_CPU_PINNING`` on the CPU. Default off (OpenVINO's own
        default is on): with other busy processes on the device (camera capture, the app), pinned
        threads wait for their core; measured here, MobileNetV2-64 FP32 on 2 threads p50 1.30 ms
        pinned vs 0.78 ms not. ``True`` for a device that runs nothing else.
    """

    performance_hint: PerformanceHint = PerformanceHint.LATENCY
    inference_precision: InferencePrecision = InferencePrecision.DEFAULT
    ov_device: str | None = None
    cache_dir: str | None = None
    cpu_pinning: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cpu_pinning", bool(self.cpu_pinning))
        object.__setattr__(self, "performance_hint",
                           parse(PerformanceHint, self.performance_hint, "performance_hint"))
        object.__setattr__(self, "inference_precision",
                           parse(InferencePrecision, self.inference_precision, "inference_precision"))
        if self.ov_device is not None and (not isinstance(self.ov_device, str) or not self.ov_device.strip()):
            raise InputError(f"ov_device must be an OpenVINO device name such as 'CPU' or 'GPU.0', "
                             f"got {self.ov_device!r}")


def options_for(options, cls: type, backend: str, **extra):
    """``options`` as an instance of ``cls`` (the backend's own options class).

    ``None`` gives the defaults; another backend's options (a fallback) keep the common
    fields (threads, device, strict) plus ``extra``.

    Raises:
      InputError: ``options`` is not a :class:`BackendOptions` (a dict, say).
    """
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    if isinstance(options, BackendOptions):
        return cls(threads=options.threads, device=options.device, strict=options.strict, **extra)
    raise InputError(f"the {backend} backend takes {cls.__name__}, got {type(options).__name__}")
