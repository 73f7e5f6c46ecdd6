"""The manifest a conversion writes, built from the plan and what the stages produced.

Sections (see ``manifest.schema.json``): ``source``, ``artifacts``,
``preprocessing``, ``labels``, ``calibration``, ``pruning``, ``validation``,
``tools``, ``settings`` (the plan's choices plus what exporters and target steps
recorded) and ``content_hash`` (:func:`content_hash`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from dataclasses import dataclass, field

from edgeship import __version__
from edgeship.bundle import sha256_bytes

from .plan import ConversionPlan, ModelPlan

__all__ = ["Results", "build_manifest", "content_hash", "tool_versions", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_TOOLS = ("tensorflow", "keras", "tf-keras", "ai-edge-litert", "numpy", "onnxruntime", "opencv-python-headless")


def tool_versions() -> dict:
    """edgeship, Python and the installed versions of the tools a conversion may use."""
    from importlib import metadata  # noqa: PLC0415

    out = {"edgeship": __version__, "python": platform.python_version()}
    for dist in _TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


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
    return "sha256:" + sha256_bytes(blob)


@dataclass
class Results:
    """What the stages produced, for the manifest."""

    loader: str
    source: object  # the loaded (dense) source
    artifacts: list
    data: object  # stages.Data
    calibration_file: str | None
    pruning: dict | None
    validation: dict  # file -> metrics
    layer_errors: dict = field(default_factory=dict)  # file -> top-10 entries
    extras: dict = field(default_factory=dict)  # exporter and target-step records for settings
    compression: dict | None = None  # compress.stage: distill / low-rank / QAT records and the stage table
    calibration_sha256: str | None = None  # of the calibration file written into the bundle


def _source_section(source, mplan: ModelPlan) -> dict:
    return {
        "path": os.path.abspath(source.path) if source.path else None,
        "sha256": source.sha256,
        "format": source.format,
        "layout": source.layout,
        "framework_versions": dict(source.framework_versions),
        "inputs": [dict(t) for t in mplan.inputs],
        "outputs": [dict(t) for t in mplan.outputs],
        "notes": list(source.notes),
    }


def _calibration_section(plan: ConversionPlan, res: Results) -> dict | None:
    cal = res.data.calib
    if cal is None:
        return None
    return {
        "source": str(cal.source),
        "kind": cal.kind,
        "count": len(cal),
        "sha256": cal.sha256,
        "method": "minmax" if all(a["format"] == "tflite" for a in res.artifacts) else plan.advanced.calib_method.value,
        "seed": plan.advanced.seed,
        "file": res.calibration_file,
        "file_sha256": res.calibration_sha256,
    }


def _settings(plan: ConversionPlan, res: Results) -> dict:
    adv, pr = plan.advanced, plan.prune
    return {
        "precision": plan.precision.value, "io": plan.io_value, "formats": [f.value for f in plan.formats],
        "calib_count": adv.calib_count, "seed": adv.seed, "calib_method": adv.calib_method.value,
        "exclude": list(adv.exclude), "target": plan.target_label, "max_drop": plan.max_drop,
        "input_shape": list(res.source.inputs[0]["shape"]), "allow_unsafe": adv.allow_unsafe,
        "allow_legacy_h5": adv.allow_legacy_h5, "loader": res.loader,
        "prune": None if pr is None else pr.sparsity, "prune_structure": None if pr is None else pr.structure,
        "prune_epochs": None if pr is None else pr.epochs,
        "auto_fallback": adv.auto_fallback, "layer_errors": adv.layer_errors, **res.extras,
    }


def build_manifest(plan: ConversionPlan, mplan: ModelPlan, res: Results, *, bundle_name: str) -> dict:
    """The manifest of one conversion, ``content_hash`` included."""
    data = res.data
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": plan.name or bundle_name or "model",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": mplan.task.value,
        "task_reason": mplan.task_reason or None,
        "decoder": mplan.decoder,
        "source": _source_section(res.source, mplan),
        "artifacts": res.artifacts,
        "preprocessing": mplan.preprocess.to_dict() if mplan.preprocess is not None else None,
        "labels": list(data.labels) if data.labels is not None else None,
        "calibration": _calibration_section(plan, res),
        "pruning": res.pruning,
        "validation": {"data": data.description(plan), "count": len(data.val), "artifacts": res.validation},
        "tools": tool_versions(),
        "settings": _settings(plan, res),
    }
    if any(d is None for d in (res.source.inputs[0].get("shape") or [])[1:]):
        from .dynamic_size import STRIDE  # noqa: PLC0415

        # dynamic height/width (null in the shapes): the runtime runs each image at its own size
        manifest["dynamic_size"] = {"stride": STRIDE}
    if res.layer_errors:
        manifest["validation"]["layer_errors"] = res.layer_errors
    if res.compression:
        manifest["compression"] = res.compression
    manifest["content_hash"] = content_hash(manifest)
    return manifest
