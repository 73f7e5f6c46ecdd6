"""The refine stage of ``convert()``: accuracy-aware fallback and per-layer errors of INT8 artifacts.

One path for every format: a per-(artifact format, source kind) *sensitivity
factory* (the :data:`SENSITIVITIES` table) measures the artifact's layers or
nodes, :func:`edgeship.converters.refine.fallback` keeps the worst in float until
``max_drop`` is met, and the winning attempt replaces the artifact file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
import shutil
import tempfile
from typing import Callable, NamedTuple

from edgeship import metrics as _metrics
from edgeship.errors import UnsupportedModelError, ValidationFailedError
from edgeship.progress import step
from edgeship.vocab import Precision

from .. import stages
from . import best_attempt, describe_attempts, fallback

__all__ = ["SENSITIVITIES", "refine_artifact", "layer_errors", "refine_and_validate", "Measured"]


class Sensitivity(NamedTuple):
    """How one (artifact format, source kind) is refined."""

    build: Callable  # build(export_source, request, workdir) -> a measured sensitivity
    read_io: Callable  # read_io(path) -> (inputs, outputs) tensor entries of the artifact file
    method: str  # what the manifest record says was done
    user_exclude: bool  # the user's ``exclude`` stays in every attempt (and in the record's denylist)


def _tflite_build(export_source, request, workdir, task=None):
    from .tflite import TfliteLayerErrors  # noqa: PLC0415

    return TfliteLayerErrors(export_source, dataclasses.replace(request, workdir=workdir))


def _tflite_io(path):
    from ..tflite import read_io  # noqa: PLC0415

    return read_io(path)


def _onnx_build(export_source, request, workdir, task=None):
    from edgeship.vocab import Task  # noqa: PLC0415

    from ..onnx_formats import input_shape_of  # noqa: PLC0415
    from ..task_infer import infer_task  # noqa: PLC0415
    from .onnx import OnnxNodeErrors  # noqa: PLC0415

    if export_source.kind == "keras":  # the FP32 ONNX model is a fresh tf2onnx export
        from ..onnx_export import export_keras  # noqa: PLC0415

        fp32 = os.path.join(workdir, "keras_fp32.onnx")
        export_keras(export_source.handle, fp32, samples=request.calib, reference=export_source.predict,
                     input_shape=input_shape_of(export_source))
    else:  # the (possibly pruned) ONNX export source
        fp32 = export_source.handle
    # a dense map: the plan's task, or inferred from the graph as onnx_formats does
    dense = export_source.kind == "onnx" and (task is Task.SEGMENTATION or (
        task is None and infer_task(export_source)[0] is Task.SEGMENTATION))
    return OnnxNodeErrors(fp32, request.calib, workdir=workdir, target=request.target,
                          calib_method=request.calib_method, per_channel=request.per_channel,
                          input_shape=input_shape_of(export_source), always_exclude=request.exclude,
                          keep_head_float=request.keep_head_float, dense_map=dense)


def _onnx_io(path):
    import onnx  # noqa: PLC0415

    from ..onnx_quant import io_tensors  # noqa: PLC0415

    return io_tensors(onnx.load(path))


_TFLITE = Sensitivity(_tflite_build, _tflite_io, "TFLite QuantizationDebugger per-layer SQNR ranking; "
                      "denylisted_nodes kept in float one at a time", False)
_ONNX = Sensitivity(_onnx_build, _onnx_io, "ONNX Runtime qdq_loss_debug per-node SQNR ranking; nodes kept in "
                    "float via exclude one at a time", True)

# (artifact format, source kind) -> how its INT8 artifacts are refined
SENSITIVITIES = {
    ("tflite", "keras"): _TFLITE,
    ("onnx", "keras"): _ONNX,
    ("onnx", "onnx"): _ONNX,
}


def _names(kept: list) -> str:
    return str(kept) if len(kept) <= 6 else f"{len(kept)} nodes ({', '.join(kept[:3])}, ...)"


def refine_artifact(entry: dict, w, export_source, request, evaluate: Callable[[str], dict], max_drop: float,
                    warnings: list, task=None) -> dict | None:
    """Keep sensitive parts of an INT8 artifact in float until its drop is within ``max_drop``.

    Rewrites the artifact file and ``entry`` when an attempt succeeds; returns the record
    for ``settings.accuracy_aware`` (None when the plain artifact already passes, or when
    this kind of artifact cannot be refined: a warning says so).

    Raises:
        ValidationFailedError: no attempt met ``max_drop`` (the best one is described).
    """
    fname = entry["file"]
    try:
        base = evaluate(w.path(fname))
        base_drop = float(_metrics.drop_points(base))
    except ValidationFailedError:
        base, base_drop = {}, 100.0
    if base_drop <= max_drop:
        return None
    how = SENSITIVITIES.get((entry.get("format"), export_source.kind))
    if how is None or entry.get("precision") != Precision.INT8.value:
        warnings.append(f"{fname}: auto_fallback applies to int8 TFLite artifacts of Keras sources and int8 ONNX "
                        "artifacts of ONNX or Keras sources; this artifact was not adjusted")
        return None
    baseline = {"drop_points": base_drop, "bytes": entry["bytes"], "gzip_bytes": entry["gzip_bytes"],
                "accuracy": base.get("accuracy"), "top1_agreement": base.get("top1_agreement"),
                "miou": base.get("miou")}
    work = tempfile.mkdtemp(prefix=".fallback-", dir=w.dir)
    try:
        with step(f"{fname}: INT8 dropped {base_drop:.1f} points, keeping sensitive parts in float"):
            sens = how.build(export_source, request, work, task)
            res = fallback(sens, evaluate, max_drop=max_drop, baseline=baseline)
        if not res.ok:
            best = best_attempt(res.attempts)
            raise ValidationFailedError(
                f"{fname}: INT8 dropped {base_drop:.1f} points (max_drop={max_drop}); keeping the most sensitive "
                f"{sens.unit}s in float did not bring it within max_drop. Attempts: {describe_attempts(res.attempts)}. "
                f"Best: {best['drop_points']:.1f} points with {_names(best['kept_float']) or f'no {sens.unit}'} in float; "
                "nothing was written"
            )
        old_bytes, old_gzip = entry["bytes"], entry["gzip_bytes"]
        shutil.copyfile(res.model, w.path(fname))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry["inputs"], entry["outputs"] = how.read_io(w.path(fname))
    entry.update(w.file_info(fname))
    note = (f"accuracy-aware: kept {', '.join(res.kept_float)} in float (INT8 elsewhere); drop {base_drop:.1f} -> "
            f"{res.attempts[-1]['drop_points']:.1f} points, {entry['bytes'] - old_bytes:+d} bytes")
    entry["notes"] = list(entry.get("notes") or []) + [note]
    warnings.append(f"{fname}: {note}")
    user = list(request.exclude or ()) if how.user_exclude else []
    return {
        "method": how.method,
        "max_drop": max_drop,
        "baseline_drop_points": base_drop,
        "kept_float": list(res.kept_float),
        "denylisted_nodes": [*user, *(n for n in res.denylist if n not in user)],
        "attempts": res.attempts,
        "size_cost_bytes": int(entry["bytes"] - old_bytes),
        "size_cost_gzip_bytes": int(entry["gzip_bytes"] - old_gzip),
        "seconds": round(res.seconds, 2),
        "layer_errors": res.layer_errors,
        # the decode head found in the graph: float in every attempt, never a candidate
        "detection_head": {"kept_float": list(getattr(sens, "head", []) or []),
                           "summary": getattr(sens, "head_summary", None)} if getattr(sens, "head", None) else {},
    }


def layer_errors(entry: dict, export_source, request, warnings: list) -> list | None:
    """The ten op outputs with the lowest per-layer SQNR of an INT8 TFLite artifact (on request)."""
    if (entry.get("format"), export_source.kind) != ("tflite", "keras") or \
            entry.get("precision") != Precision.INT8.value:
        return None
    work = tempfile.mkdtemp(prefix=".layer-errors-")
    try:
        return _TFLITE.build(export_source, request, work).top(10)
    except UnsupportedModelError as exc:
        warnings.append(f"{entry['file']}: per-layer quantization error not measured: {exc}")
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Measured:
    """What :func:`refine_and_validate` measured: metrics, per-layer errors and ``settings`` records per file."""

    validation: dict
    layer_errors: dict
    extras: dict


def refine_and_validate(plan, exported, w, source, export_source, reference, data, warnings: list) -> Measured:
    """Per artifact: refine it (``auto_fallback``), measure its layer errors (``layer_errors``), validate it.

    Raises:
        ValidationFailedError: an artifact collapsed, or lost more than ``max_drop`` (after refinement).
    """
    validation, quant_errors, accuracy_aware = {}, {}, {}
    for entry in exported.artifacts:
        fname, request = entry["file"], exported.requests[entry["file"]]
        if plan.advanced.auto_fallback:
            evaluate = stages.evaluator(entry, reference, data, source.layout, plan.task)
            record = refine_artifact(entry, w, export_source, request, evaluate, plan.max_drop, warnings, plan.task)
            if record is not None:
                accuracy_aware[fname] = record
                quant_errors[fname] = record["layer_errors"]
        if plan.advanced.layer_errors and fname not in quant_errors:
            errs = layer_errors(entry, export_source, request, warnings)
            if errs is not None:
                quant_errors[fname] = errs
        validation[fname] = stages.validate(plan, entry, w, reference, data, source.layout, warnings)
    return Measured(validation, quant_errors, {"accuracy_aware": accuracy_aware} if accuracy_aware else {})

