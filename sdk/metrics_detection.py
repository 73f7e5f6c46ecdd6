"""Detection metrics in numpy: agreement F1 against a reference, and COCO-style mAP.

- :func:`match_f1`: detections of a candidate (an INT8 artifact) against those of a
  reference (the FP32 source) on the same images: greedy matching by score, IoU >= 0.5,
  same class; precision, recall, F1. Needs no labels.
- :func:`coco_map`: mean average precision against ground truth, as pycocotools'
  ``COCOeval`` computes it for bounding boxes (per class, 101-point interpolated
  precision, IoU thresholds 0.50:0.05:0.95, ``maxDets=100``, area "all", ``iscrowd``
  ground truth ignored rather than counted): ``map`` (0.5:0.95), ``map50``, ``map75``.

Boxes are ``[x1, y1, x2, y2]`` in pixels. An image is a list of ``(box, class, score)``
detections (any object with ``bbox``/``id``/``score`` attributes works too, e.g.
:class:`edgeship.runtime.tasks.detect.Detection`); ground truth ``(box, class)``
or ``(box, class, iscrowd)``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["iou_matrix", "match_f1", "coco_map", "as_arrays"]

COCO_IOUS = np.linspace(0.5, 0.95, 10)
_RECALLS = np.linspace(0.0, 1.0, 101)


def as_arrays(dets: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N,4], classes [N], scores [N]) from detections or ground-truth tuples."""
    boxes, classes, scores = [], [], []
    for d in dets:
        if hasattr(d, "bbox"):
            b, c, s = tuple(d.bbox), d.id, d.score
        else:
            b, c = d[0], d[1]
            s = d[2] if len(d) > 2 else 1.0
        boxes.append([float(v) for v in b])
        classes.append(int(c))
        scores.append(float(s))
    return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64),
            np.asarray(scores, np.float64))


def iou_matrix(a: np.ndarray, b: np.ndarray, *, coco_pixels: bool = False) -> np.ndarray:
    """IoU of every box of ``a`` [N,4] with every box of ``b`` [M,4] (xyxy)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _greedy(iou: np.ndarray, thr: float, ok: np.ndarray | None = None) -> np.ndarray:
    """Candidate rows (already sorted by score) -> index of matched reference column or -1."""
    matched = np.full(iou.shape[0], -1, np.int64)
    taken = np.zeros(iou.shape[1], bool)
    for i in range(iou.shape[0]):
        row = np.where(taken | ((ok[i] == 0) if ok is not None else False), -1.0, iou[i])
        j = int(np.argmax(row)) if row.size else -1
        if j >= 0 and row[j] >= thr:
            matched[i] = j
            taken[j] = True
    return matched


def match_f1(reference: Sequence[Iterable], candidate: Sequence[Iterable], *, iou: float = 0.5) -> dict:
    """Agreement of ``candidate`` detections with ``reference`` detections, image by image.

    Returns ``{"f1", "precision", "recall", "matched", "reference", "candidate"}``; F1 is
    1.0 when both found nothing on every image.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    tp = n_ref = n_cand = 0
    for ref, cand in zip(reference, candidate):
        rb, rc, _ = as_arrays(ref)
        cb, cc, cs = as_arrays(cand)
        order = np.argsort(-cs, kind="stable")
        cb, cc = cb[order], cc[order]
        n_ref += len(rb)
        n_cand += len(cb)
        if len(rb) and len(cb):
            same = (cc[:, None] == rc[None, :]).astype(np.int8)
            tp += int((_greedy(iou_matrix(cb, rb), iou, same) >= 0).sum())
    precision = tp / n_cand if n_cand else (1.0 if n_ref == 0 else 0.0)
    recall = tp / n_ref if n_ref else (1.0 if n_cand == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall), "matched": tp,
            "reference": n_ref, "candidate": n_cand}


