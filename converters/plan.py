"""The frozen plan of a conversion: every option checked and normalised before any work.

``resolve(...)`` turns what the caller passed to :func:`~edgeship.converters.convert`
into a :class:`ConversionPlan` and raises every user error it can see without the
model (precision, io, formats, targets, task, labels, max_drop, pruning and the
advanced options). ``bind(plan, source)`` adds what needs the loaded model and
still comes before any data is read or any artifact written: the preprocessing
(its default size taken from the model's real layout, a ``size`` that disagrees
with the model refused), the label count against the model's classes, the task,
and stable input and output names.

The long tail of options lives in two frozen dataclasses, :class:`PruneOptions`
and :class:`AdvancedOptions`; ``convert()`` accepts them (``prune=PruneOptions(...)``,
``advanced=AdvancedOptions(...)``) as well as the flat keyword arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.errors import CalibrationError, InputError
from edgeship.preprocess import ColorOrder, PreprocessSpec, image_layout
from edgeship.vocab import CalibMethod, Format, IOType, Precision, Task

from .choices import choice
from .dynamic_size import dynamic_hw, dynamic_preprocess, example_fixed
from .task_infer import decoder_spec, infer_task

from . import targets as _targets

__all__ = ["PruneOptions", "AdvancedOptions", "ConversionPlan", "ModelPlan", "resolve", "bind",
           "prune_options", "advanced_options", "stable_names", "MAX_PRUNE"]

MAX_PRUNE = 0.95
INTEGER = (Precision.INT8, Precision.INT16X8)


@dataclass(frozen=True)
class PruneOptions:
    """Weight pruning (see :func:`~edgeship.converters.convert`'s ``prune*`` arguments).

    Attributes:
        sparsity: target fraction of zero weights, 0 < sparsity <= 0.95 (None with ``structure="N:M"``).
        structure: ``None`` (Dense in blocks of 4, the rest elementwise), ``"elementwise"``,
            ``"1xK"`` blocks or ``"N:M"`` (e.g. ``"2:4"``).
        epochs: fine-tuning epochs (Keras, with ``train_data``).
        train_data: an image folder with one subfolder per class, an ``.npz`` with ``x``
            and ``y``, or ``(x, y)`` arrays.
    """

    sparsity: float | None = None
    structure: str | None = None
    epochs: int = 2
    train_data: Any = None


@dataclass(frozen=True)
class AdvancedOptions:
    """The options most conversions leave alone (each is also a keyword of ``convert()``).

    Attributes:
        calib_count: at most this many calibration samples are used.
        seed: seed for sampling and splitting.
        calib_method: ``minmax``, ``entropy`` or ``percentile`` (ONNX; TFLite uses min/max).
        exclude: node names kept in float (ONNX exporter).
        input_shape: fixes unknown input dimensions (batch defaults to 1).
        allow_legacy_h5: accept legacy ``.h5`` models.
        allow_unsafe: load models that contain code.
        auto_fallback: keep the most sensitive layers in float until ``max_drop`` is met.
        layer_errors: measure the ten layers with the largest INT8 error for the report.
        calib_max_bytes: memory budget for a ``.npy``/``.npz`` data file (None: 2 GiB or
            ``EDGESHIP_CALIB_MAX_BYTES``), checked on its headers before anything is read.
    """

    calib_count: int = 200
    seed: int = 0
    calib_method: CalibMethod | str = CalibMethod.MINMAX
    exclude: tuple = ()
    input_shape: tuple | None = None
    allow_legacy_h5: bool = False
    allow_unsafe: bool = False
    auto_fallback: bool = False
    layer_errors: bool = False
    calib_max_bytes: int | None = None


_ADVANCED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AdvancedOptions)}


def prune_options(prune, prune_structure=None, prune_epochs=2, train_data=None) -> PruneOptions | None:
    """The :class:`PruneOptions` of ``convert()``'s arguments; None when no pruning was asked for.

    Raises:
        InputError: ``prune=PruneOptions(...)`` together with flat ``prune_*`` arguments,
            or ``train_data`` without pruning.
    """
    if isinstance(prune, PruneOptions):
        if prune_structure is not None or prune_epochs != 2 or train_data is not None:
            raise InputError("pass the pruning options either in prune=PruneOptions(...) or as prune_structure=/"
                             "prune_epochs=/train_data=, not both")
        opts = prune
    else:
        opts = PruneOptions(sparsity=prune, structure=prune_structure, epochs=prune_epochs, train_data=train_data)
    if opts.sparsity is None and opts.structure in (None, ""):
        if opts.train_data is not None:
            raise InputError("train_data is used for pruning only; pass prune= (e.g. 0.5) or prune_structure='2:4'")
        return None
    return opts


def advanced_options(advanced: AdvancedOptions | None, **flat) -> AdvancedOptions:
    """The :class:`AdvancedOptions` of ``convert()``'s arguments (``advanced=`` or the flat keywords).

    Raises:
        InputError: an option given both in ``advanced=`` and as a keyword with another value.
    """
    if advanced is None:
        return AdvancedOptions(**flat)
    if not isinstance(advanced, AdvancedOptions):
        raise InputError(f"advanced must be an AdvancedOptions, not {type(advanced).__name__}")
    both = [k for k, v in flat.items() if not _same(v, _ADVANCED_DEFAULTS[k]) and not _same(v, getattr(advanced, k))]
    if both:
        raise InputError(f"{', '.join(both)} given both as keyword and in advanced=; pass each option once")
    return advanced


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # noqa: BLE001 - incomparable values differ
        return False


@dataclass(frozen=True)
class ConversionPlan:
    """Every choice of one conversion, checked. Built by :func:`resolve`; never changed."""

    model: Any
    output: str
    calib: Any
    eval_data: Any
    precision: Precision
    io: IOType  # what exporters receive (INT8 for the int16 I/O of int16x8)
    io_value: str  # what the manifest records
    formats: tuple
    targets: tuple
    preprocess: Any  # the caller's value (PreprocessSpec, dict, str or None); bound by bind()
    labels: tuple | None
    max_drop: float | None
    task: Task | None
    name: str | None
    force: bool
    prune: PruneOptions | None
    advanced: AdvancedOptions
    warnings: tuple = ()
    compress: Any = None  # compress.CompressOptions (distill, low-rank, QAT), checked; None: none asked

    @property
    def target_label(self) -> str:
        """``"cpu"`` or ``"cpu,edgetpu"``: the manifest's ``settings.target``."""
        return ",".join(t.value for t in self.targets)

    @property
    def needs_calib(self) -> bool:
        return self.precision in INTEGER

    def export_target(self, fmt: Format) -> str:
        return _targets.export_target(self.targets, fmt)

    def artifact_targets(self, fmt: Format) -> list:
        return _targets.artifact_targets(self.targets, fmt)


def _io(io, precision: Precision, warnings: list) -> tuple[IOType, str]:
    """``(IOType for the exporter, manifest io value)``; ``io="int16"`` is the integer I/O of int16x8."""
    if io is None:  # not chosen: integer I/O for integer models, float otherwise
        io = IOType.INT8 if precision in INTEGER else IOType.FLOAT
    io_t = choice(IOType, io, "io")
    if io_t is IOType.INT16:
        if precision is not Precision.INT16X8:
            raise InputError(f"io='int16' needs precision='int16x8'; precision {precision.value} has "
                             "float or 8-bit I/O (use io='int8', 'uint8' or 'float')")
        return IOType.INT8, "int16"
    if precision not in INTEGER and io_t is not IOType.FLOAT:
        warnings.append(f"io={io_t.value!r} does not apply to precision {precision.value} (float inputs and outputs); "
                        "the artifact takes and returns float32")
        return IOType.FLOAT, "float"
    if precision is Precision.INT16X8:
        if io_t is IOType.UINT8:
            raise InputError("int16x8 models take int16 or float I/O; io='uint8' is not possible (use 'int16' or 'float')")
        return io_t, ("int16" if io_t is IOType.INT8 else "float")
    return io_t, io_t.value


def _labels(labels) -> tuple | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        if not os.path.isfile(path):
            raise InputError(f"labels file {path!r} does not exist (expected one label per line)")
        with open(path, "r", encoding="utf-8") as fh:
            return tuple(ln.strip() for ln in fh if ln.strip())
    try:
        return tuple(str(v) for v in labels)
    except TypeError:
        raise InputError(f"labels must be a list of names or a text file path; got {type(labels).__name__}") from None


def _number(value, what: str, *, low: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            (low is not None and not value >= low):
        raise InputError(f"{what}={value!r} must be a number{'' if low is None else f' >= {low:g}'}")


def _check_path(value, what: str) -> None:
    """A data path that does not exist is refused before the model is loaded."""
    if isinstance(value, (str, os.PathLike)) and not (isinstance(value, str) and value == "random"):
        path = os.fspath(value)
        if not os.path.exists(path):
            raise CalibrationError(f"{what} data {path!r} does not exist (expected an image folder, .npy or .npz)")


def _check_prune(opts: PruneOptions) -> None:
    from .prune import parse_structure, target_sparsity  # noqa: PLC0415

    s = opts.sparsity
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 < float(s) <= MAX_PRUNE)):
        raise InputError(f"prune={s!r} must be a target sparsity between 0 and {MAX_PRUNE} (e.g. 0.5)")
    if isinstance(opts.epochs, bool) or not isinstance(opts.epochs, int) or opts.epochs < 1:
        raise InputError(f"prune_epochs={opts.epochs!r} must be a positive integer")
    target_sparsity(s, parse_structure(opts.structure))  # PruneOptionError (an EdgeshipError, ValueError)


