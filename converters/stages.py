"""The stages of ``convert()``, in the order it runs them.

load source -> split data -> (prune: :mod:`.prune.stage`) -> export -> (refine:
:mod:`.refine.stage`) -> validate -> (target steps: :mod:`.targets`) -> manifest
(:mod:`.manifest_build`) -> report -> commit. Each stage takes the frozen plan and
what the stages before it produced; none reads an option the plan did not check.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from edgeship import metrics as _metrics
from edgeship.calibration import RANDOM, CalibrationSet, load_samples
from edgeship.errors import CalibrationError, UnsupportedModelError, ValidationFailedError
from edgeship.progress import step
from edgeship.vocab import Task

from . import registry
from .plan import ConversionPlan, ModelPlan
from .registry import ExportRequest

__all__ = ["load_source", "Data", "load_data", "split", "find_exporters", "Export", "export_all", "validate",
           "save_calibration", "evaluator", "source_bytes", "MAX_VALIDATION", "MIN_VALIDATION", "WARNING_NOTE_PREFIXES", "CALIBRATION_FILE", "METRIC_KEYS"]

CALIBRATION_FILE = "calibration.npz"
MAX_VALIDATION = 200
MIN_VALIDATION = 8
# Artifact notes starting with these are also returned in ConversionResult.warnings.
WARNING_NOTE_PREFIXES = ("warning:", "slow on x86:")
METRIC_KEYS = ("top1_agreement", "accuracy", "source_accuracy", "cosine", "max_abs_error", "sqnr_db", "detection_f1",
               "miou", "pixel_accuracy")
# recorded only for a detector measured against labels (.detection_labels)
LABELLED_KEYS = ("map50_95", "source_map50_95", "map50", "source_map50", "label_miou", "source_label_miou",
                 "label_pixel_accuracy", "source_label_pixel_accuracy", "labelled_images", "drop_metric")


# -- load source ---------------------------------------------------------------------------


def load_source(plan: ConversionPlan):
    """``(loader name, Source)`` of ``plan.model``, with stable output names (see :func:`.plan.bind`).

    Raises:
        UnsupportedModelError: no loader for the model, or no exporter for a requested format.
        UnsafeModelError, ModelFormatError: from the loader.
    """
    registry.load_plugins()
    name, loader = registry.find_loader(plan.model)
    if loader is None:
        raise UnsupportedModelError(
            f"no loader for {plan.model!r}: expected a .keras/.h5 file, a SavedModel folder, an .onnx file, a float "
            ".tflite file or a Keras model"
        )
    from .tflite import quiet  # noqa: PLC0415

    adv = plan.advanced
    what = os.path.basename(os.fspath(plan.model)) if isinstance(plan.model, (str, os.PathLike)) else "the model"
    with step(f"loading {what}"), quiet():  # TensorFlow's import-time C++ logging (absl, CUDA probes) is noise here
        source = loader(plan.model, input_shape=adv.input_shape, allow_legacy_h5=adv.allow_legacy_h5,
                        allow_unsafe=adv.allow_unsafe)
    return name, source


def find_exporters(plan: ConversionPlan, kind: str) -> dict:
    """``{Format: exporter}`` for the plan's formats from :data:`.exporters.EXPORTERS`.

    Raises:
        UnsupportedModelError: a format has no exporter for this kind of source.
    """
    out = {}
    for f in plan.formats:
        fn = registry.find_exporter(kind, f.value)
        if fn is None:
            raise UnsupportedModelError(f"no exporter writes {f.value} from a {kind} model")
        out[f] = fn
    return out


# -- split data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    calib: CalibrationSet | None  # what quantization calibrates on
    val: CalibrationSet  # what validation measures on
    held_out: bool  # val is not the calibration samples themselves
    labels: tuple | None  # the bundle's labels (the plan's, else the calibration folder's classes)
    labelled: object = None  # eval ground truth, aligned with val (.detection_labels, .segmentation_labels)

    def description(self, plan: ConversionPlan) -> str:
        if self.labelled is not None:
            return (f"{len(self.labelled)} labelled images in {self.labelled.source} ({self.labelled.kind}); "
                    f"max_drop and the report use {self.labelled.metric_text}")
        if self.held_out and plan.eval_data is None:
            return f"{len(self.val)} samples held out from {self.val.source}"
        return f"{self.val.source}" + ("" if self.held_out else " (the calibration samples themselves)")


def split(data: CalibrationSet, calib_count: int, want_val: int, seed: int, warnings: list):
    """``(calibration part, validation part, held out)`` of one loaded set, held out when possible."""
    n = len(data)
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = min(want_val, n // 3)
    if n_val < MIN_VALIDATION:
        warnings.append(f"only {n} samples: validation reuses the calibration samples (not held out); "
                        "pass eval_data or more samples for an honest measurement")
        part = data.subset(order[: min(n, calib_count)])
        return part, part, False
    val = data.subset(np.sort(order[:n_val]))
    cal = data.subset(np.sort(order[n_val : n_val + calib_count]))
    return cal, val, True


def load_data(plan: ConversionPlan, mplan: ModelPlan, warnings: list) -> Data:
    """Calibration and validation samples, through the model's preprocessing.

    Raises:
        CalibrationError: an integer precision without calibration data; data missing,
            too small or mis-shaped.
    """
    adv, spec, shape = plan.advanced, mplan.preprocess, mplan.sample_shape
    want_val = 0 if plan.eval_data is not None else max(MIN_VALIDATION, min(MAX_VALIDATION, adv.calib_count // 2))
    calib_set = val_set = None
    held_out = False
    if plan.calib is not None:
        loaded = load_samples(plan.calib, input_shape=shape, preprocess=spec, count=adv.calib_count + want_val,
                              max_bytes=adv.calib_max_bytes, seed=adv.seed, allow_random=isinstance(plan.calib, str) and plan.calib == RANDOM)
        warnings.extend(loaded.warnings)
        if plan.eval_data is None:
            calib_set, val_set, held_out = split(loaded, adv.calib_count, want_val, adv.seed, warnings)
        else:
            calib_set = loaded.subset(np.arange(min(len(loaded), adv.calib_count)))
    elif plan.needs_calib:
        raise CalibrationError(
            f"precision {plan.precision.value} needs calibration data: pass calib= an image folder, a .npy/.npz "
            "file or an array (or calib='random' by name, which calibrates on noise)"
        )
    labelled, found = None, None
    if plan.eval_data is not None and plan.task is Task.DETECTION:  # labelled images: mAP, not agreement
        from .detection_labels import load_labelled  # noqa: PLC0415

        found = load_labelled(plan.eval_data, spec, shape, mplan.labels, mplan.decoder, max(MAX_VALIDATION, 1000))
    elif plan.eval_data is not None and plan.task is Task.SEGMENTATION:  # label masks: mIoU against them
        from .segmentation_labels import load_labelled_masks  # noqa: PLC0415

        found = load_labelled_masks(plan.eval_data, spec, shape, max(MAX_VALIDATION, 1000))
    if found is not None:  # (preprocessed images, ground truth aligned with them)
        labelled, held_out = found[1], True
        val_set = load_samples(found[0], input_shape=shape, count=len(found[0]), what="evaluation")
        val_set = dataclasses.replace(val_set, kind="folder", source=os.fspath(plan.eval_data))
    if plan.eval_data is not None and labelled is None:
        val_set = load_samples(plan.eval_data, input_shape=shape, preprocess=spec, count=max(MAX_VALIDATION, 1000),
                               max_bytes=adv.calib_max_bytes, seed=adv.seed, allow_random=isinstance(plan.eval_data, str) and plan.eval_data == RANDOM,
                               what="evaluation")
        warnings.extend(val_set.warnings)
        held_out = True
    if val_set is None:  # float precision, no data at all: a numeric check only
        val_set = load_samples(RANDOM, input_shape=shape, count=32, seed=adv.seed, allow_random=True,
                               what="validation")
        warnings.append("no calib or eval_data: validated on random noise (numeric agreement only, no accuracy)")
    labels = mplan.labels
    if labels is None and calib_set is not None and calib_set.classes is not None:
        n_out = mplan.outputs[0]["shape"][-1] if mplan.outputs and mplan.outputs[0]["shape"] else None
        if n_out == len(calib_set.classes):
            labels = tuple(calib_set.classes)
    return Data(calib=calib_set, val=val_set, held_out=held_out, labels=labels, labelled=labelled)


def save_calibration(w, data: Data) -> str | None:
    """Write ``calibration.npz`` (the samples actually used) into the bundle; its file name."""
    if data.calib is None:
        return None
    arrays = {"x": data.calib.x}
    if data.calib.y is not None:
        arrays["y"] = data.calib.y
    np.savez_compressed(w.path(CALIBRATION_FILE), **arrays)
    return CALIBRATION_FILE


# -- export --------------------------------------------------------------------------------


@dataclass
class Export:
    """What the export stage wrote: manifest artifact entries, the request each was written
    with (reused by refinement), and the exporters' ``settings`` extras."""

    artifacts: list
    requests: dict  # file name -> ExportRequest
    extras: dict


