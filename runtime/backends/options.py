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

__all__ = ["BackendOptions", "CompiledModelOptions", "DelegateSpec", "GraphOptimization", "OrtOptions",
           "TFLiteOptions"]


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