def _check_advanced(adv: AdvancedOptions) -> AdvancedOptions:
    if isinstance(adv.calib_count, bool) or not isinstance(adv.calib_count, (int, np.integer)) or adv.calib_count < 1:
        raise InputError(f"calib_count={adv.calib_count!r} must be a positive integer")
    mb = adv.calib_max_bytes
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, (int, np.integer)) or mb < 1):
        raise InputError(f"calib_max_bytes={mb!r} must be a positive number of bytes")
    if isinstance(adv.seed, bool) or not isinstance(adv.seed, (int, np.integer)):
        raise InputError(f"seed={adv.seed!r} must be an integer")
    exclude = (adv.exclude,) if isinstance(adv.exclude, str) else adv.exclude
    try:
        exclude = tuple(str(e) for e in exclude or ())
    except TypeError:
        raise InputError(f"exclude={adv.exclude!r} must be a sequence of node names") from None
    shape = adv.input_shape
    if shape is not None:
        try:
            shape = tuple(None if d is None else int(d) for d in shape)
        except (TypeError, ValueError):
            raise InputError(f"input_shape={adv.input_shape!r} must be a sequence of integers (None: keep)") from None
    method = choice(CalibMethod, adv.calib_method, "calib_method")
    return dataclasses.replace(adv, calib_count=int(adv.calib_count), seed=int(adv.seed), exclude=exclude,
                               input_shape=shape, calib_method=method)


