"""``edgeship eval`` for segmentation bundles: mIoU and pixel accuracy of every artifact against
label masks, or against the source model's masks, and each artifact's agreement with the others.

Label masks, in the layouts people have:

- one PNG per image with the same stem, pixel value = class id (255 = ignore, the PASCAL VOC
  convention), single channel or a palette PNG (VOC's ``SegmentationClass``: palette indices
  are the class ids);
- found in ``masks=`` (``--masks DIR``), else in a sibling folder of the image folder named
  ``masks``, ``SegmentationClass`` or ``labels`` (``images/`` -> ``masks/``, ``JPEGImages/`` ->
  ``SegmentationClass/``).

Masks are made the way a device makes them (:meth:`Model.segment`: the manifest's
preprocessing, the argmax over classes or the one-channel threshold, mapped back to the
image's pixels) and compared at the image's size. Against the source, the source model gets
exactly the artifact's input tensor and its scores go through the same rule.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .images import list_images, read_image
from .metrics_segmentation import miou

__all__ = ["evaluate_segmentation_bundle", "find_masks", "image_mask", "num_classes", "read_mask"]

MASK_FOLDERS = ("masks", "SegmentationClass", "labels")
IGNORE = 255


def find_masks(data: str, masks: str | None = None) -> tuple[str, list]:
    """``(mask folder, [(image path, mask path or None)])`` for the images under ``data``.

    Raises:
        InputError: no mask folder, or no image has a mask.
    """
    folder = masks
    if folder is None:
        parent = os.path.dirname(os.path.abspath(data))
        folder = next((os.path.join(parent, f) for f in MASK_FOLDERS if os.path.isdir(os.path.join(parent, f))), None)
        if folder is None:
            raise InputError(f"no label masks for {data!r}: put one PNG per image (same name, pixel = class id) in "
                             f"--masks DIR or a sibling folder named {', '.join(MASK_FOLDERS)}")
    elif not os.path.isdir(folder):
        raise InputError(f"--masks {folder!r} is not a folder")
    inside = os.path.abspath(folder) + os.sep
    images = [p for p in list_images(data) if not os.path.abspath(p).startswith(inside)]
    pairs = []
    for p in images:
        m = os.path.join(folder, os.path.splitext(os.path.basename(p))[0] + ".png")
        pairs.append((p, m if os.path.isfile(m) else None))
    if not any(m for _, m in pairs):
        raise InputError(f"none of the {len(images)} images in {data!r} has a mask in {folder!r} (expected "
                         "NAME.png for NAME.jpg)")
    return folder, pairs


def read_mask(path: str) -> np.ndarray:
    """``(H, W)`` int class ids of a label mask PNG (palette indices for a palette PNG).

    Raises:
        InputError: not a single-channel or palette image.
    """
    from .safeio import open_regular  # noqa: PLC0415

    with open_regular(path, error=InputError, what="mask"):
        pass  # a FIFO, device or link is refused before any decoder sees it
    try:
        from PIL import Image  # noqa: PLC0415

        with Image.open(path) as im:
            if im.mode in ("P", "L", "I", "I;16"):
                return np.asarray(im).astype(np.int64)
            mode = im.mode
    except ImportError:
        mode = None
    except OSError as exc:
        raise InputError(f"mask {path!r} cannot be read as an image: {exc}") from None
    img = read_image(path)
    if img.ndim == 3 and not (img[..., :1] == img).all():
        raise InputError(f"mask {path!r} is a colour image ({mode or 'BGR'}); label masks hold one class id per "
                         "pixel: a single-channel or palette PNG")
    return (img if img.ndim == 2 else img[..., 0]).astype(np.int64)


def num_classes(scores: np.ndarray) -> int:
    """Classes of a score map (one sample or a batch of one): its channel count, 2 for a one-channel map."""
    s = np.asarray(scores)
    s = s[0] if s.ndim == 4 else s
    c = min(s.shape[0], s.shape[-1]) if s.ndim == 3 else 1
    return 2 if c == 1 else int(c)


def image_mask(scores: np.ndarray, image: np.ndarray, spec) -> np.ndarray:
    """The class mask of one sample's scores at ``image``'s size (only its shape is read), as
    :meth:`Model.segment` makes it."""
    from edgeship.runtime.tasks.segment import segment_outputs  # noqa: PLC0415

    return segment_outputs(scores, (image.shape[1], image.shape[0]), spec).mask


def evaluate_segmentation_bundle(path: str, data: str, *, masks: str | None = None, against: str = "auto",
                                 count: int | None = None) -> dict:
    """mIoU and pixel accuracy of every artifact of the segmentation bundle at ``path``.

    ``against``: ``labels`` (the masks), ``source`` (the source model, still at its recorded path),
    or ``auto`` (labels when there are masks, else the source).

    Raises:
        BundleError: not a valid bundle. InputError: no masks and no source, malformed masks,
            or a mask whose size differs from its image's.
    """
    from edgeship import runtime
    from edgeship.runtime.tasks.common import prepare_input, preprocess_spec

    from . import manifest as _manifest

    man = _manifest.read(path)
    pairs, folder, why = None, None, ""
    if against in ("auto", "labels"):
        try:
            folder, pairs = find_masks(data, masks)
        except InputError as exc:
            if against == "labels" or masks is not None:
                raise
            why = str(exc)
    from .evaluate import source_reference  # noqa: PLC0415

    source, src_why = None, "the source model was not asked for"
    if pairs is None or against == "auto":  # with labels too: the source's own mIoU is shown beside
        try:
            source, src_why = source_reference(man)
        except ImportError:
            source, src_why = None, "the converter extra (edgeship[convert]) is not installed"
    if pairs is None:
        if source is None:
            raise InputError(f"cannot evaluate {path!r}: {why or 'no label masks'}; and {src_why}")
        pairs = [(p, None) for p in list_images(data)]
    labelled = any(m is not None for _, m in pairs)
    if labelled:
        pairs = [pm for pm in pairs if pm[1] is not None]  # labels: the images that have a mask
    pairs = pairs[:count] if count else pairs
    images = [read_image(p) for p, _ in pairs]
    truth = []
    for (p, m), img in zip(pairs, images):
        if m is None:
            continue
        t = read_mask(m)
        if t.shape != img.shape[:2]:
            raise InputError(f"mask {m!r} is {t.shape[1]}x{t.shape[0]} but its image {p!r} is "
                             f"{img.shape[1]}x{img.shape[0]}; a label mask has the image's size")
        truth.append(t)
    reference = "labels" if labelled else "source model"
    report = {"bundle": os.path.abspath(path), "data": data, "masks": folder, "count": len(images),
              "reference": reference, "task": "segmentation", "artifacts": {}, "pairs": {}}
    made: dict = {}
    src_masks: list = []
    k = None
    for art in man["artifacts"]:
        with runtime.load(path, artifact=art["file"]) as m:
            out = []
            for img in images:
                spec = preprocess_spec(m, img)
                x = prepare_input(m, spec, img)
                scores = next(iter(m.run(x).values()))
                k = k or num_classes(scores)
                out.append(image_mask(scores, img, spec))
                if source is not None and len(src_masks) < len(images):
                    src_masks.append(image_mask(source.predict(x)[0], img, spec))
        made[art["file"]] = out
        r = miou(truth if labelled else src_masks, out, k)
        report["artifacts"][art["file"]] = {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"], "iou": r["iou"],
                                            "num_classes": k, "count": len(images)}
    if labelled and src_masks:
        r = miou(truth, src_masks, k)
        report["source"] = {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"], "iou": r["iou"], "why": src_why}
        for m in report["artifacts"].values():
            m["drop_points"] = 100.0 * (r["miou"] - m["miou"])
    names = list(made)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = miou(made[a], made[b], k)
            report["pairs"][f"{a} vs {b}"] = {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]}
    return report
