"""``convert()``: a model in, a calibrated, validated, atomically written bundle out.

A short orchestrator: :func:`.plan.resolve` checks every option into a frozen
:class:`~.plan.ConversionPlan`, then the stages of :mod:`.stages` run in order:
load source -> bind the plan to the model -> split data -> prune -> export (the
:mod:`.exporters` table) -> refine (:mod:`.refine.stage`) -> validate through
``edgeship.runtime`` -> target steps (:mod:`.targets`) -> manifest
(:mod:`.manifest_build`) -> report -> atomic commit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from edgeship.bundle import BundleWriter
from edgeship.errors import ValidationFailedError
from edgeship.preprocess import PreprocessSpec
from edgeship.vocab import CalibMethod, Format, IOType, Precision, Target, Task, values

from . import report as _report
from . import stages
from .manifest_build import Results, build_manifest, content_hash
from .plan import AdvancedOptions, PruneOptions, advanced_options, bind, prune_options, resolve
from .prune.stage import fp32_cost, prune_source
from .refine.stage import refine_and_validate
from .targets import TargetContext, run_steps
from .compress.options import CompressOptions, compression_options
from .compress.stage import compress_source, int8_row, qat_rescue, qat_source

__all__ = ["convert", "ConversionResult", "PruneOptions", "AdvancedOptions", "CompressOptions", "content_hash", "TARGETS"]

TARGETS = values(Target)  # the accepted ``target`` values (the CLI's --target choices)


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` produced.

    Attributes:
        bundle: absolute path of the written bundle folder.
        manifest: the manifest as written.
        warnings: things the user should know (slow choices, skipped files, assumptions).
    """

    bundle: str
    manifest: dict
    warnings: tuple = ()

    def table(self) -> str:
        """Sizes and validation metrics per artifact, as a markdown table."""
        return _report.validation_table(self.manifest)


