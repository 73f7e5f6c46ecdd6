"""Measure a written artifact against its source model, and catch collapsed models.

Artifacts are run through :func:`edgeship.runtime.load` (the same code a device
uses: float in, float out, quantization handled from the file's own
parameters).
"""

from __future__ import annotations

import numpy as np

from edgeship import metrics
from edgeship.errors import ValidationFailedError
from edgeship.progress import progress
from edgeship.ragged import concat_ragged

from . import task_metrics

BATCH = 32


def run_artifact(path: str, x: np.ndarray, *, desc: str = "validation", output_names=None) -> list:
    """Run the artifact at ``path`` on float batch ``x`` through :func:`edgeship.runtime.load`
    (the code a device runs); float outputs in model order, or in ``output_names`` order (the
    manifest's, when an exporter matched a file's outputs to the source's).

    Raises:
        BackendUnavailableError: nothing here can run the artifact.
    """
    from edgeship.runtime import load  # noqa: PLC0415

    from .tflite import quiet  # noqa: PLC0415

    with quiet():  # the interpreter announces its delegate on stderr
        model = load(path)
    with model:
        parts = []
        for s in progress(range(0, x.shape[0], BATCH), total=-(-x.shape[0] // BATCH), desc=desc):
            out = model.run(x[s : s + BATCH])
            vals = [out[n] for n in output_names] if output_names and set(output_names) == set(out) else out.values()
            parts.append([np.asarray(v, np.float32) for v in vals])
    return [concat_ragged([p[i] for p in parts]) for i in range(len(parts[0]))]  # NMS inside: K varies


def check_collapse(reference: np.ndarray, candidate: np.ndarray, result: dict, artifact: str) -> None:
    """Refuse an artifact whose outputs carry no information, even without ``max_drop``.

    An artifact has collapsed when its outputs are non-finite, constant over the
    validation samples while the source's vary, or (classification outputs) its
    top-1 agrees with the source no better than chance given both models' class
    frequencies.

    Raises:
        ValidationFailedError: with a message saying which test failed.
    """
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if not np.all(np.isfinite(cand)):
        raise ValidationFailedError(f"{artifact} produces NaN or infinite outputs; the conversion is broken")
    ref_var = float(np.max(np.ptp(ref, axis=0))) if len(ref) > 1 else 0.0
    cand_var = float(np.max(np.ptp(cand, axis=0))) if len(cand) > 1 else 0.0
    if len(ref) > 1 and ref_var > 1e-6 and cand_var <= 1e-6 * max(1.0, ref_var):
        raise ValidationFailedError(
            f"{artifact} has collapsed: it gives the same output for all {len(cand)} validation samples while "
            "the source model's outputs vary (check the calibration data and preprocessing)"
        )
    agree = result.get("top1_agreement")
    if agree is None or ref.shape[1] < 2 or len(ref) < 8:
        return
    k = ref.shape[1]
    r1, c1 = np.argmax(ref, axis=1), np.argmax(cand, axis=1)
    p_ref = np.bincount(r1, minlength=k) / len(r1)
    p_cand = np.bincount(c1, minlength=k) / len(c1)
    chance = float(np.sum(p_ref * p_cand))
    if np.count_nonzero(p_ref) > 1 and agree <= chance:
        raise ValidationFailedError(
            f"{artifact} has collapsed: its top-1 agrees with the source on {agree:.0%} of {len(ref)} samples, "
            f"no better than chance ({chance:.0%}) for these class frequencies"
        )


def _to_layout(a: np.ndarray, src: str | None, dst: str | None) -> np.ndarray:
    """Transpose a 4-D batch between NCHW and NHWC (the artifact file alone does not know the source's)."""
    if a.ndim != 4 or not src or not dst or src == dst or "other" in (src, dst):
        return a
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1) if src == "NCHW" else (0, 3, 1, 2)))