def resolve(*, model, output, calib=None, precision=None, io="int8", formats=None, preprocess=None, labels=None,
            eval_data=None, max_drop=None, target="cpu", task=None, name=None, force=False,
            prune: PruneOptions | None = None, advanced: AdvancedOptions | None = None,
            compress=None) -> ConversionPlan:
    """Check and normalise the options of one conversion (see ``convert()`` for their meaning).

    Raises:
        InputError: an option value is not supported or contradicts another (PruneOptionError
            for pruning options); nothing has been loaded or written.
        CalibrationError: a calibration, evaluation or training data path does not exist.
    """
    warnings: list = []
    tgts, precision, io, formats = _targets.parse_targets(target, precision, io, formats)
    prec = choice(Precision, precision, "precision")
    io_t, io_value = _io(io, prec, warnings)
    fmts = _targets.parse_formats(formats)
    task_t = None if task is None else choice(Task, task, "task")
    if max_drop is not None:
        _number(max_drop, "max_drop", low=0)
        max_drop = float(max_drop) if not isinstance(max_drop, int) else max_drop
    adv = _check_advanced(advanced if advanced is not None else AdvancedOptions())
    if prune is not None:
        _check_prune(prune)
    if compress is not None:
        from .compress.options import check as _check_compress  # noqa: PLC0415

        compress = _check_compress(compress)
    if adv.auto_fallback and max_drop is None:
        raise InputError("auto_fallback needs max_drop (the accuracy drop, in points, to stay within)")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name={name!r} must be a string (the bundle name)")
    for value, what in ((calib, "calibration"), (eval_data, "evaluation"),
                        (None if prune is None else prune.train_data, "training")):
        _check_path(value, what)
    if preprocess is not None and not isinstance(preprocess, (PreprocessSpec, dict, str)):
        raise InputError("preprocess must be a PreprocessSpec, a dict or a 'key=value,...' string; "
                         f"got {type(preprocess).__name__}")
    return ConversionPlan(
        model=model, output=os.fspath(output), calib=calib, eval_data=eval_data, precision=prec, io=io_t,
        io_value=io_value, formats=fmts, targets=tgts, preprocess=preprocess, labels=_labels(labels),
        max_drop=max_drop, task=task_t, name=name, force=bool(force), prune=prune, advanced=adv,
        warnings=tuple(warnings), compress=compress,
    )