def export_all(plan: ConversionPlan, source, exporters: dict, calib_x, w, workdir: str, warnings: list) -> Export:
    """One artifact per format, written into the bundle's temp folder by the exporters table."""
    adv = plan.advanced
    out = Export([], {}, {})
    for f, fn in exporters.items():
        fname = f"model.{plan.precision.value}.{f.value}"
        req = ExportRequest(precision=plan.precision, io=plan.io, calib=calib_x, out_path=w.path(fname),
                            workdir=workdir, target=plan.export_target(f), calib_method=adv.calib_method,
                            exclude=adv.exclude, seed=adv.seed, keep_head_float=plan.task is Task.DETECTION,
                            task=plan.task)
        with step(f"writing {fname}"):
            part = dict(fn(source, req))
        out.extras.update(part.pop("extra", {}) or {})
        entry = {"file": fname, **part}
        entry["io"] = part.get("io") or plan.io_value
        entry.setdefault("layout", source.layout)
        entry["targets"] = plan.artifact_targets(f)
        entry.update(w.file_info(fname))
        entry["notes"] = list(part.get("notes") or [])
        # notes are informational; the ones flagged as warnings (or slow choices) are surfaced too
        warnings.extend(f"{fname}: {n}" for n in entry["notes"] if n.startswith(WARNING_NOTE_PREFIXES))
        out.artifacts.append(entry)
        out.requests[fname] = dataclasses.replace(req, workdir="")
    return out


