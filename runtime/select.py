"""Which artifact of a bundle runs, and what a bare file is.

:func:`choose_artifact` is the rule :func:`edgeship.runtime.load` applies to a
bundle's manifest; :func:`sniff_format` tells a bare ``.tflite``/``.onnx`` file
apart. Nothing here opens an engine.
"""

from __future__ import annotations

import os

from .. import safeio
from ..errors import BundleError, FallbackError, InputError, ModelFormatError, UnsupportedModelError
from ..vocab import Device, DeviceKind, Format, Precision, values
from .backends import registry

__all__ = ["choose_artifact", "is_edgetpu", "sniff_format", "without_edgetpu"]

_EXTENSIONS = {".tflite": Format.TFLITE.value, ".onnx": Format.ONNX.value}
# Format order per device kind (TensorRT runs ONNX files; everything else prefers TFLite).
_FORMAT_ORDER = {DeviceKind.TENSORRT: (Format.ONNX.value, Format.TFLITE.value)}
_DEFAULT_FORMATS = (Format.TFLITE.value, Format.ONNX.value)
# Precision preference per device kind (lower is better); the others rank like the CPU.
_PRECISION_RANK = {
    DeviceKind.CPU: ("int8", "dynamic", "fp16", "fp32", "int16x8"),
    DeviceKind.GPU: ("fp16", "fp32", "dynamic", "int8", "int16x8"),
    DeviceKind.EDGETPU: ("int8", "int16x8", "dynamic", "fp16", "fp32"),
    DeviceKind.TENSORRT: ("int8", "fp16", "fp32", "dynamic", "int16x8"),
}


def is_edgetpu(art: dict) -> bool:
    """Whether a manifest entry is compiled for the Edge TPU (it cannot run without the delegate)."""
    return "edgetpu" in (art.get("targets") or ()) or "_edgetpu" in art["file"]


def choose_artifact(manifest: dict, artifact: str | None = None, *, backend: str | None = None,
                    device: "str | Device | None" = None) -> dict:
    """The manifest entry :func:`~edgeship.runtime.load` runs.

    ``artifact`` is a file name of the bundle, a format (``"tflite"``,
    ``"onnx"``) or a precision (``"int8"``, ``"fp16"`` ...). Among the
    candidates the default rule is, in order:

    1. a format some installed backend can run (``backend=`` restricts to its formats);
    2. TFLite before ONNX (ONNX first on ``device="tensorrt"``);
    3. on ``device="edgetpu"`` Edge TPU-compiled artifacts first, elsewhere last;
    4. precision: on CPU int8, dynamic, fp16, fp32, int16x8; on GPU fp16 first;
    5. manifest order.

    Raises:
      BundleError: no artifact matches ``artifact``.
      InputError: ``backend`` cannot run any artifact of the bundle, or ``device`` is unknown.
    """
    kind = Device.parse(device).kind
    arts = list(manifest["artifacts"])
    files = [a["file"] for a in arts]
    if artifact is not None:
        if artifact in files:
            return arts[files.index(artifact)]
        if artifact in values(Format):
            arts = [a for a in arts if a["format"] == artifact]
        elif artifact in values(Precision):
            arts = [a for a in arts if a["precision"] == artifact]
        else:
            raise BundleError(f"the bundle has no artifact {artifact!r}; pass one of its files {files}, "
                              f"a format {list(values(Format))} or a precision {list(values(Precision))}")
        if not arts:
            raise BundleError(f"the bundle has no {artifact} artifact; it has {files}")
    if backend is not None:
        formats = registry.entry(backend).formats
        matching = [a for a in arts if a["format"] in formats]
        if not matching:
            raise InputError(f"backend {backend!r} runs {', '.join(formats)} files, but the chosen artifacts are "
                             f"{[a['file'] for a in arts]}")
        arts = matching
    order = _FORMAT_ORDER.get(kind, _DEFAULT_FORMATS)
    ranks = _PRECISION_RANK.get(kind, _PRECISION_RANK[DeviceKind.CPU])
    tpu = kind is DeviceKind.EDGETPU

    def key(item):
        i, a = item
        return (0 if registry.format_available(a["format"]) else 1,
                order.index(a["format"]) if a["format"] in order else len(order),
                (0 if is_edgetpu(a) else 1) if tpu else (1 if is_edgetpu(a) else 0),
                ranks.index(a["precision"]) if a["precision"] in ranks else len(ranks), i)

    return min(enumerate(arts), key=key)[1]


def without_edgetpu(manifest: dict) -> dict:
    """``manifest`` without its Edge TPU-compiled artifacts.

    Raises:
      FallbackError: nothing is left (the bundle has no CPU artifact).
    """
    rest = [a for a in manifest["artifacts"] if not is_edgetpu(a)]
    if not rest:
        raise FallbackError("the Edge TPU delegate cannot be loaded and the bundle has no CPU artifact; "
                            "install libedgetpu (https://coral.ai/software) or re-convert for the CPU")
    return dict(manifest, artifacts=rest)


def sniff_format(path: str, head: bytes | None = None) -> str:
    """``"tflite"`` or ``"onnx"`` for a bare model file (extension, else the TFLite magic in ``head``,
    the file's first bytes, read from ``path`` when not given).

    Raises:
      ModelFormatError: the file cannot be read.
      UnsupportedModelError: it is neither.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if head is None:
        with safeio.open_regular(path, error=ModelFormatError, what="model file") as fh:
            head = fh.read(8)
    if head[4:8] == b"TFL3":
        return Format.TFLITE.value
    raise UnsupportedModelError(f"{path} is neither a bundle folder nor a .tflite/.onnx file; "
                                "pass a bundle written by `edgeship convert` or a model file")
