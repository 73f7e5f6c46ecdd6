"""The one vocabulary of edgeship: every choice a user makes is one of these enums.

The CLI (``choices=``), the converters and the runtime all take their values
from here; nothing else defines the list of precisions, targets, tasks or
devices. Each enum is a ``str`` enum, so ``Precision.INT8 == "int8"`` and the
manifest stores plain strings.

``parse(EnumType, value, what)`` turns user text into a member and raises an
:class:`~edgeship.errors.InputError` that names the accepted values;
``what`` is the name the user typed (``"--precision"`` on the CLI,
``"precision"`` in Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from edgeship.errors import InputError


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT16X8 = "int16x8"


class IOType(str, Enum):
    """Input/output tensor type of an artifact (``INT16`` is the I/O of an ``int16x8`` model)."""

    FLOAT = "float"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"


class Format(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"


class Layout(str, Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"
    OTHER = "other"


class Target(str, Enum):
    CPU = "cpu"
    EDGETPU = "edgetpu"
    GPU = "gpu"
    JETSON = "jetson"
    INTEL = "intel"


class Task(str, Enum):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    REGRESSION = "regression"
    OTHER = "other"


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class DeviceKind(str, Enum):
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    EDGETPU = "edgetpu"
    TENSORRT = "tensorrt"


E = TypeVar("E", bound=Enum)


def values(enum: type[Enum]) -> tuple[str, ...]:
    """The accepted spellings of ``enum``, in declaration order (for ``choices=``)."""
    return tuple(m.value for m in enum)


def parse(enum: type[E], value, what: str) -> E:
    """``value`` (a member or its string) as a member of ``enum``.

    Raises:
      InputError: ``value`` is not one of the enum's values; the message names ``what``.
    """
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"{what} {value!r} is not supported; expected one of "
                         f"{', '.join(values(enum))}") from None


@dataclass(frozen=True)
class Device:
    """A device the runtime can be asked to run on: ``cpu``, ``gpu``, ``npu``,
    ``tensorrt``, ``edgetpu`` or ``edgetpu:usb:0`` / ``edgetpu:pci:0``.

    ``spec`` is what follows the first ``:`` (the Edge TPU's device option), or ``""``.
    """

    kind: DeviceKind
    spec: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.spec}" if self.spec else self.kind.value

    @classmethod
    def parse(cls, text: "str | Device | None", what: str = "device") -> "Device":
        """The one parser of device strings (``None`` means ``cpu``).

        Raises:
          InputError: an unknown kind, or a ``:spec`` on a kind that takes none.
        """
        if isinstance(text, Device):
            return text
        if text is None or text == "":
            return cls(DeviceKind.CPU)
        if not isinstance(text, str):
            raise InputError(f"{what} must be a string such as 'cpu' or 'edgetpu:usb:0', not {type(text).__name__}")
        head, _, spec = text.strip().partition(":")
        kind = parse(DeviceKind, head.lower(), what)
        if spec and kind is not DeviceKind.EDGETPU:
            raise InputError(f"{what} {text!r}: only 'edgetpu' takes a ':spec' (edgetpu:usb:0, edgetpu:pci:0)")
        if kind is DeviceKind.EDGETPU and spec and not (spec in ("usb", "pci") or spec.startswith(("usb:", "pci:"))):
            raise InputError(f"{what} {text!r}: the Edge TPU spec is usb, usb:N, pci or pci:N")
        return cls(kind, spec)