def _coco_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' IoU: for crowd ground truth the union is the detection's area."""
    inter_iou = iou_matrix(d, g)
    if not crowd.any():
        return inter_iou
    x1 = np.maximum(d[:, None, 0], g[None, :, 0])
    y1 = np.maximum(d[:, None, 1], g[None, :, 1])
    x2 = np.minimum(d[:, None, 2], g[None, :, 2])
    y2 = np.minimum(d[:, None, 3], g[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_d = np.clip(d[:, 2] - d[:, 0], 0, None) * np.clip(d[:, 3] - d[:, 1], 0, None)
    crowd_iou = inter / np.maximum(area_d[:, None], 1e-12)
    return np.where(crowd[None, :], crowd_iou, inter_iou)


def coco_map(ground_truth: Sequence[Iterable], detections: Sequence[Iterable], *, max_dets: int = 100) -> dict:
    """COCO-style bbox mAP over images (lists aligned by image).

    Returns ``{"map", "map50", "map75", "per_class": {class: AP@[.5:.95]}, "ap_per_iou"}``;
    classes without ground truth are left out (as COCOeval gives -1 and skips them).
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection images")
    n_t = len(COCO_IOUS)
    per: dict = {}  # class -> (scores list, tp matrices list [T,D], ignored-det list, n_gt)
    for gts, dets in zip(ground_truth, detections):
        gl = list(gts)
        gb, gc, _ = as_arrays(gl)
        crowd = np.asarray([bool(g[2]) if not hasattr(g, "bbox") and len(g) > 2 else False for g in gl], bool)
        db, dc, ds = as_arrays(dets)
        for c in set(gc.tolist()) | set(dc.tolist()):
            gi = np.where(gc == c)[0]
            di = np.where(dc == c)[0]
            di = di[np.argsort(-ds[di], kind="mergesort")][:max_dets]
            g_crowd = crowd[gi]
            gorder = np.argsort(g_crowd, kind="mergesort")  # non-crowd first, as COCOeval
            gi, g_crowd = gi[gorder], g_crowd[gorder]
            entry = per.setdefault(c, ([], [], [], 0))
            tps = np.zeros((n_t, len(di)), bool)
            ign = np.zeros((n_t, len(di)), bool)
            if len(di) and len(gi):
                ious = _coco_iou(db[di], gb[gi], g_crowd)
                for t, thr in enumerate(COCO_IOUS):
                    taken = np.zeros(len(gi), bool)
                    for k in range(len(di)):
                        best, m = min(thr, 1 - 1e-10), -1
                        for j in range(len(gi)):
                            if taken[j] and not g_crowd[j]:
                                continue
                            if m > -1 and not g_crowd[m] and g_crowd[j]:
                                break
                            if ious[k, j] < best:
                                continue
                            best, m = ious[k, j], j
                        if m > -1:
                            taken[m] = True
                            if g_crowd[m]:
                                ign[t, k] = True
                            else:
                                tps[t, k] = True
            entry[0].append(ds[di])
            entry[1].append(tps)
            entry[2].append(ign)
            per[c] = (entry[0], entry[1], entry[2], entry[3] + int((~g_crowd).sum()))
    aps = {}
    ap_iou = []
    for c, (scores, tps, igns, n_gt) in sorted(per.items()):
        if n_gt == 0:
            continue
        s = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-s, kind="mergesort")
        tp = np.concatenate(tps, axis=1)[:, order] if tps else np.zeros((n_t, 0), bool)
        ig = np.concatenate(igns, axis=1)[:, order] if igns else np.zeros((n_t, 0), bool)
        ap_t = np.zeros(n_t)
        for t in range(n_t):
            keep = ~ig[t]
            tp_c = np.cumsum(tp[t][keep]).astype(np.float64)
            fp_c = np.cumsum(~tp[t][keep]).astype(np.float64)
            rc = tp_c / n_gt
            pr = tp_c / np.maximum(tp_c + fp_c, np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
            idx = np.searchsorted(rc, _RECALLS, side="left")
            q = np.array([pr[i] if i < len(pr) else 0.0 for i in idx])
            ap_t[t] = q.mean()
        aps[c] = float(ap_t.mean())
        ap_iou.append(ap_t)
    if not aps:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "per_class": {}, "ap_per_iou": []}
    m = np.mean(np.stack(ap_iou), axis=0)
    return {"map": float(m.mean()), "map50": float(m[0]), "map75": float(m[5]), "per_class": aps,
            "ap_per_iou": [float(v) for v in m]}
