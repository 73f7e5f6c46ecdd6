"""Metrics comparing a reference model's outputs with an artifact's (numpy only)."""

from __future__ import annotations

import numpy as np


def _flat(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)


def compare(reference, candidate, labels=None) -> dict:
    """Compare two output arrays of the same shape ``(N, ...)``.

    Returns a dict with ``top1_agreement`` (classification-shaped outputs only),
    ``accuracy`` and ``source_accuracy`` (when ``labels`` are given), mean
    ``cosine`` similarity per sample, ``max_abs_error`` and ``sqnr_db``.
    """
    ref = _flat(reference)
    cand = _flat(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"outputs differ in shape: {ref.shape} vs {cand.shape}")
    out: dict = {"count": int(ref.shape[0])}
    diff = ref - cand
    out["max_abs_error"] = float(np.max(np.abs(diff))) if diff.size else 0.0
    num = np.sum(ref * cand, axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(np.linalg.norm(diff, axis=1) == 0, 1.0, 0.0))
    out["cosine"] = float(np.mean(cos)) if cos.size else 1.0
    noise = float(np.sum(diff**2))
    signal = float(np.sum(ref**2))
    out["sqnr_db"] = float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else (None if signal == 0 else 99.0)
    if ref.shape[1] > 1:
        r1 = np.argmax(ref, axis=1)
        c1 = np.argmax(cand, axis=1)
        out["top1_agreement"] = float(np.mean(r1 == c1))
        if labels is not None:
            y = np.asarray(labels).reshape(-1)
            if y.shape[0] == ref.shape[0]:
                if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
                    y = y.astype(np.int64)
                out["accuracy"] = float(np.mean(c1 == y))
                out["source_accuracy"] = float(np.mean(r1 == y))
    else:
        out["top1_agreement"] = None
    return out


def accuracy(outputs, labels) -> float:
    o = _flat(outputs)
    return float(np.mean(np.argmax(o, axis=1) == np.asarray(labels).reshape(-1)))


def drop_points(metrics: dict) -> float:
    """Accuracy drop in percentage points (agreement loss when there are no labels); a detector
    measured against labels: its mAP@0.5:0.95 drop, ``100 * (source - artifact)``; a segmentation model
    against label masks: its mIoU drop, the same way."""
    if metrics.get("accuracy") is not None and metrics.get("source_accuracy") is not None:
        return 100.0 * (metrics["source_accuracy"] - metrics["accuracy"])
    if metrics.get("map50_95") is not None and metrics.get("source_map50_95") is not None:
        return 100.0 * (metrics["source_map50_95"] - metrics["map50_95"])
    if metrics.get("label_miou") is not None and metrics.get("source_label_miou") is not None:
        return 100.0 * (metrics["source_label_miou"] - metrics["label_miou"])  # segmentation against label masks
    if metrics.get("top1_agreement") is not None:
        return 100.0 * (1.0 - metrics["top1_agreement"])
    if metrics.get("detection_f1") is not None:  # detectors: agreement of detections with the source
        return 100.0 * (1.0 - metrics["detection_f1"])
    if metrics.get("miou") is not None:  # segmentation: mIoU of the masks against the source's
        return 100.0 * (1.0 - metrics["miou"])
    return 0.0
