"""Segmentation metrics in numpy: mean IoU over classes and pixel accuracy, for masks
against label masks or against the source model's masks."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["confusion", "miou"]


def confusion(truth: Sequence[np.ndarray], pred: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``[C, C]`` pixel counts (rows: truth, columns: prediction) over all masks; pixels whose
    truth is outside ``0..C-1`` (e.g. 255 = ignore) are left out."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(truth, pred):
        t = np.asarray(t).reshape(-1).astype(np.int64)
        p = np.asarray(p).reshape(-1).astype(np.int64)
        if t.shape != p.shape:
            raise ValueError(f"mask sizes differ: {t.size} vs {p.size} pixels")
        ok = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
        cm += np.bincount(t[ok] * num_classes + p[ok], minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return cm


def miou(truth: Sequence[np.ndarray], pred: Sequence[np.ndarray], num_classes: int) -> dict:
    """``{"miou", "pixel_accuracy", "iou": [per class or None when absent from both]}``."""
    cm = confusion(truth, pred, num_classes).astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    iou = [float(i / u) if u > 0 else None for i, u in zip(inter, union)]
    present = [v for v in iou if v is not None]
    total = cm.sum()
    return {"miou": float(np.mean(present)) if present else 1.0,
            "pixel_accuracy": float(inter.sum() / total) if total else 1.0, "iou": iou}