# -- what needs the loaded model -----------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """The plan's choices that depend on the loaded source (from :func:`bind`)."""

    sample_shape: tuple  # one input sample, no batch axis
    preprocess: PreprocessSpec | None
    labels: tuple | None
    task: Task
    inputs: tuple  # the source's input tensor dicts, with stable names
    outputs: tuple  # the source's output tensor dicts, with stable names
    warnings: tuple = ()
    task_reason: str = ""  # "given" or why the graph says so (converters.task_infer)
    decoder: dict | None = None  # a detector's output layout (converters.task_infer.decoder_spec)


def _is_folder(spec) -> bool:
    return isinstance(spec, (str, os.PathLike)) and os.path.isdir(os.fspath(spec))


def _model_default(shape: tuple, layout: str) -> PreprocessSpec | None:
    """The model's default preprocessing (size and channels from its real layout), or None."""
    try:
        return PreprocessSpec.default_for(shape, layout)
    except InputError:
        return None


def _preprocess(value, shape: tuple, layout: str) -> PreprocessSpec | None:
    """The caller's preprocessing with the keys it left out taken from the model's input."""
    if value is None or isinstance(value, PreprocessSpec):
        spec = value
    else:
        default = _model_default(shape, layout)
        if isinstance(value, dict):
            d = dict(value)
            if default is not None:
                d.setdefault("size", list(default.size))
                d.setdefault("layout", default.layout.value)
                if default.color is ColorOrder.GRAY:
                    d.setdefault("color", "gray")
            try:
                spec = PreprocessSpec.from_dict(d)
            except (KeyError, ValueError, TypeError) as exc:
                raise InputError(f"preprocess={value!r} is malformed: {exc}") from None
        else:
            spec = PreprocessSpec.parse(value, default=default)
    if spec is not None and image_layout(shape, layout) is not None:
        spec.check_input(shape, layout, what="preprocess")
    return spec


def _classes(outputs: list) -> int | None:
    shape = outputs[0]["shape"] if outputs and outputs[0].get("shape") else None
    return int(shape[-1]) if shape and shape[-1] else None


def stable_names(source, side: str = "outputs") -> list:
    """Input or output names (``side``) that are the same on every conversion of the same model.

    The source's declared names (the keys of a Keras model's dict inputs/outputs, the
    graph inputs/outputs of an ONNX file, the signature of a SavedModel), else the
    names of the layers that produce them, else ``output_0``, ``output_1``...
    (``input_0``...). Keras' automatic tensor names (``keras_tensor_35``, numbered
    per process, changing with what ran before) are never used.
    """
    tensors = list(getattr(source, side))
    names = [str(t.get("name") or "") for t in tensors]
    model = source.handle if source.kind == "keras" else None
    declared = None
    struct = getattr(model, f"_{side}_struct", None) if model is not None else None
    if isinstance(struct, dict) and len(struct) == len(tensors):
        declared = sorted(str(k) for k in struct)  # dict outputs come back in sorted key order
    elif model is not None and hasattr(model, side):
        layers = []
        for t in list(getattr(model, side, None) or []):
            hist = getattr(t, "_keras_history", None)
            op = getattr(hist, "operation", None) or getattr(hist, "layer", None) or (
                hist[0] if isinstance(hist, tuple) and hist else None)
            layers.append(getattr(op, "name", None))
        if len(layers) == len(tensors) and all(layers):
            declared = [str(n) for n in layers]
    if declared is None:
        declared = [re.sub(r"[:/].*$", "", n) if model is not None else n for n in names]
    out, seen = [], set()
    for i, n in enumerate(declared):
        n = n if n and not re.fullmatch(r"keras_tensor(_\d+)?", n) else f"{side[:-1]}_{i}"
        if n in seen:
            n = f"{n}_{i}"
        seen.add(n)
        out.append(n)
    return out