def validate_artifact(path: str, reference: list, x: np.ndarray, labels=None, *, name: str,
                      source_layout: str | None = None, artifact_layout: str | None = None, task=None,
                      decoder: dict | None = None, labelled=None, output_names=None) -> dict:
    """Metrics of the artifact at ``path`` against the ``reference`` outputs on ``x``.

    ``task`` (a :class:`edgeship.vocab.Task`): for anything but classification the outputs
    are not read as one class per sample (no top-1, no top-1 collapse check); a detector
    is also measured on its decoded detections (``detection_f1``, agreement with the
    source) and refused when it has lost them.

    ``x`` and ``reference`` are in ``source_layout``; a bare artifact file is fed and
    read in ``artifact_layout`` (4-D tensors are transposed between the two).

    ``labelled`` (a :class:`.detection_labels.LabelledDetections` aligned with ``x``): a
    detector is also measured against the labels (``map50_95`` and ``source_map50_95``).

    Returns:
        ``edgeship.metrics.compare`` of the first output, plus ``outputs`` (how many were
        compared), ``warnings`` (list of str) and, only when some output mixes channels of
        very different ranges, ``mixed_ranges`` (one :func:`mixed_ranges` entry per such
        output, with its index under ``output``).

    Raises:
        ValidationFailedError: the artifact collapsed or its outputs do not match the source's.
    """
    cand = run_artifact(path, _to_layout(x, source_layout, artifact_layout), desc=f"validating {name}",
                        output_names=output_names)
    cand = [_to_layout(c, artifact_layout, source_layout) for c in cand]
    if len(cand) != len(reference):
        raise ValidationFailedError(f"{name} has {len(cand)} outputs but the source model has {len(reference)}")
    results = []
    for i, (r, c) in enumerate(zip(reference, cand)):
        if r.reshape(r.shape[0], -1).shape != c.reshape(c.shape[0], -1).shape:
            raise ValidationFailedError(f"{name} output {i} is shaped {c.shape} but the source gives {r.shape}")
        res = metrics.compare(r, c, labels if i == 0 and not task_metrics.is_dense(task) else None)
        if task_metrics.is_dense(task):
            res["top1_agreement"] = None
        check_collapse(r, c, res, name)
        results.append(res)
    out = dict(results[0])
    out["outputs"] = len(results)
    task_metrics.check_dense(reference, results, task, name)
    if task is not None and task.value == "detection":
        agree = task_metrics.detection_agreement(reference, [c.reshape(np.shape(r)) for r, c in zip(reference, cand)],
                                                 task_metrics.input_size_of(x, source_layout), decoder)
        if agree is not None:
            out["detection_f1"] = agree["f1"]
            if agree["reference"] and agree["f1"] < task_metrics.COLLAPSED_F1:
                raise ValidationFailedError(
                    f"{name} has lost its detections: F1 {agree['f1']:.2f} against the source's "
                    f"{agree['reference']} boxes (IoU 0.5, same class, score >= {agree['threshold']}) on {len(x)} "
                    "validation samples, although its raw outputs may look close (cosine); "
                    "the decode head must stay in float (see the report), or use a float precision"
                )
    if labelled is not None and task is not None and task.value == "segmentation":  # mIoU against label masks
        from .segmentation_labels import labelled_miou  # noqa: PLC0415

        out.update(labelled_miou(reference, cand, labelled))
    if labelled is not None and task is not None and task.value == "detection":  # mAP against the labels
        from .detection_labels import labelled_map  # noqa: PLC0415

        out.update(labelled_map(reference, [c.reshape(np.shape(r)) for r, c in zip(reference, cand)], labelled))
    if task is not None and task.value == "segmentation":  # masks against the source's: mIoU, pixel accuracy
        agree = task_metrics.segmentation_agreement(reference[0], cand[0].reshape(np.shape(reference[0])),
                                                    source_layout, task_metrics.input_size_of(x, source_layout))
        if agree is not None:
            out["miou"], out["pixel_accuracy"] = agree["miou"], agree["pixel_accuracy"]
            task_metrics.check_segmentation(agree, name, len(x))
    if len(results) > 1:
        out["cosine"] = float(min(r["cosine"] for r in results))
        out["max_abs_error"] = float(max(r["max_abs_error"] for r in results))
    mixed, warnings = [], []
    for i, (r, c) in enumerate(zip(reference, cand)):
        entry = mixed_ranges(r, c.reshape(np.shape(r)))
        if entry is not None:
            mixed.append({"output": i, **entry})
            warnings.extend(mixed_range_warnings(entry, output=i))
    if mixed:
        out["mixed_ranges"] = mixed
    out["warnings"] = warnings
    return out


# -- outputs that mix quantities of very different ranges -----------------------------------

MIXED_RATIO = 100.0  # channel groups whose value ranges differ by more than this are "mixed"
GROUP_GAP = 10.0  # sorted channel ranges are split into groups where consecutive ones differ by more than this
LOSSY_REL_ERROR = 0.1  # a group whose worst error exceeds this fraction of its own range is reported
_DEAD = 1e-6  # channels spanning less than this fraction of the widest one are treated as constant