def convert(
    model: Any,
    output: str | os.PathLike,
    *,
    calib: Any = None,
    precision: Precision | str | None = None,
    io: IOType | str = "int8",
    formats: Sequence[Format | str] | Format | str | None = None,
    preprocess: PreprocessSpec | dict | str | None = None,
    labels: Sequence[str] | str | None = None,
    eval_data: Any = None,
    max_drop: float | None = None,
    calib_count: int = 200,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    force: bool = False,
    allow_legacy_h5: bool = False,
    allow_unsafe: bool = False,
    calib_method: CalibMethod | str = "minmax",
    exclude: Sequence[str] = (),
    target: Target | str | Sequence[Target | str] = "cpu",
    task: Task | str | None = None,
    name: str | None = None,
    prune: float | PruneOptions | None = None,
    prune_structure: str | None = None,
    prune_epochs: int = 2,
    train_data: Any = None,
    auto_fallback: bool = False,
    layer_errors: bool = False,
    calib_max_bytes: int | None = None,
    advanced: AdvancedOptions | None = None,
    compress: CompressOptions | None = None,
) -> ConversionResult:
    """Convert a Keras or ONNX model into a calibrated, validated bundle folder.

    The bundle holds one artifact per format, ``calibration.npz`` (the samples
    actually used), ``report.md`` and ``manifest.json``; it is written
    atomically: on any error nothing appears at ``output`` and an existing
    bundle there survives.

    Args:
        model: a ``.keras``/``.h5`` path, a SavedModel folder, an ``.onnx`` path
            (when ONNX support is installed) or an in-memory Keras model.
        output: the bundle folder to write.
        calib: calibration data: an image folder, ``.npy``/``.npz``, an array or
            iterable, or ``"random"`` (by name only). Needed for int8/int16x8.
        precision: ``fp32``, ``fp16``, ``dynamic``, ``int8`` or ``int16x8``; default
            what the targets prefer (``int8``; ``fp16`` when the only target is ``gpu``).
        io: input/output type: ``int8``, ``uint8`` or ``float`` (``int16`` for
            int16x8). Float precisions always have float I/O (a warning says so).
        formats: ``tflite`` and/or ``onnx``; default ``tflite`` (``onnx`` for ``jetson``).
        preprocess: how images become inputs (stored in the manifest); keys left
            out (``size``, gray for one channel, ``layout``) come from the model's
            input in its real layout (NCHW or NHWC). A ``size`` or colour that does
            not fit the model input is refused, whatever the calibration data.
        labels: class names, or a text file with one per line; for a classifier
            their count must equal the model's classes.
        eval_data: data to validate on (same kinds as ``calib``); by default
            samples held out from ``calib``.
        max_drop: fail if accuracy (or top-1 agreement) drops more than this
            many percentage points.
        calib_count: at most this many calibration samples are used.
        calib_max_bytes: memory budget for the arrays of a ``.npy``/``.npz`` data file,
            checked on their headers before anything is allocated (default 2 GiB,
            ``EDGESHIP_CALIB_MAX_BYTES``); only the sampled rows are kept.
        seed: seed for sampling and splitting.
        input_shape: fixes unknown input dimensions (batch defaults to 1).
        force: replace an existing bundle.
        allow_legacy_h5: accept legacy ``.h5`` models.
        allow_unsafe: load models that contain code (Lambda layers, custom objects).
        calib_method: ``minmax``, ``entropy`` or ``percentile`` (ONNX; TFLite uses min/max).
        exclude: node names to keep in float (ONNX exporter).
        target: ``cpu``, ``edgetpu``, ``gpu``, ``jetson`` (several: a list or a comma
            string), recorded per artifact in the manifest (``targets``). ``edgetpu``
            forces full INT8 with int8/uint8 I/O and runs ``edgetpu_compiler`` when it
            is on PATH (``model_edgetpu.tflite`` + op mapping in the manifest; else a
            warning with the exact command); ``jetson`` quantizes ONNX symmetric
            INT8 QDQ for TensorRT. Other values are refused.
        task: ``classification``, ``detection``, ``segmentation``, ``regression`` or
            ``other`` (default: classification for one output of more than one value).
        name: bundle name (default: the output folder name).
        prune: target weight sparsity (0 < prune <= 0.95). Keras sources are pruned
            with tfmot (Keras 3 models through the verified tf_keras bridge) and
            fine-tuned on ``train_data``; ONNX sources have their Conv/Gemm/MatMul
            initializers magnitude-pruned (no fine-tuning; the cost is measured on
            the validation data and a warning names it when above ``max_drop``).
            Validation always compares against the original dense model.
        prune_structure: ``"N:M"`` structured sparsity (e.g. ``"2:4"``).
        prune_epochs: fine-tuning epochs (Keras, with ``train_data``).
        train_data: an image folder with one subfolder per class, or ``.npz`` with
            ``x`` and ``y``, or ``(x, y)`` arrays: fine-tuning data for pruning, and the
            training data of ``compress`` (and of QAT as the ``max_drop`` fallback).
        auto_fallback: with ``max_drop``: when an INT8 TFLite artifact drops more,
            keep its most quantization-sensitive layers in float one at a time
            (ranked by TFLite's QuantizationDebugger) until it is within
            ``max_drop``; fails with the best attempt described otherwise.
        layer_errors: measure the ten layers with the largest quantization error of
            INT8 TFLite artifacts for the report (done anyway by ``auto_fallback``).
        advanced: the options from ``calib_count`` to ``allow_unsafe``, ``exclude``,
            ``auto_fallback`` and ``layer_errors`` in one :class:`AdvancedOptions`
            (instead of the keywords; giving one both ways with different values
            is an :class:`InputError`).

        compress: distillation, low-rank factorization and quantization-aware training in
            one :class:`~edgeship.converters.compress.CompressOptions` (``train_data`` fills
            its training data); stages run distill -> low-rank -> prune -> QAT/PTQ INT8. With
            ``max_drop`` and ``train_data``, an INT8 TFLite artifact that misses ``max_drop``
            after post-training quantization (and ``auto_fallback``) is retried with QAT.

    ``prune`` may also be a :class:`PruneOptions` (sparsity, structure, epochs,
    train_data) instead of ``prune``/``prune_structure``/``prune_epochs``/``train_data``.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        BundleExistsError: ``output`` exists and ``force`` is false (before any work).
        InputError: an option value is not supported, or does not fit the model
            (preprocessing size, label count); raised before any data is read.
        UnsupportedModelError: no loader or exporter handles the model/format.
        UnsafeModelError: the model contains code and ``allow_unsafe`` is false.
        ModelFormatError: the model file is corrupt.
        CalibrationError: calibration/evaluation data missing, too small or mis-shaped.
        ValidationFailedError: an artifact collapsed or lost more than ``max_drop`` points.
    """
    adv = advanced_options(advanced, calib_count=calib_count, seed=seed, calib_method=calib_method, exclude=exclude,
                           input_shape=input_shape, allow_legacy_h5=allow_legacy_h5, allow_unsafe=allow_unsafe,
                           auto_fallback=auto_fallback, layer_errors=layer_errors, calib_max_bytes=calib_max_bytes)
    cmp, prune_train = compression_options(compress, train_data, max_drop=max_drop,
                                           pruning=prune is not None or prune_structure is not None)
    plan = resolve(model=model, output=output, calib=calib, precision=precision, io=io, formats=formats,
                   preprocess=preprocess, labels=labels, eval_data=eval_data, max_drop=max_drop, target=target,
                   task=task, name=name, force=force, advanced=adv,
                   prune=prune_options(prune, prune_structure, prune_epochs, prune_train), compress=cmp)
    warnings: list = list(plan.warnings)
    writer = BundleWriter(plan.output, force=plan.force)
    writer.check_target()  # before any work

    loader_name, source = stages.load_source(plan)
    exporters = stages.find_exporters(plan, source.kind)
    mplan = bind(plan, source)  # preprocessing, labels, task, output names: refused before any data is read
    plan = dataclasses.replace(plan, task=mplan.task)  # the task every later stage uses (given or inferred)
    warnings.extend(mplan.warnings)
    data = stages.load_data(plan, mplan, warnings)
    calib_x = data.calib.x if data.calib is not None else None

    with writer as w:
        # scratch space inside the bundle's temp folder: removed below, and with it on any crash
        workdir = tempfile.mkdtemp(prefix=".work-", dir=w.dir)
        try:
            export_source, pruning, compression = source, None, None
            if plan.compress is not None and plan.compress.active:  # distill -> low-rank
                export_source, compression = compress_source(source, plan.compress, spec=mplan.preprocess,
                                                             seed=adv.seed, workdir=workdir, val_set=data.val,
                                                             adv=adv, warnings=warnings)
            if plan.prune is not None:
                export_source, pruning = prune_source(export_source, plan.prune, spec=mplan.preprocess, seed=adv.seed,
                                                      workdir=workdir, val_set=data.val, max_drop=plan.max_drop,
                                                      warnings=warnings)
            if plan.compress is not None and plan.compress.qat:  # QAT last, before the INT8 export
                export_source, compression = qat_source(export_source, plan.compress, spec=mplan.preprocess,
                                                        seed=adv.seed, val_set=data.val, block=compression,
                                                        pruned=plan.prune is not None)
            exported = stages.export_all(plan, export_source, exporters, calib_x, w, workdir, warnings)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        calib_file = stages.save_calibration(w, data)

        reference = source.predict(data.val.x)  # validation always compares with the dense source
        if pruning is not None and source.kind == "keras":
            pruning["fp32_cost"] = fp32_cost(reference, export_source, data.val)
        try:
            measured = refine_and_validate(plan, exported, w, source, export_source, reference, data, warnings)
        except ValidationFailedError as exc:  # QAT when PTQ (and auto_fallback) cannot meet max_drop
            exported, measured, export_source, compression = qat_rescue(
                exc, plan=plan, source=source, export_source=export_source, exporters=exporters, calib_x=calib_x,
                w=w, reference=reference, data=data, spec=mplan.preprocess, warnings=warnings, block=compression,
                validate=refine_and_validate)
        if compression is not None:
            int8_row(compression, exported.artifacts, measured.validation)
        # after validation: a compiled Edge TPU file runs only with its delegate
        extras = {**exported.extras, **measured.extras,
                  **run_steps(TargetContext(w, exported.artifacts, warnings, plan, source, calib_x), plan.targets)}

        results = Results(loader=loader_name, source=source, artifacts=exported.artifacts, data=data,
                          calibration_file=calib_file, pruning=pruning, validation=measured.validation,
                          layer_errors=measured.layer_errors, extras=extras, compression=compression,
                          calibration_sha256=w.file_info(calib_file)["sha256"] if calib_file else None)
        manifest = build_manifest(plan, mplan, results, bundle_name=os.path.basename(writer.target.rstrip(os.sep)))
        _report.write_reports(w.dir, manifest, source_bytes=stages.source_bytes(source),
                              warnings=tuple(dict.fromkeys(warnings)))
        bundle = w.commit(manifest)
    return ConversionResult(bundle=bundle, manifest=manifest, warnings=tuple(dict.fromkeys(warnings)))
