"""Magnitude pruning of ONNX weights, directly on the initializers.

No fine-tuning happens here (an ONNX file carries no training graph), so the
accuracy cost must be measured: :func:`onnx_accuracy_cost` runs the source and
the pruned model with ONNX Runtime on the same samples.

API (for ``convert()`` and the CLI)
-----------------------------------
``prune_onnx(src_path, dst_path, *, sparsity=None, structure=None, exclude=()) -> dict``

    Zeroes the smallest-magnitude weights of every Conv weight (``W``, input
    channels on axis 1), Gemm ``B`` (axis 1 with ``transB=1``, else 0) and MatMul
    constant ``B`` (axis -2) that is a float initializer, writes ``dst_path`` and
    returns the manifest's ``pruning`` section::

        {"method", "target", "structure", "achieved_total",
         "layers": [{"name", "op", "initializer", "target", "achieved", "params", "axis"}],
         "skipped": [{"name", "reason"}]}

    ``sparsity``: fraction of zeros per weight tensor (0 < s < 1), exact up to
    rounding. ``structure="N:M"`` (e.g. ``"2:4"``): at most N nonzeros in every M
    consecutive weights along the input-channel axis (the sparsity is then
    (M-N)/M; ``sparsity`` must be None or equal to it); tensors whose input-channel
    count is not a multiple of M are left dense and listed in ``skipped``.
    ``exclude``: node or initializer names to leave dense. An initializer shared by
    several nodes is pruned once.

``onnx_accuracy_cost(src_path, dst_path, x, y=None, *, batch_size=256, input_name=None) -> dict``

    ``{"count", "source_accuracy", "accuracy", "drop_points", "top1_agreement",
    "cosine", "sqnr_db", "max_abs_error"}`` of the first output (accuracy fields
    only when ``y`` is given; ``y`` may be labels or one-hot).

``check_onnx_n_m(array, n, m, axis) -> bool`` is re-exported from
:func:`edgeship.converters.prune.check_n_m` semantics for ONNX layouts.

Raises ``PruneOptionError`` (options), ``ModelFormatError`` (unreadable model),
``UnsupportedModelError`` (nothing to prune), ``InputError`` (x does not fit).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from edgeship.errors import InputError, ModelFormatError, UnsupportedModelError, require

from .prune import PruneOptionError, check_n_m, parse_structure, target_sparsity

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


def _onnx():
    return require("onnx", "convert", "to prune ONNX models")


def _load(path: str):
    path = os.fspath(path)
    try:  # the shared safety checks (external-data paths) when available
        from .onnx_safety import load_checked  # noqa: PLC0415
    except ImportError:  # pragma: no cover - onnx_safety ships with edgeship
        load_checked = None
    if load_checked is not None:
        return load_checked(path)
    onnx = _onnx()
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path} is not a file")
    try:
        return onnx.load(path)
    except Exception as exc:
        raise ModelFormatError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {exc})") from None


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _weight_targets(graph, inits) -> list:
    """[(node, initializer name, input-channel axis)] for Conv/Gemm/MatMul weights."""
    out = []
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            out.append((node, node.input[1], 1))
        elif node.op_type == "Gemm" and len(node.input) > 1:
            out.append((node, node.input[1], 1 if _attr(node, "transB", 0) else 0))
        elif node.op_type == "MatMul" and len(node.input) > 1:
            out.append((node, node.input[1], -2))
    return out


def _magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    flat = np.abs(w).reshape(-1)
    k = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, bool)
    if k > 0:
        keep[np.argpartition(flat, k - 1)[:k]] = False
    return keep.reshape(w.shape)


def _n_m_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    a = np.moveaxis(np.abs(w), axis, -1)
    shape = a.shape
    groups = a.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")[:, :n]
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order, True, axis=1)
    return np.moveaxis(keep.reshape(shape), -1, axis)


def prune_onnx(src_path, dst_path, *, sparsity: float | None = None, structure: str | None = None,
               exclude=()) -> dict:
    """Magnitude-prune the Conv/Gemm/MatMul weights of ``src_path`` into ``dst_path``.

    See the module docstring for the returned dict.

    Raises:
        PruneOptionError: sparsity/structure out of range.
        ModelFormatError: the source is not a readable ONNX model.
        UnsupportedModelError: no Conv/Gemm/MatMul weight initializer to prune.
    """
    if isinstance(structure, str) and "x" in structure.lower():
        raise PruneOptionError(f"structure {structure!r}: ONNX pruning supports unstructured or N:M (e.g. '2:4')")
    nm = parse_structure(structure)
    target = target_sparsity(sparsity, nm)
    onnx = _onnx()
    from onnx import numpy_helper  # noqa: PLC0415

    model = _load(src_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    excluded = set(exclude or ())
    layers, skipped, done = [], [], set()
    for node, wname, axis in _weight_targets(graph, inits):
        label = node.name or wname
        if wname in done:
            continue
        if label in excluded or wname in excluded:
            skipped.append({"name": label, "reason": "excluded"})
            continue
        if wname not in inits:
            skipped.append({"name": label, "reason": f"weight {wname!r} is not an initializer (computed or quantized)"})
            continue
        w = numpy_helper.to_array(inits[wname])
        if w.dtype.type not in _FLOAT_TYPES:
            skipped.append({"name": label, "reason": f"weight {wname!r} is {w.dtype}, not float"})
            continue
        if w.ndim < 2:
            skipped.append({"name": label, "reason": f"weight {wname!r} has rank {w.ndim}"})
            continue
        ax = axis % w.ndim
        if nm is not None:
            if w.shape[ax] % nm[1] != 0:
                skipped.append({"name": label, "reason": f"{w.shape[ax]} input channels is not a multiple of "
                                                         f"{nm[1]} ({nm[0]}:{nm[1]})"})
                continue
            keep = _n_m_mask(w, nm[0], nm[1], ax)
        else:
            keep = _magnitude_mask(w, target)
        pruned = np.where(keep, w, np.zeros((), w.dtype)).astype(w.dtype)
        inits[wname].CopyFrom(numpy_helper.from_array(pruned, wname))
        done.add(wname)
        layers.append({"name": label, "op": node.op_type, "initializer": wname, "target": float(target),
                       "achieved": float(np.mean(pruned == 0)), "params": int(pruned.size), "axis": int(ax)})
    if not layers:
        raise UnsupportedModelError(
            f"{src_path}: no Conv/Gemm/MatMul weight initializer could be pruned"
            + (f" (skipped: {skipped})" if skipped else "")
        )
    total = sum(r["params"] for r in layers)
    achieved_total = sum(r["achieved"] * r["params"] for r in layers) / total

    dst_path = os.fspath(dst_path)
    folder = os.path.dirname(os.path.abspath(dst_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".prune-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        if model.ByteSize() > 1_800_000_000:
            onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=os.path.basename(dst_path) + ".data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, dst_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {
        "method": "magnitude (ONNX initializers, no fine-tuning)",
        "target": float(target),
        "structure": f"{nm[0]}:{nm[1]}" if nm else None,
        "achieved_total": float(achieved_total),
        "layers": layers,
        "skipped": skipped,
    }


def check_onnx_n_m(array, n: int, m: int, axis: int) -> bool:
    """At most ``n`` nonzeros in every ``m`` consecutive weights along ``axis``."""
    return check_n_m(array, n, m, axis)


# -- accuracy cost ------------------------------------------------------------------


def _session(path: str):
    ort = require("onnxruntime", "onnx", "to measure the accuracy of ONNX models")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), sess_options=so, providers=["CPUExecutionProvider"])


def _run(sess, x: np.ndarray, batch_size: int, input_name: str | None) -> np.ndarray:
    inp = sess.get_inputs()[0] if input_name is None else next(
        (i for i in sess.get_inputs() if i.name == input_name), None)
    if inp is None:
        raise InputError(f"the model has no input named {input_name!r}")
    dim0 = inp.shape[0] if inp.shape else None
    bs = 1 if dim0 == 1 else batch_size
    outs = []
    try:
        for i in range(0, len(x), bs):
            outs.append(sess.run(None, {inp.name: x[i:i + bs]})[0])
    except Exception as exc:
        raise InputError(f"samples shaped {x.shape[1:]} do not fit the model input {inp.name} {inp.shape}: "
                         f"{str(exc).splitlines()[0]}") from None
    return np.concatenate(outs, axis=0)


def onnx_accuracy_cost(src_path, dst_path, x, y=None, *, batch_size: int = 256, input_name: str | None = None) -> dict:
    """Run the source and the pruned model on ``x``; compare outputs and accuracy.

    Raises:
        InputError: ``x`` does not fit the model's input.
    """
    from edgeship.metrics import compare  # noqa: PLC0415

    x = np.asarray(x, np.float32)
    ref = _run(_session(src_path), x, batch_size, input_name)
    got = _run(_session(dst_path), x, batch_size, input_name)
    labels = None
    if y is not None:
        labels = np.asarray(y)
        if labels.ndim == 2 and labels.shape[1] > 1:
            labels = np.argmax(labels, axis=1)
        labels = labels.reshape(-1)
    m = compare(ref, got, labels=labels)
    out = {k: m.get(k) for k in ("count", "top1_agreement", "cosine", "sqnr_db", "max_abs_error")}
    if labels is not None and "accuracy" in m:
        out["source_accuracy"] = m["source_accuracy"]
        out["accuracy"] = m["accuracy"]
        out["drop_points"] = 100.0 * (m["source_accuracy"] - m["accuracy"])
    return out


__all__ = ["prune_onnx", "onnx_accuracy_cost", "check_onnx_n_m", "PruneOptionError"]
