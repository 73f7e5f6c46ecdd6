"""Deployment targets: the rules each one imposes on a conversion, and the steps run for it.

``parse_targets`` applies the rules (what a target forces or prefers); the export
stage asks :func:`export_target` which target an exporter should tune a format
for and :func:`artifact_targets` which targets an artifact is meant for; after
validation, :func:`run_steps` runs the step of each target that has one, from the
:data:`STEPS` table (``edgetpu``: compile with ``edgetpu_compiler``; ``jetson``:
the TensorRT INT8 calibration table of an FP32 ONNX artifact, with :mod:`.tensorrt`).
``intel`` has no step: its INT8 ONNX artifact is quantized by :mod:`.openvino` (NNCF when
installed) in the export stage, so it is validated like every artifact.

A step is ``step(ctx: TargetContext) -> dict | None``: it may add artifacts to
``ctx.artifacts`` and warnings to ``ctx.warnings``; what it returns is stored in
the manifest's ``settings`` under the target's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

from edgeship.errors import InputError
from edgeship.vocab import Format, IOType, Precision, Target

from ..choices import choice

__all__ = ["parse_targets", "parse_formats", "export_target", "artifact_targets", "TargetContext", "STEPS", "run_steps"]

# target -> "module:function" of its step (imported only when the target is asked for)
STEPS: dict[Target, str] = {
    Target.EDGETPU: "edgeship.converters.targets.edgetpu:step",
    Target.JETSON: "edgeship.converters.targets.jetson:step",
}


def parse_formats(formats) -> tuple:
    """The requested formats as a tuple of :class:`Format` (duplicates dropped).

    Raises:
      InputError: an empty or unknown format.
    """
    if isinstance(formats, (str, Format)):
        formats = (formats,)
    try:
        items = list(formats)
    except TypeError:
        raise InputError(f"formats={formats!r} must be a format name or a sequence of them") from None
    if not items:
        raise InputError("formats is empty; expected at least one of 'tflite', 'onnx'")
    return tuple(dict.fromkeys(choice(Format, f, "formats") for f in items))


def parse_targets(target: str | Sequence[str] | None, precision, io, formats) -> tuple:
    """``(targets, precision, io, formats)`` with the targets' rules applied.

    ``edgetpu``: full INT8 TFLite with int8/uint8 I/O (the compiler refuses anything
    else); ``gpu``: fp16 TFLite by default; ``jetson``: INT8 QDQ ONNX (symmetric, for
    TensorRT) by default. ``None`` precision/formats mean "what the targets prefer";
    explicit choices that a target cannot run are an :class:`InputError`.

    Raises:
      InputError: an unknown target, or a choice a target cannot run.
    """
    items = [t.strip() for t in target.split(",")] if isinstance(target, str) else list(target or ())
    names = dict.fromkeys(str(getattr(t, "value", t)).strip().lower() for t in items if str(t).strip())
    tgts = tuple(choice(Target, t, "target") for t in names) or (Target.CPU,)
    kinds = set(tgts)
    if precision is None:
        precision = Precision.FP16 if kinds == {Target.GPU} else Precision.INT8
    if formats is None:
        formats = ((Format.ONNX,) if kinds in ({Target.JETSON}, {Target.INTEL}) else
                   (Format.TFLITE, Format.ONNX) if Target.JETSON in kinds else (Format.TFLITE,))
    if Target.EDGETPU in kinds:
        if io is None:  # the target's preferred I/O: the compiler accepts int8/uint8 only
            io = IOType.INT8
        prec = choice(Precision, precision, "precision")
        fmts = parse_formats(formats)
        if prec is not Precision.INT8:
            raise InputError(f"target edgetpu needs precision='int8' (the Edge TPU runs full-integer models only), "
                             f"got {prec.value!r}")
        if str(getattr(io, "value", io)).lower() not in (IOType.INT8.value, IOType.UINT8.value):
            raise InputError(f"target edgetpu needs io='int8' or io='uint8' (the I/O types the Edge TPU compiler "
                             f"accepts), got {getattr(io, 'value', io)!r}")
        if Format.TFLITE not in fmts:
            raise InputError("target edgetpu needs the tflite format (the Edge TPU compiler takes .tflite files); "
                             f"formats={[f.value for f in fmts]}")
    if Target.INTEL in kinds and Format.ONNX not in parse_formats(formats):
        raise InputError("target intel needs the onnx format (its INT8 artifact is a QDQ .onnx for OpenVINO); "
                         "add 'onnx' to formats")
    if Target.JETSON in kinds and Format.ONNX not in parse_formats(formats):
        raise InputError("target jetson needs the onnx format (TensorRT through ONNX Runtime runs INT8 QDQ ONNX); "
                         "add 'onnx' to formats")
    return tgts, precision, io, formats


def artifact_targets(tgts: tuple, fmt: Format) -> list:
    """The targets one artifact of format ``fmt`` is meant for (manifest ``targets``)."""
    skip = (Target.JETSON,) if fmt is Format.TFLITE else (Target.EDGETPU,)
    return [t.value for t in tgts if t not in skip] or [t.value for t in tgts]


def export_target(tgts: tuple, fmt: Format) -> str:
    """The target the exporter of ``fmt`` tunes for (ONNX: the quantization scheme)."""
    if fmt is Format.ONNX:
        if Target.JETSON in tgts:
            return Target.JETSON.value
        if Target.INTEL in tgts:
            return Target.INTEL.value
        return next((t.value for t in tgts if t is not Target.EDGETPU), Target.CPU.value)
    return Target.EDGETPU.value if Target.EDGETPU in tgts else tgts[0].value


@dataclass(frozen=True)
class TargetContext:
    """What a target step sees: the bundle writer, the artifact entries (mutable list of dicts,
    already validated), the warnings list, the plan, the loaded source and the calibration
    samples (source layout; None without calibration data)."""

    writer: Any
    artifacts: list
    warnings: list
    plan: Any
    source: Any
    calib: Any = None


def find_step(target: Target):
    """The step function of ``target``, or None (no step, or its module is not installed)."""
    ref = STEPS.get(target)
    if ref is None:
        return None
    modname, _, func = ref.partition(":")
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            return None
        raise
    return getattr(module, func, None)


def run_steps(ctx: TargetContext, targets: tuple) -> dict:
    """Run the step of each target in order; ``{target: record}`` for the manifest's ``settings``."""
    records = {}
    for t in targets:
        fn = find_step(t)
        if fn is None:
            continue
        record = fn(ctx)
        if record is not None:
            records[t.value] = record
    return records