# -- validate ------------------------------------------------------------------------------


def evaluator(entry: dict, reference: list, data: Data, source_layout: str, task: Task | None = None):
    """``evaluate(path) -> metrics`` of an artifact file against the source's ``reference``."""
    from .validate import validate_artifact  # noqa: PLC0415

    def evaluate(path: str) -> dict:
        return validate_artifact(path, reference, data.val.x, data.val.y, name=entry["file"],
                                 source_layout=source_layout, artifact_layout=entry.get("layout"),
                                 task=task, labelled=data.labelled,
                                 output_names=[o.get("name") for o in entry.get("outputs") or ()] or None)

    return evaluate


def validate(plan: ConversionPlan, entry: dict, w, reference: list, data: Data, source_layout: str,
             warnings: list) -> dict:
    """Measure one written artifact through ``edgeship.runtime``; its manifest metrics.

    Raises:
        ValidationFailedError: the artifact collapsed, or dropped more than ``max_drop``.
    """
    res = evaluator(entry, reference, data, source_layout, plan.task)(w.path(entry["file"]))
    metrics = {k: res.get(k) for k in METRIC_KEYS}
    if res.get("mixed_ranges"):  # outputs mixing very different ranges (boxes beside scores)
        metrics["mixed_ranges"] = res["mixed_ranges"]
    warnings.extend(f"{entry['file']}: {m}" for m in res.get("warnings") or ())
    if res.get("drop_metric"):  # a detector against labels: the metric and the drop max_drop is compared with
        metrics.update({k: res[k] for k in LABELLED_KEYS if k in res}, drop_points=_metrics.drop_points(res))
    if plan.max_drop is not None:
        drop = _metrics.drop_points(res)
        if drop > plan.max_drop:
            what = "accuracy" if res.get("accuracy") is not None else "mAP@0.5:0.95 against the labels" if res.get(
                "map50_95") is not None else "mIoU against the label masks" if res.get("label_miou") is not None else (
                "mIoU against the source" if res.get("miou") is not None and res.get("top1_agreement") is None
                else "top-1 agreement with the source")
            raise ValidationFailedError(
                f"{entry['file']}: {what} dropped {drop:.2f} points on {len(data.val)} "
                f"{'labelled images' if data.labelled is not None else 'samples'}, more than "
                f"max_drop={plan.max_drop}; nothing was written (try int16x8, more/better calibration data or "
                "a float precision)"
            )
    return metrics


def source_bytes(source) -> int | None:
    return os.path.getsize(source.path) if source.path and os.path.isfile(source.path) else None

