"""``edgeship eval`` for detection bundles: COCO-style mAP per artifact from labelled images,
and each artifact's detection agreement (F1) with the others.

Labels, in the two forms people have:

- YOLO txt: for ``images/a.jpg`` a ``a.txt`` beside it or in a sibling ``labels/``
  folder (``images/`` -> ``labels/``, the Ultralytics layout); one ``class cx cy w h``
  row per object, normalised to the image size. An image without a txt has no objects.
- COCO JSON (``annotations=``): ``images[].file_name`` relative to the image folder,
  ``annotations[].bbox`` as ``[x, y, w, h]`` pixels; category ids are mapped to the
  bundle's labels by name when the names match, else in ascending id order.

Detections are made the way a device makes them (:meth:`Model.detect`, the manifest's
preprocessing and decoder spec) with a low score threshold (0.001) and at most 100 per
image, as COCO evaluation expects.
"""

from __future__ import annotations

import json
import os

from .errors import InputError
from .images import list_images, read_image
from .metrics_detection import coco_map, match_f1

__all__ = ["evaluate_detection_bundle", "load_labelled_images"]

EVAL_THRESHOLD = 0.001
MAX_DETECTIONS = 100


def _yolo_txt(image_path: str) -> str | None:
    stem = os.path.splitext(image_path)[0]
    beside = stem + ".txt"
    if os.path.isfile(beside):
        return beside
    folder, name = os.path.split(stem)
    parent, leaf = os.path.split(folder)
    if leaf == "images":
        other = os.path.join(parent, "labels", name + ".txt")
        if os.path.isfile(other):
            return other
    return None


def _read_yolo(txt: str | None, width: int, height: int) -> list:
    if txt is None:
        return []
    out = []
    with open(txt, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                c, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
            except (ValueError, IndexError):
                raise InputError(f"{txt} line {n}: expected 'class cx cy w h' (normalised), got {line.strip()!r}") from None
            out.append(([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], c))
    return out


def _read_coco(path: str, folder: str, labels) -> dict:
    with open(path, encoding="utf-8") as fh:
        coco = json.load(fh)
    cats = sorted(coco.get("categories") or [], key=lambda c: c["id"])
    names = [c.get("name") for c in cats]
    if labels and all(n in labels for n in names):
        cat_index = {c["id"]: list(labels).index(c["name"]) for c in cats}
    else:
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict = {}
    files = {}
    for im in coco.get("images") or []:
        files[im["id"]] = os.path.join(folder, im["file_name"])
        by_image[files[im["id"]]] = []
    for a in coco.get("annotations") or []:
        x, y, w, h = a["bbox"]
        if a["image_id"] not in files or a["category_id"] not in cat_index:
            raise InputError(f"{path}: annotation {a.get('id')} names an unknown image or category")
        by_image[files[a["image_id"]]].append(([x, y, x + w, y + h], cat_index[a["category_id"]],
                                               int(a.get("iscrowd", 0))))
    return by_image


def load_labelled_images(data: str, annotations: str | None = None, labels=None, count: int | None = None):
    """[(image path, ground truth)] from an image folder and YOLO txt or COCO JSON labels.

    Raises:
        InputError: no images, no labels at all, or malformed label files.
    """
    if not os.path.isdir(data):
        raise InputError(f"detection evaluation takes an image folder, got {data!r}")
    if annotations:
        gt = _read_coco(annotations, data, labels)
        items = sorted(gt.items())
    else:
        paths = list_images(data)
        items = []
        for p in paths:
            txt = _yolo_txt(p)
            img = read_image(p) if txt else None
            items.append((p, _read_yolo(txt, img.shape[1], img.shape[0]) if txt else []))
        if not any(_yolo_txt(p) for p in paths):
            raise InputError(f"{data!r} has images but no YOLO label files (a.txt beside a.jpg, or labels/a.txt); "
                             "pass a COCO JSON with --annotations")
    if not items:
        raise InputError(f"no images in {data!r}")
    return items[:count] if count else items


def evaluate_detection_bundle(path: str, data: str, *, annotations: str | None = None, count: int | None = None) -> dict:
    """mAP@0.5:0.95 and mAP@0.5 of every artifact of the detection bundle at ``path``.

    Raises:
        BundleError: not a valid bundle. InputError: see :func:`load_labelled_images`.
    """
    from edgeship import runtime

    from . import manifest as _manifest

    man = _manifest.read(path)
    items = load_labelled_images(data, annotations, man.get("labels"), count)
    images = [read_image(p) for p, _ in items]
    truth = [gt for _, gt in items]
    report = {"bundle": os.path.abspath(path), "data": data, "count": len(items), "reference": "labels",
              "task": "detection", "artifacts": {}, "pairs": {}}
    dets = {}
    for art in man["artifacts"]:
        with runtime.load(path, artifact=art["file"]) as m:
            dets[art["file"]] = [m.detect(img, threshold=EVAL_THRESHOLD, max_detections=MAX_DETECTIONS)
                                 for img in images]
        r = coco_map(truth, dets[art["file"]])
        report["artifacts"][art["file"]] = {"map": r["map"], "map50": r["map50"], "map75": r["map75"],
                                            "per_class": r["per_class"], "count": len(items)}
    names = list(dets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            confident = [[d for d in ds if d.score >= 0.25] for ds in (dets[a], dets[b])]
            report["pairs"][f"{a} vs {b}"] = {"detection_f1": match_f1(*confident)["f1"]}
    return report
