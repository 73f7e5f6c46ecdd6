"""``convert()``: a model in, a calibrated, validated, atomically written bundle out."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

import numpy as np

from edgeship import __version__
from edgeship import metrics as _metrics
from edgeship.bundle import BundleWriter
from edgeship.calibration import RANDOM, CalibrationSet, load_samples
from edgeship.errors import CalibrationError, InputError, UnsupportedModelError, ValidationFailedError
from edgeship.preprocess import ColorOrder, PreprocessSpec

from . import registry
from . import report as _report
from .registry import CalibMethod, ExportRequest, Format, IOType, Precision

CALIBRATION_FILE = "calibration.npz"
TASKS = ("classification", "detection", "regression", "other")
MAX_VALIDATION = 200
# Artifact notes starting with these are also returned in ConversionResult.warnings.
WARNING_NOTE_PREFIXES = ("warning:", "slow on x86:")
MIN_VALIDATION = 8
_INTEGER = (Precision.INT8, Precision.INT16X8)
_METRIC_KEYS = ("top1_agreement", "accuracy", "source_accuracy", "cosine", "max_abs_error", "sqnr_db")


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


# -- argument parsing ------------------------------------------------------------------


def _enum(value: Any, enum: type[Enum], what: str):
    if isinstance(value, enum):
        return value
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except (ValueError, TypeError):
        choices = ", ".join(repr(e.value) for e in enum)
        raise InputError(f"{what}={value!r} is not supported; expected one of {choices}") from None


def _parse_formats(formats) -> tuple:
    if isinstance(formats, (str, Format)):
        formats = (formats,)
    try:
        items = list(formats)
    except TypeError:
        raise InputError(f"formats={formats!r} must be a format name or a sequence of them") from None
    if not items:
        raise InputError("formats is empty; expected at least one of 'tflite', 'onnx'")
    return tuple(dict.fromkeys(_enum(f, Format, "formats") for f in items))


TARGETS = ("cpu", "edgetpu", "gpu", "jetson")


def _parse_targets(target, precision, io, formats) -> tuple[tuple, Any, Any, Any]:
    """(targets, precision, io, formats) with the targets' rules applied.

    ``edgetpu``: full INT8 TFLite with int8/uint8 I/O and builtin INT8 ops only
    (the converter refuses anything else); ``gpu``: fp16 TFLite by default;
    ``jetson``: INT8 QDQ ONNX (symmetric, for TensorRT) by default. ``None``
    precision/formats mean "what the targets prefer"; explicit choices that a
    target cannot run are an :class:`InputError`. Other target strings (``x86``,
    ``arm``, ``tensorrt``) pass through to the exporters as before.
    """
    items = [t.strip() for t in target.split(",")] if isinstance(target, str) else list(target or ())
    tgts = tuple(dict.fromkeys(str(t).lower() for t in items if str(t).strip())) or ("cpu",)
    if precision is None:
        precision = "fp16" if set(tgts) == {"gpu"} else "int8"
    if formats is None:
        formats = ("onnx",) if set(tgts) == {"jetson"} else ("tflite", "onnx") if "jetson" in tgts else ("tflite",)
    if "edgetpu" in tgts:
        prec = _enum(precision, Precision, "precision")
        fmts = _parse_formats(formats)
        if prec is not Precision.INT8:
            raise InputError(f"target edgetpu needs precision='int8' (the Edge TPU runs full-integer models only), "
                             f"got {prec.value!r}")
        if str(getattr(io, "value", io)).lower() not in ("int8", "uint8"):
            raise InputError(f"target edgetpu needs io='int8' or io='uint8' (the I/O types the Edge TPU compiler "
                             f"accepts), got {getattr(io, 'value', io)!r}")
        if Format.TFLITE not in fmts:
            raise InputError("target edgetpu needs the tflite format (the Edge TPU compiler takes .tflite files); "
                             f"formats={[f.value for f in fmts]}")
    if "jetson" in tgts and Format.ONNX not in _parse_formats(formats):
        raise InputError("target jetson needs the onnx format (TensorRT through ONNX Runtime runs INT8 QDQ ONNX); "
                         "add 'onnx' to formats")
    return tgts, precision, io, formats


def _artifact_targets(tgts: tuple, fmt: Format) -> list:
    """The targets one artifact is meant for."""
    skip = ("jetson",) if fmt is Format.TFLITE else ("edgetpu",)
    return [t for t in tgts if t not in skip] or list(tgts)


def _export_target(tgts: tuple, fmt: Format) -> str:
    if fmt is Format.ONNX:
        return "jetson" if "jetson" in tgts else next((t for t in tgts if t != "edgetpu"), "cpu")
    return "edgetpu" if "edgetpu" in tgts else tgts[0]


def _edgetpu_step(w, artifacts: list, warnings: list) -> dict:
    """Compile the INT8 TFLite artifact with edgetpu_compiler (when on PATH); the manifest record."""
    from .edgetpu import OUTPUT_FILE, compile_model  # noqa: PLC0415

    src = next(a for a in artifacts if a["format"] == "tflite" and a["precision"] == "int8")
    res = compile_model(w.path(src["file"]), w.dir)
    record = res.to_manifest()
    record["source_artifact"] = src["file"]
    if not res.compiled:
        record["command"] = list(res.command)
        warnings.extend(res.notes)
        return record
    entry = {k: v for k, v in src.items() if k not in ("sha256", "bytes", "gzip_bytes", "notes", "file")}
    entry.update(file=OUTPUT_FILE, targets=["edgetpu"], **w.file_info(OUTPUT_FILE))
    entry["notes"] = [f"compiled by edgetpu_compiler {res.version or ''} from {src['file']}: "
                      f"{res.ops_edgetpu} of {res.ops_total} ops on the Edge TPU, {res.ops_cpu} on the CPU, "
                      f"{res.subgraphs if res.subgraphs is not None else '?'} Edge TPU subgraph(s)", *res.notes]
    entry["edgetpu"] = record
    src["targets"] = [t for t in src["targets"] if t != "edgetpu"] or ["cpu"]
    artifacts.append(entry)
    warnings.extend(n for n in res.notes if "stay on the CPU" in n)
    return record


def _parse_io(io, precision: Precision, warnings: list) -> tuple[IOType, str]:
    """``(IOType for the exporter, manifest io value)``.

    ``io="int16"`` (or ``IOType.INT16``) is the integer I/O of ``int16x8``; exporters
    receive ``IOType.INT8`` for it (their "integer I/O" choice), the manifest says ``int16``.
    """
    if io is None:  # not chosen: integer I/O for integer models, float otherwise
        io = IOType.INT8 if precision in _INTEGER else IOType.FLOAT
    io_t = _enum(io, IOType, "io")
    if io_t is IOType.INT16:
        if precision is not Precision.INT16X8:
            raise InputError(f"io='int16' needs precision='int16x8'; precision {precision.value} has "
                             "float or 8-bit I/O (use io='int8', 'uint8' or 'float')")
        return IOType.INT8, "int16"
    if precision not in _INTEGER and io_t is not IOType.FLOAT:
        warnings.append(f"io={io_t.value!r} does not apply to precision {precision.value} (float inputs and outputs); "
                        "the artifact takes and returns float32")
        return IOType.FLOAT, "float"
    if precision is Precision.INT16X8:
        if io_t is IOType.UINT8:
            raise InputError("int16x8 models take int16 or float I/O; io='uint8' is not possible (use 'int16' or 'float')")
        return io_t, ("int16" if io_t is IOType.INT8 else "float")
    return io_t, io_t.value


def _parse_preprocess(preprocess, sample_shape: tuple) -> PreprocessSpec | None:
    if preprocess is None or isinstance(preprocess, PreprocessSpec):
        return preprocess
    size = sample_shape[:2] if len(sample_shape) == 3 else None
    channels = sample_shape[-1] if len(sample_shape) == 3 else None
    if isinstance(preprocess, dict):
        d = dict(preprocess)
        if "size" not in d and size is not None:
            d["size"] = list(size)
        if "color" not in d and channels == 1:
            d["color"] = "gray"
        try:
            return PreprocessSpec.from_dict(d)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"preprocess={preprocess!r} is malformed: {exc}") from None
    if isinstance(preprocess, str):
        return PreprocessSpec.parse(preprocess, default_size=size, channels=channels)
    raise InputError(f"preprocess must be a PreprocessSpec, a dict or a 'key=value,...' string; got {type(preprocess).__name__}")


def _default_preprocess(sample_shape: tuple) -> PreprocessSpec | None:
    """Pixels scaled to [0, 1], RGB or gray, for image-shaped NHWC inputs."""
    if len(sample_shape) == 3 and sample_shape[-1] in (1, 3):
        return PreprocessSpec(size=(int(sample_shape[0]), int(sample_shape[1])),
                              color=ColorOrder.GRAY if sample_shape[-1] == 1 else ColorOrder.RGB)
    return None


def _parse_labels(labels) -> list | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        if not os.path.isfile(path):
            raise InputError(f"labels file {path!r} does not exist (expected one label per line)")
        with open(path, "r", encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip()]
    try:
        return [str(v) for v in labels]
    except TypeError:
        raise InputError(f"labels must be a list of names or a text file path; got {type(labels).__name__}") from None


def _is_folder(spec) -> bool:
    return isinstance(spec, (str, os.PathLike)) and os.path.isdir(os.fspath(spec))


def _versions() -> dict:
    from importlib import metadata  # noqa: PLC0415

    out = {"edgeship": __version__, "python": platform.python_version()}
    for dist in ("tensorflow", "keras", "tf-keras", "ai-edge-litert", "numpy", "onnxruntime", "opencv-python-headless"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _register_plugins() -> None:
    from . import keras_loader, tflite  # noqa: F401,PLC0415

    try:
        importlib.import_module("edgeship.converters.onnx_formats")
    except ModuleNotFoundError as exc:
        if exc.name != "edgeship.converters.onnx_formats":
            raise


# -- data ------------------------------------------------------------------------------


def _split(data: CalibrationSet, calib_count: int, want_val: int, seed: int, warnings: list):
    """``(calibration part, validation part)`` of one loaded set, held out when possible."""
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


# -- pruning and accuracy-aware fallback ------------------------------------------------

MAX_PRUNE = 0.95


def _parse_prune(prune, prune_structure, prune_epochs, train_data) -> bool:
    """Check the pruning options; True when pruning was asked for."""
    if prune is None and prune_structure in (None, ""):
        if train_data is not None:
            raise InputError("train_data is used for pruning only; pass prune= (e.g. 0.5) or prune_structure='2:4'")
        return False
    if prune is not None:
        if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not (0.0 < float(prune) <= MAX_PRUNE):
            raise InputError(f"prune={prune!r} must be a target sparsity between 0 and {MAX_PRUNE} (e.g. 0.5)")
    if isinstance(prune_epochs, bool) or not isinstance(prune_epochs, int) or prune_epochs < 1:
        raise InputError(f"prune_epochs={prune_epochs!r} must be a positive integer")
    from .prune import _target_sparsity, parse_structure  # noqa: PLC0415

    _target_sparsity(prune, parse_structure(prune_structure))  # PruneOptionError (an InputError-like ValueError)
    return True


def _prune_keras_source(source, *, prune, prune_structure, prune_epochs, train_data, spec, seed, input_shape):
    """``(export source, manifest pruning section, warnings)`` for a Keras source."""
    from . import keras_loader  # noqa: PLC0415
    from .prune import load_train_data, prune_keras  # noqa: PLC0415

    if source.format == "saved_model" or not hasattr(source.handle, "layers"):
        raise UnsupportedModelError(
            f"pruning needs a Keras model (.keras file or in-memory); {source.format} sources cannot be pruned"
        )
    data = None
    if train_data is not None:
        data = load_train_data(train_data, preprocess=spec, input_shape=tuple(source.inputs[0]["shape"]))
    res = prune_keras(source.handle, sparsity=prune, structure=prune_structure, train_data=data,
                      epochs=prune_epochs, seed=int(seed), progress=True)
    pruned = keras_loader._keras_source(res.model, "tf_keras", "tf_keras", source.path, source.sha256,
                                        input_shape or source.inputs[0]["shape"])
    section = res.to_manifest()
    section["bridged"] = bool(res.bridged)
    section["train_data"] = None if train_data is None else (
        os.fspath(train_data) if isinstance(train_data, (str, os.PathLike)) else f"{len(data.x)} in-memory samples")
    section["train_count"] = None if data is None else int(len(data.x))
    if res.history:
        section["history"] = res.history
    return pruned, section, [f"pruning: {m}" for m in res.warnings]


def _prune_onnx_source(source, workdir, *, prune, prune_structure, input_shape, val_set, max_drop, warnings):
    """Prune the FP32 ONNX source into ``workdir``; ``(export source, pruning section)``."""
    from .onnx_formats import load_onnx  # noqa: PLC0415
    from .prune_onnx import onnx_accuracy_cost, prune_onnx  # noqa: PLC0415

    dst = os.path.join(workdir, "pruned.fp32.onnx")
    section = prune_onnx(source.handle, dst, sparsity=prune, structure=prune_structure)
    pruned = load_onnx(dst, input_shape=input_shape or source.inputs[0]["shape"])
    cost = onnx_accuracy_cost(source.handle, dst, val_set.x, val_set.y, input_name=source.inputs[0]["name"])
    section.update({"fine_tuned": False, "epochs": 0, "bridged": False, "accuracy_cost": cost})
    drop = cost.get("drop_points")
    if drop is None and cost.get("top1_agreement") is not None:
        drop = 100.0 * (1.0 - cost["top1_agreement"])
    if drop is not None and max_drop is not None and drop > max_drop:
        warnings.append(f"pruning: ONNX magnitude pruning (no fine-tuning) alone costs {drop:.1f} points on "
                        f"{cost.get('count')} samples, more than max_drop={max_drop}")
    return pruned, section


def _fp32_cost(reference, export_source, val_set) -> dict:
    """What pruning alone cost: the pruned FP32 model against the dense source."""
    got = export_source.predict(val_set.x)
    m = _metrics.compare(reference[0], got[0], val_set.y)
    out = {k: m.get(k) for k in ("count", "top1_agreement", "accuracy", "source_accuracy", "cosine", "sqnr_db")}
    out["drop_points"] = float(_metrics.drop_points(m))
    return out


def _accuracy_fallback(entry: dict, w, export_source, request_kw: dict, reference, val_set, max_drop: float,
                       warnings: list) -> dict | None:
    """Keep sensitive layers of an INT8 TFLite artifact in float until the drop is within ``max_drop``.

    Rewrites the artifact file and ``entry`` in place when an attempt succeeds; returns the
    record for ``settings.accuracy_aware`` (None when the plain artifact already passes).

    Raises:
        ValidationFailedError: no attempt met ``max_drop`` (the best one is described).
    """
    from .validate import validate_artifact  # noqa: PLC0415

    fname = entry["file"]

    def evaluate(path):
        return validate_artifact(path, reference, val_set.x, val_set.y, name=fname,
                                 source_layout=val_layout, artifact_layout=entry.get("layout"))

    val_layout = request_kw.pop("source_layout")
    try:
        base = evaluate(w.path(fname))
        base_drop = float(_metrics.drop_points(base))
    except ValidationFailedError:
        base, base_drop = {}, 100.0
    if base_drop <= max_drop:
        return None
    baseline = {"drop_points": base_drop, "bytes": entry["bytes"], "gzip_bytes": entry["gzip_bytes"],
                "accuracy": base.get("accuracy"), "top1_agreement": base.get("top1_agreement")}
    if entry.get("format") == "onnx" and entry.get("precision") == Precision.INT8.value and \
            export_source.kind in ("onnx", "keras"):
        return _onnx_accuracy_fallback(entry, w, export_source, request_kw, evaluate, baseline, max_drop, warnings)
    if entry.get("format") != "tflite" or entry.get("precision") != Precision.INT8.value or \
            export_source.kind != "keras":
        warnings.append(f"{fname}: auto_fallback applies to int8 TFLite artifacts of Keras sources and int8 ONNX "
                        "artifacts of ONNX or Keras sources; this artifact was not adjusted")
        return None
    from .accuracy import TfliteLayerErrors, tflite_fallback  # noqa: PLC0415
    from .tflite import read_io  # noqa: PLC0415

    work = tempfile.mkdtemp(prefix=".fallback-", dir=w.dir)
    try:
        errors = TfliteLayerErrors(export_source, ExportRequest(**{**request_kw, "workdir": work}))
        res = tflite_fallback(errors, evaluate, max_drop=max_drop, workdir=work,
                              baseline={"drop_points": base_drop, "bytes": entry["bytes"],
                                        "gzip_bytes": entry["gzip_bytes"], "accuracy": base.get("accuracy"),
                                        "top1_agreement": base.get("top1_agreement")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tried = "; ".join(f"{'+'.join(a['kept_float']) or 'none'} in float: "
                      + ("failed" if a.get("drop_points") is None else f"{a['drop_points']:.1f} points")
                      for a in res.attempts)
    if not res.ok:
        best = min((a for a in res.attempts if a.get("drop_points") is not None), key=lambda a: a["drop_points"])
        raise ValidationFailedError(
            f"{fname}: INT8 dropped {base_drop:.1f} points (max_drop={max_drop}); keeping the most sensitive layers "
            f"in float did not bring it within max_drop. Attempts: {tried}. Best: {best['drop_points']:.1f} points "
            f"with {best['kept_float'] or 'no layer'} in float; nothing was written"
        )
    old_bytes, old_gzip = entry["bytes"], entry["gzip_bytes"]
    with open(w.path(fname), "wb") as fh:
        fh.write(res.model)
    entry["inputs"], entry["outputs"] = read_io(w.path(fname))
    return _fallback_record(entry, w, fname, res, base_drop, old_bytes, old_gzip, max_drop, warnings,
                            method="TFLite QuantizationDebugger per-layer SQNR ranking; denylisted_nodes kept in "
                                   "float one at a time",
                            denylist=list(res.denylist))


def _fallback_record(entry: dict, w, fname: str, res, base_drop: float, old_bytes: int, old_gzip: int,
                     max_drop: float, warnings: list, *, method: str, denylist: list) -> dict:
    """Refresh the artifact entry after an accuracy-aware re-quantization; note it; the manifest record."""
    entry.update(w.file_info(fname))
    note = (f"accuracy-aware: kept {', '.join(res.kept_float)} in float (INT8 elsewhere); drop {base_drop:.1f} -> "
            f"{res.attempts[-1]['drop_points']:.1f} points, {entry['bytes'] - old_bytes:+d} bytes")
    entry["notes"] = list(entry.get("notes") or []) + [note]
    warnings.append(f"{fname}: {note}")
    return {
        "method": method,
        "max_drop": max_drop,
        "baseline_drop_points": base_drop,
        "kept_float": list(res.kept_float),
        "denylisted_nodes": denylist,
        "attempts": res.attempts,
        "size_cost_bytes": int(entry["bytes"] - old_bytes),
        "size_cost_gzip_bytes": int(entry["gzip_bytes"] - old_gzip),
        "seconds": round(res.seconds, 2),
        "layer_errors": res.layer_errors,
    }


def _onnx_accuracy_fallback(entry: dict, w, export_source, request_kw: dict, evaluate, baseline: dict,
                            max_drop: float, warnings: list) -> dict:
    """The ONNX branch of :func:`_accuracy_fallback`: rank nodes with ONNX Runtime's qdq_loss_debug and
    quantize again with the most sensitive ones in ``exclude`` until the drop is within ``max_drop``.

    The FP32 model is the (possibly pruned) ONNX export source, or for a Keras source a fresh tf2onnx
    export; it is quantized with the exporter's settings (target, calib_method, per_channel, and the
    user's ``exclude`` on top of the fallback's).
    """
    import onnx  # noqa: PLC0415

    from .accuracy import OnnxNodeErrors, onnx_fallback  # noqa: PLC0415
    from .onnx_formats import _input_shape_of  # noqa: PLC0415
    from .onnx_quant import io_tensors  # noqa: PLC0415

    fname = entry["file"]
    req = ExportRequest(**{**request_kw, "workdir": ""})
    base_drop = baseline["drop_points"]
    user_exclude = list(req.exclude or ())
    work = tempfile.mkdtemp(prefix=".fallback-", dir=w.dir)
    try:
        if export_source.kind == "keras":
            from .onnx_export import export_keras  # noqa: PLC0415

            fp32 = os.path.join(work, "keras_fp32.onnx")
            export_keras(export_source.handle, fp32, samples=req.calib, reference=export_source.predict,
                         input_shape=_input_shape_of(export_source))
        else:
            fp32 = export_source.handle
        errors = OnnxNodeErrors(fp32, req.calib, workdir=work, target=req.target, calib_method=req.calib_method,
                                per_channel=req.per_channel, input_shape=_input_shape_of(export_source))
        if user_exclude:  # the user's exclusions stay in every attempt
            quantize = errors.quantize
            errors.quantize = lambda exclude=(): quantize(
                [*user_exclude, *(e for e in exclude if e not in user_exclude)])
        res = onnx_fallback(errors, evaluate, max_drop=max_drop, baseline=baseline)
        tried = "; ".join(f"{'+'.join(a['kept_float']) or 'none'} in float: "
                          + ("failed" if a.get("drop_points") is None else f"{a['drop_points']:.1f} points")
                          for a in res.attempts)
        if not res.ok:
            done = [a for a in res.attempts[1:] if a.get("drop_points") is not None]
            best = min(done or res.attempts[:1], key=lambda a: a["drop_points"])
            raise ValidationFailedError(
                f"{fname}: INT8 dropped {base_drop:.1f} points (max_drop={max_drop}); keeping the most sensitive "
                f"nodes in float did not bring it within max_drop. Attempts: {tried}. Best: "
                f"{best['drop_points']:.1f} points with {best['kept_float'] or 'no node'} in float; nothing was written"
            )
        old_bytes, old_gzip = entry["bytes"], entry["gzip_bytes"]
        shutil.copyfile(res.model, w.path(fname))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry["inputs"], entry["outputs"] = io_tensors(onnx.load(w.path(fname)))
    return _fallback_record(entry, w, fname, res, base_drop, old_bytes, old_gzip, max_drop, warnings,
                            method="ONNX Runtime qdq_loss_debug per-node SQNR ranking; nodes kept in float via "
                                   "exclude one at a time",
                            denylist=[*user_exclude, *(n for n in res.denylist if n not in user_exclude)])


def _layer_errors(entry: dict, export_source, request_kw: dict, warnings: list) -> list | None:
    """The ten op outputs with the lowest per-layer SQNR of an INT8 TFLite artifact (on request)."""
    if entry.get("format") != "tflite" or entry.get("precision") != Precision.INT8.value or \
            export_source.kind != "keras":
        return None
    from .accuracy import TfliteLayerErrors  # noqa: PLC0415

    kw = dict(request_kw)
    kw.pop("source_layout", None)
    kw["workdir"] = tempfile.mkdtemp(prefix=".layer-errors-")
    try:
        return TfliteLayerErrors(export_source, ExportRequest(**kw)).top(10)
    except UnsupportedModelError as exc:
        warnings.append(f"{entry['file']}: per-layer quantization error not measured: {exc}")
        return None
    finally:
        shutil.rmtree(kw["workdir"], ignore_errors=True)


# -- convert ---------------------------------------------------------------------------


def content_hash(manifest: dict) -> str:
    """``sha256:<hex>`` over what a bundle computes, ignoring when and with what it was made.

    Covered: each artifact's bytes (through its sha256), file name, format,
    precision, I/O type, layout and input/output tensors (names, shapes, dtypes,
    quantization scale/zero-point), the source's tensors and layout, the task,
    preprocessing and labels. Not covered: ``created``, tool versions, source
    and calibration paths, validation metrics, notes and report files, so two
    conversions of the same model with the same data and settings get the same
    hash. Keras' automatic tensor names (``keras_tensor_12``, numbered per
    process) are hashed without their number. JSON with sorted keys and no
    whitespace is hashed.
    """
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415
    import re  # noqa: PLC0415

    def tensors(entries):
        return [dict(t, name=re.sub(r"^(keras_tensor)_\d+$", r"\1", t["name"]))
                if isinstance(t, dict) and isinstance(t.get("name"), str) else t for t in entries or ()]

    keys = ("file", "format", "precision", "io", "layout", "sha256", "inputs", "outputs")
    src = manifest.get("source") or {}
    stable = {
        "artifacts": sorted(({k: a.get(k) for k in keys} for a in manifest.get("artifacts") or ()),
                            key=lambda a: a["file"]),
        "source": {"layout": src.get("layout"), "inputs": tensors(src.get("inputs")),
                   "outputs": tensors(src.get("outputs"))},
        "task": manifest.get("task"),
        "preprocessing": manifest.get("preprocessing"),
        "labels": manifest.get("labels"),
    }
    blob = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


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
    target: str | Sequence[str] = "cpu",
    task: str | None = None,
    name: str | None = None,
    prune: float | None = None,
    prune_structure: str | None = None,
    prune_epochs: int = 2,
    train_data: Any = None,
    auto_fallback: bool = False,
    layer_errors: bool = False,
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
        preprocess: how images become inputs (stored in the manifest).
        labels: class names, or a text file with one per line.
        eval_data: data to validate on (same kinds as ``calib``); by default
            samples held out from ``calib``.
        max_drop: fail if accuracy (or top-1 agreement) drops more than this
            many percentage points.
        calib_count: at most this many calibration samples are used.
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
            INT8 QDQ for TensorRT. Other values (``x86``, ``arm``) go to the exporters.
        task: ``classification``, ``detection``, ``regression`` or ``other``.
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
            ``x`` and ``y``, or ``(x, y)`` arrays: fine-tuning data for pruning.
        auto_fallback: with ``max_drop``: when an INT8 TFLite artifact drops more,
            keep its most quantization-sensitive layers in float one at a time
            (ranked by TFLite's QuantizationDebugger) until it is within
            ``max_drop``; fails with the best attempt described otherwise.
        layer_errors: measure the ten layers with the largest quantization error of
            INT8 TFLite artifacts for the report (done anyway by ``auto_fallback``).

    Returns:
        A :class:`ConversionResult`.

    Raises:
        BundleExistsError: ``output`` exists and ``force`` is false (before any work).
        InputError: an option value is not supported.
        UnsupportedModelError: no loader or exporter handles the model/format.
        UnsafeModelError: the model contains code and ``allow_unsafe`` is false.
        ModelFormatError: the model file is corrupt.
        CalibrationError: calibration/evaluation data missing, too small or mis-shaped.
        ValidationFailedError: an artifact collapsed or lost more than ``max_drop`` points.
    """
    warnings: list = []
    tgts, precision, io, formats = _parse_targets(target, precision, io, formats)
    target = tgts[0] if len(tgts) == 1 else ",".join(tgts)
    prec = _enum(precision, Precision, "precision")
    io_t, io_value = _parse_io(io, prec, warnings)
    fmts = _parse_formats(formats)
    method = _enum(calib_method, CalibMethod, "calib_method")
    if task is not None and task not in TASKS:
        raise InputError(f"task={task!r} is not supported; expected one of {', '.join(map(repr, TASKS))}")
    if max_drop is not None:
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not (max_drop >= 0):
            raise InputError(f"max_drop={max_drop!r} must be a number of percentage points >= 0")
    if isinstance(calib_count, bool) or not isinstance(calib_count, int) or calib_count < 1:
        raise InputError(f"calib_count={calib_count!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed={seed!r} must be an integer")
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(str(e) for e in exclude)
    label_names = _parse_labels(labels)
    do_prune = _parse_prune(prune, prune_structure, prune_epochs, train_data)
    if auto_fallback and max_drop is None:
        raise InputError("auto_fallback needs max_drop (the accuracy drop, in points, to stay within)")

    writer = BundleWriter(os.fspath(output), force=force)
    writer.check_target()  # before any work

    _register_plugins()
    loader_name, loader = registry.find_loader(model)
    if loader is None:
        raise UnsupportedModelError(
            f"no loader for {model!r}: expected a .keras/.h5 file, a SavedModel folder, an .onnx file or a Keras model"
        )
    from .tflite import quiet  # noqa: PLC0415

    with quiet():  # TensorFlow's import-time C++ logging (absl, CUDA probes) is noise here
        source = loader(model, input_shape=input_shape, allow_legacy_h5=allow_legacy_h5, allow_unsafe=allow_unsafe)
    exporters = {}
    for f in fmts:
        fn = registry.find_exporter(source.kind, f.value)
        if fn is None:
            raise UnsupportedModelError(f"no exporter writes {f.value} from a {source.kind} model")
        exporters[f] = fn

    sample_shape = tuple(int(d) for d in source.inputs[0]["shape"][1:])
    spec = _parse_preprocess(preprocess, sample_shape)
    if spec is None and (_is_folder(calib) or _is_folder(eval_data)):
        spec = _default_preprocess(sample_shape)
        if spec is not None:
            warnings.append(
                f"no preprocessing given: assumed {spec.color.value}, stretch-resized to "
                f"{spec.size[0]}x{spec.size[1]}, pixels scaled by 1/255; pass preprocess= if the model expects otherwise"
            )
    needs_calib = prec in _INTEGER
    want_val = 0 if eval_data is not None else max(MIN_VALIDATION, min(MAX_VALIDATION, calib_count // 2))

    calib_set = val_set = None
    held_out = False
    if calib is not None:
        loaded = load_samples(calib, input_shape=sample_shape, preprocess=spec, count=calib_count + want_val,
                              seed=seed, allow_random=isinstance(calib, str) and calib == RANDOM)
        warnings.extend(loaded.warnings)
        if eval_data is None:
            calib_set, val_set, held_out = _split(loaded, calib_count, want_val, seed, warnings)
        else:
            calib_set = loaded.subset(np.arange(min(len(loaded), calib_count)))
    elif needs_calib:
        raise CalibrationError(
            f"precision {prec.value} needs calibration data: pass calib= an image folder, a .npy/.npz file or an "
            "array (or calib='random' by name, which calibrates on noise)"
        )
    if eval_data is not None:
        val_set = load_samples(eval_data, input_shape=sample_shape, preprocess=spec, count=max(MAX_VALIDATION, 1000),
                               seed=seed, allow_random=isinstance(eval_data, str) and eval_data == RANDOM,
                               what="evaluation")
        warnings.extend(val_set.warnings)
        held_out = True
    if val_set is None:  # float precision, no data at all: a numeric check only
        val_set = load_samples(RANDOM, input_shape=sample_shape, count=32, seed=seed, allow_random=True,
                               what="validation")
        warnings.append("no calib or eval_data: validated on random noise (numeric agreement only, no accuracy)")
    if label_names is None and calib_set is not None and calib_set.classes is not None:
        n_out = source.outputs[0]["shape"][-1] if source.outputs and source.outputs[0]["shape"] else None
        if n_out == len(calib_set.classes):
            label_names = list(calib_set.classes)
    if calib_set is not None and calib_set.kind == "random":
        warnings.append("calibrated on random noise (asked for by name): int8 ranges do not reflect real data")

    calib_x = calib_set.x if calib_set is not None else None
    export_source, pruning = source, None
    if do_prune and source.kind == "keras":
        export_source, pruning, prune_warnings = _prune_keras_source(
            source, prune=prune, prune_structure=prune_structure, prune_epochs=prune_epochs,
            train_data=train_data, spec=spec, seed=seed, input_shape=input_shape)
        warnings.extend(prune_warnings)
    elif do_prune and source.kind != "onnx":
        raise UnsupportedModelError(f"pruning is not supported for {source.kind} sources")
    out_count = int(source.outputs[0]["shape"][-1]) if source.outputs and source.outputs[0]["shape"] and \
        source.outputs[0]["shape"][-1] else 1
    task_value = task or ("classification" if out_count > 1 and len(source.outputs) == 1 else "other")

    with writer as w:
        # scratch space inside the bundle's temp folder: removed below, and with it on any crash
        workdir = tempfile.mkdtemp(prefix=".work-", dir=w.dir)
        artifacts, extras = [], {}
        try:
            if do_prune and source.kind == "onnx":
                export_source, pruning = _prune_onnx_source(
                    source, workdir, prune=prune, prune_structure=prune_structure, input_shape=input_shape,
                    val_set=val_set, max_drop=max_drop, warnings=warnings)
            for f, fn in exporters.items():
                fname = f"model.{prec.value}.{f.value}"
                req = ExportRequest(precision=prec, io=io_t, calib=calib_x, out_path=w.path(fname), workdir=workdir,
                                    target=_export_target(tgts, f), calib_method=method, exclude=exclude,
                                    seed=int(seed))
                part = dict(fn(export_source, req))
                extras.update(part.pop("extra", {}) or {})
                entry = {"file": fname, **part}
                entry["io"] = part.get("io") or io_value
                entry.setdefault("layout", source.layout)
                entry["targets"] = _artifact_targets(tgts, f)
                entry.update(w.file_info(fname))
                entry["notes"] = list(part.get("notes") or [])
                # notes are informational; the ones flagged as warnings (or slow choices) are surfaced too
                warnings.extend(f"{fname}: {n}" for n in entry["notes"] if n.startswith(WARNING_NOTE_PREFIXES))
                artifacts.append(entry)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

        calib_file = None
        if calib_set is not None:
            calib_file = CALIBRATION_FILE
            arrays = {"x": calib_set.x}
            if calib_set.y is not None:
                arrays["y"] = calib_set.y
            np.savez_compressed(w.path(calib_file), **arrays)

        reference = source.predict(val_set.x)
        from .validate import validate_artifact  # noqa: PLC0415

        validation = {}
        if pruning is not None and source.kind == "keras":
            pruning["fp32_cost"] = _fp32_cost(reference, export_source, val_set)
        quant_errors = {}
        for entry in artifacts:
            req_kw = dict(precision=prec, io=io_t, calib=calib_x, out_path=w.path(entry["file"]), workdir="",
                          target=_export_target(tgts, Format(entry["format"])), calib_method=method,
                          exclude=exclude, seed=int(seed),
                          source_layout=source.layout)
            if auto_fallback and max_drop is not None:
                record = _accuracy_fallback(entry, w, export_source, dict(req_kw), reference, val_set, max_drop,
                                            warnings)
                if record is not None:
                    extras.setdefault("accuracy_aware", {})[entry["file"]] = record
                    quant_errors[entry["file"]] = record["layer_errors"]
            if layer_errors and entry["file"] not in quant_errors:
                errs = _layer_errors(entry, export_source, req_kw, warnings)
                if errs is not None:
                    quant_errors[entry["file"]] = errs
            res = validate_artifact(w.path(entry["file"]), reference, val_set.x, val_set.y, name=entry["file"],
                                    source_layout=source.layout, artifact_layout=entry.get("layout"))
            validation[entry["file"]] = {k: res.get(k) for k in _METRIC_KEYS}
            if res.get("mixed_ranges"):  # outputs mixing very different ranges (boxes beside scores)
                validation[entry["file"]]["mixed_ranges"] = res["mixed_ranges"]
            warnings.extend(f"{entry['file']}: {m}" for m in res.get("warnings") or ())
            if max_drop is not None:
                drop = _metrics.drop_points(res)
                if drop > max_drop:
                    what = "accuracy" if res.get("accuracy") is not None else "top-1 agreement with the source"
                    raise ValidationFailedError(
                        f"{entry['file']}: {what} dropped {drop:.1f} points on {len(val_set)} samples, more than "
                        f"max_drop={max_drop}; nothing was written (try int16x8, more/better calibration data or "
                        "a float precision)"
                    )
        if "edgetpu" in tgts:  # after validation: the compiled file runs only with the Edge TPU delegate
            extras["edgetpu"] = _edgetpu_step(w, artifacts, warnings)
        data_desc = (f"{len(val_set)} samples held out from {val_set.source}" if held_out and eval_data is None
                     else f"{val_set.source}" + ("" if held_out else " (the calibration samples themselves)"))
        manifest = {
            "schema_version": 1,
            "name": name or os.path.basename(writer.target.rstrip(os.sep)) or "model",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "task": task_value,
            "source": {
                "path": os.path.abspath(source.path) if source.path else None,
                "sha256": source.sha256,
                "format": source.format,
                "layout": source.layout,
                "framework_versions": dict(source.framework_versions),
                "inputs": source.inputs,
                "outputs": source.outputs,
                "notes": list(source.notes),
            },
            "artifacts": artifacts,
            "preprocessing": spec.to_dict() if spec is not None else None,
            "labels": label_names,
            "calibration": None if calib_set is None else {
                "source": str(calib_set.source),
                "kind": calib_set.kind,
                "count": len(calib_set),
                "sha256": calib_set.sha256,
                "method": "minmax" if all(a["format"] == "tflite" for a in artifacts) else method.value,
                "seed": int(seed),
                "file": calib_file,
            },
            "pruning": pruning,
            "validation": {"data": data_desc, "count": len(val_set), "artifacts": validation},
            "tools": _versions(),
            "settings": {
                "precision": prec.value, "io": io_value, "formats": [f.value for f in fmts],
                "calib_count": calib_count, "seed": int(seed), "calib_method": method.value,
                "exclude": list(exclude), "target": target, "max_drop": max_drop,
                "input_shape": list(source.inputs[0]["shape"]), "allow_unsafe": bool(allow_unsafe),
                "allow_legacy_h5": bool(allow_legacy_h5), "loader": loader_name,
                "prune": prune, "prune_structure": prune_structure,
                "prune_epochs": prune_epochs if do_prune else None,
                "auto_fallback": bool(auto_fallback), "layer_errors": bool(layer_errors), **extras,
            },
        }
        if quant_errors:
            manifest["validation"]["layer_errors"] = quant_errors
        manifest["content_hash"] = content_hash(manifest)
        src_bytes = os.path.getsize(source.path) if source.path and os.path.isfile(source.path) else None
        _report.write_reports(w.dir, manifest, source_bytes=src_bytes, warnings=tuple(dict.fromkeys(warnings)))
        bundle = w.commit(manifest)
    return ConversionResult(bundle=bundle, manifest=manifest, warnings=tuple(dict.fromkeys(warnings)))
