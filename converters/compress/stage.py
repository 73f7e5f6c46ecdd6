"""The compression stages of ``convert()``, in their documented order.

distill -> low-rank -> (prune: :mod:`..prune.stage`) -> QAT / post-training INT8.

:func:`compress_source` runs distillation and low-rank factorization on the loaded
source and returns the source the next stages work on; :func:`qat_source` runs QAT
(asked for, after pruning); :func:`qat_rescue` retries a conversion whose post-training
INT8 artifact (after ``auto_fallback``) missed ``max_drop`` with QAT, when training data
is at hand. Each stage adds a row (params, MACs, FP32 weight bytes, accuracy on the
validation samples) to the manifest's ``compression`` block.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

from edgeship.errors import UnsupportedModelError, ValidationFailedError
from edgeship.progress import step
from edgeship.vocab import Format, Precision

from .macs import count_macs, count_params
from .options import CompressOptions, rank_value
from .training import accuracy, is_tf_keras

__all__ = ["ORDER", "compress_source", "qat_source", "qat_rescue", "stage_row", "keras_source_of", "int8_row"]

ORDER = ("distill", "low_rank", "prune", "qat")


def _predict(model):
    from .training import predict  # noqa: PLC0415

    return lambda x, batch=32: [predict(model, x, batch)]


def keras_source_of(source, model):
    """``source`` with ``model`` as the handle the exporters convert."""
    fmt = "tf_keras" if is_tf_keras(model) else source.format
    versions = dict(source.framework_versions)
    if is_tf_keras(model):
        import tf_keras  # noqa: PLC0415

        versions.pop("keras", None)
        versions["tf_keras"] = tf_keras.__version__
    return dataclasses.replace(source, format=fmt, handle=model, predict=_predict(model),
                               framework_versions=versions, notes=list(source.notes))


STAGE_LATENCY_RUNS = 30
STAGE_LATENCY_BUDGET_S = 1.0


def file_latency(path: str, x, *, runs: int = STAGE_LATENCY_RUNS, budget_s: float = STAGE_LATENCY_BUDGET_S) -> float:
    """p50 ms of one sample of ``x`` through :mod:`edgeship.runtime` (in-process, batch 1, 3 warm-up runs,
    then ``runs`` or ``budget_s``, whichever ends first, at least 5)."""
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from edgeship.runtime import load  # noqa: PLC0415

    m = load(path)
    try:
        sample = np.asarray(x[:1], np.float32)
        for _ in range(3):
            m.run(sample)
        times, start = [], time.perf_counter()
        while len(times) < runs and (time.perf_counter() - start < budget_s or len(times) < 5):
            t0 = time.perf_counter()
            m.run(sample)
            times.append(time.perf_counter() - t0)
    finally:
        m.close()
    return round(float(np.median(times)) * 1e3, 4)


def _not_measured(exc: Exception) -> dict:
    first = (str(exc).splitlines() or [""])[0][:160]
    return {"latency_note": f"not measured: {type(exc).__name__}: {first}"}


def stage_tflite(model, x) -> dict:
    """``{bytes, gzip_bytes, latency_ms}`` of ``model`` as a temporary FP32 TFLite file, run through
    :mod:`edgeship.runtime` (:func:`file_latency`); ``{latency_note}`` when it cannot be converted or
    run (the row keeps its other figures)."""
    import gzip  # noqa: PLC0415

    from ..tflite import quiet  # noqa: PLC0415

    try:
        import tensorflow as tf  # noqa: PLC0415

        with tempfile.TemporaryDirectory(prefix="edgeship-stage-") as tmp, quiet():
            content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            path = os.path.join(tmp, "stage.fp32.tflite")
            with open(path, "wb") as fh:
                fh.write(content)
            ms = file_latency(path, x)
    except Exception as exc:  # noqa: BLE001 - a figure of the report, never a reason to fail the conversion
        return _not_measured(exc)
    return {"bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9)), "latency_ms": ms,
            "measured_as": "fp32 tflite"}


def file_row(path: str, x, latency: bool) -> dict:
    """``{bytes, gzip_bytes, latency_ms}`` of a model file (the ONNX stages)."""
    import gzip  # noqa: PLC0415

    with open(path, "rb") as fh:
        content = fh.read()
    row = {"bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9)), "measured_as": "fp32 onnx"}
    if latency:
        try:
            row["latency_ms"] = file_latency(path, x)
        except Exception as exc:  # noqa: BLE001 - as in stage_tflite
            row.update(_not_measured(exc))
    return row


def stage_row(stage: str, model, val_set, *, latency: bool = True, **extra) -> dict:
    """One row of the compression table for a Keras model: params, MACs, FP32 weight bytes, accuracy on
    the validation samples and, with ``latency``, the FP32 TFLite file's bytes, gzip bytes and latency."""
    params = count_params(model)
    y = getattr(val_set, "y", None)
    row = {"stage": stage, "params": params, "macs": count_macs(model), "fp32_bytes": 4 * params,
           "accuracy": accuracy(model, val_set.x, y) if y is not None else None}
    if latency:
        row.update(stage_tflite(model, val_set.x))
    return {**row, **extra}