def bind(plan: ConversionPlan, source) -> ModelPlan:
    """Check the plan against the loaded model, before any data is read.

    Raises:
        InputError: a preprocessing whose size/channels disagree with the model input,
            labels whose count differs from the model's classes, an input shape that is
            not fixed where it must be.
    """
    warnings: list = []
    full = tuple(source.inputs[0]["shape"])
    asked = plan.advanced.input_shape
    if asked and len(asked) == len(full) and asked[0] not in (None, 1):
        raise InputError(f"input_shape={tuple(asked)!r}: artifacts are written with batch 1 (Model.run runs any "
                         f"batch, one sample per invoke); pass input_shape={(1,) + tuple(asked[1:])!r}")
    dyn = dynamic_hw(full, source)
    if any(d is None for d in full[1:]) and not dyn:
        raise InputError(f"the model input {full} has dynamic dimensions; pass input_shape= (e.g. "
                         f"{tuple(1 if d is None else d for d in full)}) to fix them")
    if dyn and any(f is not Format.ONNX for f in plan.formats):
        raise InputError(f"TFLite artifacts need a fixed input size but the model input {full} has a dynamic "
                         f"height/width: pass input_shape= (e.g. {example_fixed(full)}) or formats=onnx")
    if dyn:
        spec = dynamic_preprocess(plan.preprocess, full, source.layout, warnings)
    else:
        spec = _preprocess(plan.preprocess, full, source.layout)
    sample = tuple(int(d) for d in full[1:]) if not dyn else tuple(spec.sample_shape(source.layout))
    if spec is None and (_is_folder(plan.calib) or _is_folder(plan.eval_data)):
        spec = _model_default(full, source.layout)
        if spec is not None:
            warnings.append(
                f"no preprocessing given: assumed {spec.color.value}, stretch-resized to "
                f"{spec.size[0]}x{spec.size[1]}, pixels scaled by 1/255; pass preprocess= if the model expects otherwise"
            )
    classes = _classes(source.outputs)
    if plan.task is not None:
        task, task_reason = plan.task, "given"
    else:
        task, why = infer_task(source)
        task_reason = f"inferred from the graph: {why}"
        if task in (Task.DETECTION, Task.SEGMENTATION):  # classification stays the quiet default
            warnings.append(f"task= {task.value} {task_reason}; pass task= to say otherwise")
    if plan.labels is not None and task is Task.CLASSIFICATION and classes and len(plan.labels) != classes:
        raise InputError(f"labels has {len(plan.labels)} names but the model has {classes} classes "
                         f"(output shape {tuple(source.outputs[0]['shape'])}); give one label per class")
    inputs = tuple({**t, "name": n} for t, n in zip(source.inputs, stable_names(source, "inputs")))
    outputs = tuple({**t, "name": n} for t, n in zip(source.outputs, stable_names(source, "outputs")))
    decoder = None
    if task is Task.DETECTION:
        size = tuple(spec.size) if spec is not None else None
        decoder = decoder_spec(source.outputs, size, plan.labels,
                               units="pixels" if _ultralytics(source) else "auto", source=source)
    return ModelPlan(sample_shape=sample, preprocess=spec, labels=plan.labels, task=task, inputs=inputs,
                     outputs=outputs, warnings=tuple(warnings), task_reason=task_reason, decoder=decoder)


def _ultralytics(source) -> bool:
    """An Ultralytics export (its ONNX metadata says so): YOLO boxes in input pixels."""
    if source.kind != "onnx" or not isinstance(source.handle, str):
        return False
    try:
        import onnx  # noqa: PLC0415

        meta = {p.key: p.value for p in onnx.load(source.handle, load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - no metadata, no claim
        return False
    return "ultralytics" in meta.get("author", "").lower() or "ultralytics" in meta.get("docs", "").lower()
