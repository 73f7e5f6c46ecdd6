"""The prune stage of ``convert()``: one pruner per source kind, from a table.

A pruner takes the loaded source and returns the source the exporters convert
(the pruned model) and the manifest's ``pruning`` section. Validation always
compares artifacts against the original dense source.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from edgeship import metrics as _metrics
from edgeship.errors import UnsupportedModelError
from edgeship.progress import step

__all__ = ["PRUNERS", "prune_source", "fp32_cost"]


def _keras_predict(model):
    """``predict(x) -> [outputs]`` of a Keras model, in batches (dict outputs in key order)."""

    def as_list(out) -> list:
        if isinstance(out, dict):
            return [np.asarray(out[k]) for k in sorted(out)]
        if isinstance(out, (list, tuple)):
            return [np.asarray(o) for o in out]
        return [np.asarray(out)]

    def predict(x: np.ndarray, batch: int = 32) -> list:
        x = np.asarray(x, np.float32)
        parts = [as_list(model(x[s : s + batch], training=False)) for s in range(0, x.shape[0], batch)]
        return [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(len(parts[0]))]

    return predict


def prune_keras_source(source, opts, *, spec, seed: int, workdir: str, val_set, max_drop, warnings: list):
    """tfmot pruning (Keras 3 through the verified tf_keras bridge), fine-tuned on ``opts.train_data``."""
    del workdir, val_set, max_drop  # the cost is measured after export, against the dense source
    from .data import load_train_data  # noqa: PLC0415
    from .keras import prune_keras  # noqa: PLC0415

    if source.format == "saved_model" or not hasattr(source.handle, "layers"):
        raise UnsupportedModelError(
            f"pruning needs a Keras model (.keras file or in-memory); {source.format} sources cannot be pruned"
        )
    data = None
    if opts.train_data is not None:
        data = load_train_data(opts.train_data, preprocess=spec, input_shape=tuple(source.inputs[0]["shape"]))
    res = prune_keras(source.handle, sparsity=opts.sparsity, structure=opts.structure, train_data=data,
                      epochs=opts.epochs, seed=int(seed), progress=True)
    import tf_keras  # noqa: PLC0415

    versions = {k: v for k, v in source.framework_versions.items() if k != "keras"}
    versions["tf_keras"] = tf_keras.__version__
    pruned = dataclasses.replace(source, format="tf_keras", handle=res.model, predict=_keras_predict(res.model),
                                 framework_versions=versions, notes=list(source.notes))
    section = res.to_manifest()
    section["bridged"] = bool(res.bridged)
    td = opts.train_data
    section["train_data"] = None if td is None else (
        os.fspath(td) if isinstance(td, (str, os.PathLike)) else f"{len(data.x)} in-memory samples")
    section["train_count"] = None if data is None else int(len(data.x))
    if res.history:
        section["history"] = res.history
    warnings.extend(f"pruning: {m}" for m in res.warnings)
    return pruned, section


def prune_onnx_source(source, opts, *, spec, seed: int, workdir: str, val_set, max_drop, warnings: list):
    """Magnitude pruning of the FP32 ONNX initializers (no fine-tuning); its cost measured on ``val_set``."""
    del spec, seed
    from ..onnx_formats import load_onnx  # noqa: PLC0415
    from ..prune_onnx import onnx_accuracy_cost, prune_onnx  # noqa: PLC0415

    dst = os.path.join(workdir, "pruned.fp32.onnx")
    section = prune_onnx(source.handle, dst, sparsity=opts.sparsity, structure=opts.structure)
    pruned = load_onnx(dst, input_shape=source.inputs[0]["shape"])
    cost = onnx_accuracy_cost(source.handle, dst, val_set.x, val_set.y, input_name=source.inputs[0]["name"])
    section.update({"fine_tuned": False, "epochs": 0, "bridged": False, "accuracy_cost": cost})
    drop = cost.get("drop_points")
    if drop is None and cost.get("top1_agreement") is not None:
        drop = 100.0 * (1.0 - cost["top1_agreement"])
    if drop is not None and max_drop is not None and drop > max_drop:
        warnings.append(f"pruning: ONNX magnitude pruning (no fine-tuning) alone costs {drop:.1f} points on "
                        f"{cost.get('count')} samples, more than max_drop={max_drop}")
    return pruned, section


PRUNERS = {"keras": prune_keras_source, "onnx": prune_onnx_source}


def prune_source(source, opts, **kw):
    """``(export source, pruning section)``; see :data:`PRUNERS`.

    Raises:
        UnsupportedModelError: no pruner for this kind of source (or a SavedModel).
    """
    fn = PRUNERS.get(source.kind)
    if fn is None:
        raise UnsupportedModelError(f"pruning is not supported for {source.kind} sources")
    with step(f"pruning ({opts.structure or opts.sparsity})"):
        return fn(source, opts, **kw)


def fp32_cost(reference, export_source, val_set) -> dict:
    """What pruning alone cost: the pruned FP32 model against the dense source."""
    got = export_source.predict(val_set.x)
    m = _metrics.compare(reference[0], got[0], val_set.y)
    out = {k: m.get(k) for k in ("count", "top1_agreement", "accuracy", "source_accuracy", "cosine", "sqnr_db")}
    out["drop_points"] = float(_metrics.drop_points(m))
    return out