def _train(opts: CompressOptions, spec, source):
    from ..prune.data import load_train_data  # noqa: PLC0415

    if opts.train_data is None:
        return None
    d = load_train_data(opts.train_data, preprocess=spec, input_shape=tuple(source.inputs[0]["shape"]))
    return d.x, d.y


def _keras_model(source, what: str):
    if source.kind != "keras" or not hasattr(source.handle, "layers"):
        raise UnsupportedModelError(f"{what} needs a Keras model (.keras file or in-memory); "
                                    f"{source.format} sources cannot be {what.split()[0]}ed here")
    return source.handle


def _student(opts: CompressOptions, teacher, seed: int, adv):
    from .distill import derive_student  # noqa: PLC0415

    if opts.student is None:
        width = opts.student_width or 0.5
        student = derive_student(teacher, width, seed=seed, init=opts.student_init, depth=opts.student_depth)
        how = f"derived, width {width}" + (f", {opts.student_depth} conv block(s)" if opts.student_depth else "") + \
            (", from the teacher's weights" if student.edgeship_init == "teacher" else "")
        return student, how
    if isinstance(opts.student, (str, os.PathLike)):
        from ..sources.keras import load  # noqa: PLC0415 - the same safety checks as the source

        src = load(os.fspath(opts.student), input_shape=adv.input_shape, allow_legacy_h5=adv.allow_legacy_h5,
                   allow_unsafe=adv.allow_unsafe)
        if not hasattr(src.handle, "layers"):
            raise UnsupportedModelError("the student must be a Keras model (.keras), not a SavedModel")
        return src.handle, os.path.basename(os.fspath(opts.student))
    return opts.student, "in-memory model"


def compress_source(source, opts: CompressOptions, *, spec, seed: int, workdir: str, val_set, adv,
                    warnings: list):
    """``(source for the next stage, compression block)``: distillation, then low-rank factorization.

    Raises:
        UnsupportedModelError: the stage does not apply to this model (named).
        InputError, CalibrationError: the student or the training data.
    """
    if source.kind == "onnx":
        return _compress_onnx(source, opts, workdir=workdir, val_set=val_set, warnings=warnings)
    model = _keras_model(source, "compression")
    train = _train(opts, spec, source)
    rows = [stage_row("source", model, val_set, latency=opts.stage_latency)]
    block: dict = {"order": list(ORDER), "stages": rows}
    if opts.distill:
        from .distill import distill  # noqa: PLC0415

        student, how = _student(opts, model, seed, adv)
        if opts.student_init == "teacher" and getattr(student, "edgeship_init", None) != "teacher":
            warnings.append("distill: student_init='teacher' needs a chain of Conv/Dense/BatchNormalization layers; "
                            "this student starts from random weights")
        with step(f"distilling into the student ({how})"):
            res = distill(model, student, train, val=(val_set.x, val_set.y), epochs=opts.distill_epochs,
                          temperature=opts.temperature, alpha=opts.alpha, seed=seed, augment=opts.distill_augment,
                          lr=opts.distill_lr)
        block["distill"] = {"student": how, **res.record, "history": res.history}
        model = res.model
        rows.append(stage_row("distill", model, val_set, latency=opts.stage_latency,
                              labels_only_accuracy=res.record.get("labels_only_accuracy")))
    if opts.low_rank is not None:
        from .lowrank import factorize_keras  # noqa: PLC0415

        rank = rank_value(opts.low_rank)
        with step(f"low-rank factorization (rank {rank})"):
            res = factorize_keras(model, rank=rank, energy=opts.low_rank_energy, train_data=train,
                                  epochs=opts.low_rank_epochs, seed=seed)
        if train is None:
            warnings.append("low-rank: no train_data, the factorized model is not fine-tuned (its accuracy cost is "
                            "in the report)")
        block["low_rank"] = {"rank": rank, "energy": opts.low_rank_energy if rank == "auto" else None,
                             "fine_tuned": train is not None, "epochs": opts.low_rank_epochs if train else 0,
                             **res.to_manifest(), "history": res.history}
        model = res.model
        rows.append(stage_row("low_rank", model, val_set, latency=opts.stage_latency))
    return (keras_source_of(source, model) if model is not source.handle else source), block