def _channel_list(ch: list) -> str:
    """``[0, 1, 2, 3, 7]`` -> ``"0-3, 7"``."""
    parts, start = [], None
    for i, c in enumerate(ch):
        if start is None:
            start = c
        if i + 1 == len(ch) or ch[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ", ".join(parts)


def _is_distribution(ref: np.ndarray) -> bool:
    """Softmax-like outputs (non-negative, summing to 1 along the last axis): one quantity, not mixed."""
    return bool(np.all(ref >= -1e-6) and np.allclose(ref.sum(axis=-1), 1.0, atol=1e-3))


def mixed_ranges(reference: np.ndarray, candidate: np.ndarray, *, ratio: float = MIXED_RATIO,
                 lossy: float = LOSSY_REL_ERROR) -> dict | None:
    """Per-channel-group error of an output whose last-axis channels have very different ranges.

    The channels of the last axis (e.g. ``[y1, x1, y2, x2, score...]`` of a detection
    head) are grouped by the span (max - min over all samples and positions) of the
    source's values: sorted spans are split where consecutive ones differ by more than
    :data:`GROUP_GAP`. The output is *mixed* when the widest and the narrowest group
    differ by more than ``ratio``. A quantized tensor shares one scale across all of
    them, so the narrow group can be crushed to a few levels while the overall cosine
    and max error, dominated by the wide group, look fine. For each group the error
    is therefore measured against the group's own range.

    Returns:
        ``None`` when the output is not mixed, else ``{"shape", "axis": -1, "groups": [...]}``;
        each group: ``channels``, ``range`` ([min, max] of the source's values), ``span``,
        ``max_rel_error`` (worst over its channels of max |error| / channel span),
        ``mean_rel_error``, ``min_cosine`` (worst per-channel cosine) and ``lossy``
        (``max_rel_error > lossy``). Groups are ordered widest first.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.ndim < 2 or ref.shape != cand.shape or ref.shape[-1] < 2 or ref.size == 0:
        return None
    if not np.all(np.isfinite(ref)) or _is_distribution(ref):
        return None
    k = ref.shape[-1]
    r2, c2 = ref.reshape(-1, k), cand.reshape(-1, k)
    lo, hi = r2.min(axis=0), r2.max(axis=0)
    span = hi - lo
    if span.max() <= 0:
        return None
    live = [int(j) for j in np.argsort(-span, kind="stable") if span[j] > _DEAD * span.max()]
    if len(live) < 2 or span[live[0]] / span[live[-1]] <= ratio:
        return None
    groups, cur = [], [live[0]]
    for a, b in zip(live, live[1:]):
        if span[a] / span[b] > GROUP_GAP:
            groups.append(cur)
            cur = []
        cur.append(b)
    groups.append(cur)
    if len(groups) < 2 or span[groups[0]].min() / span[groups[-1]].max() <= ratio:
        return None  # a continuous spread of ranges, not separate quantities
    err = np.abs(r2 - c2)
    rel = err / np.where(span > 0, span, 1.0)
    num = np.sum(r2 * c2, axis=0)
    den = np.linalg.norm(r2, axis=0) * np.linalg.norm(c2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(err.max(axis=0) == 0, 1.0, 0.0))
    out_groups = []
    for g in groups:
        g = sorted(g)
        worst = float(rel[:, g].max())
        out_groups.append({
            "channels": g,
            "range": [float(lo[g].min()), float(hi[g].max())],
            "span": float(span[g].max()),
            "max_rel_error": worst,
            "mean_rel_error": float(rel[:, g].mean()),
            "min_cosine": float(cos[g].min()),
            "lossy": bool(worst > lossy),
        })
    return {"shape": [int(d) for d in ref.shape[1:]], "axis": -1, "groups": out_groups}


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def mixed_range_warnings(entry: dict, *, output: int = 0) -> list:
    """One sentence per lossy channel group of a :func:`mixed_ranges` entry."""
    groups = entry["groups"]
    widest = groups[0]
    msgs = []
    for g in groups[1:]:
        if not g["lossy"]:
            continue
        lo, hi = g["range"]
        wlo, whi = widest["range"]
        msgs.append(
            f"output {output}: channels {_channel_list(g['channels'])} (range [{_fmt(lo)}, {_fmt(hi)}]) share one "
            f"tensor with channels {_channel_list(widest['channels'])} (range [{_fmt(wlo)}, {_fmt(whi)}]); their error "
            f"reaches {g['max_rel_error']:.0%} of their own range (worst relative error {g['max_rel_error']:.3f}, "
            f"per-channel cosine down to {g['min_cosine']:.3f}); the overall metrics hide this. Split the quantities "
            "into separate outputs, scale them to similar ranges, or use int16x8 or a float precision"
        )
    if widest["lossy"]:
        msgs.append(
            f"output {output}: channels {_channel_list(widest['channels'])} (range [{_fmt(widest['range'][0])}, "
            f"{_fmt(widest['range'][1])}]): error reaches {widest['max_rel_error']:.0%} of their own range "
            f"(worst relative error {widest['max_rel_error']:.3f})"
        )
    return msgs