def _compress_onnx(source, opts: CompressOptions, *, workdir: str, val_set, warnings: list):
    if opts.distill or opts.qat:
        raise UnsupportedModelError("distillation and QAT train Keras models; an ONNX source supports --low-rank only")
    from ..onnx_formats import load_onnx  # noqa: PLC0415
    from ..prune_onnx import onnx_accuracy_cost  # noqa: PLC0415
    from .lowrank_onnx import factorize_onnx  # noqa: PLC0415

    dst = os.path.join(workdir, "lowrank.fp32.onnx")
    rank = rank_value(opts.low_rank)
    with step(f"low-rank factorization of the ONNX weights (rank {rank})"):
        section = factorize_onnx(source.handle, dst, rank=rank, energy=opts.low_rank_energy)
    out = load_onnx(dst, input_shape=source.inputs[0]["shape"])
    cost = onnx_accuracy_cost(source.handle, dst, val_set.x, val_set.y, input_name=source.inputs[0]["name"])
    section.update(rank=rank, energy=opts.low_rank_energy if rank == "auto" else None, accuracy_cost=cost)
    warnings.append(f"low-rank: ONNX factorization (no fine-tuning) changes top-1 agreement to "
                    f"{cost.get('top1_agreement')} on {cost.get('count')} samples")
    rows = [{"stage": "source", "params": None, "macs": None, "fp32_bytes": os.path.getsize(source.handle),
             "accuracy": cost.get("source_accuracy"), **file_row(source.handle, val_set.x, opts.stage_latency)},
            {"stage": "low_rank", "params": None, "macs": None, "fp32_bytes": os.path.getsize(dst),
             "accuracy": cost.get("accuracy"), **file_row(dst, val_set.x, opts.stage_latency)}]
    return out, {"order": list(ORDER), "stages": rows, "low_rank": section}


def qat_source(source, opts: CompressOptions, *, spec, seed: int, val_set, pruned: bool, block: dict | None,
               reason: str = "asked for (qat)"):
    """``(QAT source, compression block)``: fake-quantized and fine-tuned (tfmot, through the bridge)."""
    from .qat import qat_keras  # noqa: PLC0415

    model = _keras_model(source, "quantization-aware training")
    train = _train(opts, spec, source)
    if train is None:
        raise UnsupportedModelError("quantization-aware training needs train_data (--train-data)")
    block = dict(block) if block else {"order": list(ORDER),
                                       "stages": [stage_row("source", model, val_set, latency=opts.stage_latency)]}
    with step(f"quantization-aware training ({opts.qat_epochs} epochs)"):
        res = qat_keras(model, train, epochs=opts.qat_epochs, lr=opts.qat_lr, seed=seed, preserve_sparsity=pruned)
    block["qat"] = {**res.record, "reason": reason, "history": res.history}
    block["stages"] = [*block["stages"], stage_row("qat", res.model, val_set, latency=opts.stage_latency)]
    return keras_source_of(source, res.model), block


def qat_rescue(exc: ValidationFailedError, *, plan, source, export_source, exporters, calib_x, w, reference, data,
               spec, warnings: list, block: dict | None, validate):
    """Retry a missed ``max_drop`` with QAT; ``(exported, measured, export source, block)`` or raise ``exc``.

    Applies when QAT was not already used, ``plan.compress.qat_fallback`` is on, training data
    is given, the source is a Keras model and every artifact is an INT8 TFLite file.
    """
    from .. import stages  # noqa: PLC0415

    opts = plan.compress
    if opts is None or opts.qat or not opts.qat_fallback or opts.train_data is None or plan.max_drop is None or \
            export_source.kind != "keras" or not hasattr(export_source.handle, "layers") or \
            plan.precision is not Precision.INT8 or any(f is not Format.TFLITE for f in plan.formats):
        raise exc
    what = "post-training INT8" + (" and auto_fallback" if plan.advanced.auto_fallback else "")
    warnings.append(f"{what} missed max_drop={plan.max_drop} ({exc}); retried with quantization-aware training")
    qsrc, block = qat_source(export_source, opts, spec=spec, seed=plan.advanced.seed, val_set=data.val,
                             pruned=plan.prune is not None, block=block,
                             reason=f"{what} missed max_drop={plan.max_drop}")
    workdir = tempfile.mkdtemp(prefix=".qat-", dir=w.dir)
    try:
        exported = stages.export_all(plan, qsrc, exporters, calib_x, w, workdir, warnings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    no_fallback = dataclasses.replace(plan, advanced=dataclasses.replace(plan.advanced, auto_fallback=False))
    try:
        measured = validate(no_fallback, exported, w, source, qsrc, reference, data, warnings)
    except ValidationFailedError as again:
        raise ValidationFailedError(f"{what} missed max_drop={plan.max_drop} ({exc}); quantization-aware training "
                                    f"({opts.qat_epochs} epochs) did not meet it either: {again}") from None
    block["qat"]["ptq_error"] = str(exc)
    return exported, measured, qsrc, block


def int8_row(block: dict, artifacts: list, validation: dict) -> None:
    """Add the exported artifacts' rows (bytes, accuracy) to the block's stage table (their latency is
    measured with the report's, through the runtime: :func:`..report.compression_lines`)."""
    for a in artifacts:
        m = validation.get(a["file"]) or {}
        block["stages"].append({"stage": f"export {a['file']}", "file": a["file"], "params": None, "macs": None,
                                "bytes": a.get("bytes"), "gzip_bytes": a.get("gzip_bytes"),
                                "accuracy": m.get("accuracy"), "top1_agreement": m.get("top1_agreement")})

