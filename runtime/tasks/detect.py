"""Object detection: output decoders, NMS in numpy, and ``detect(model, image)``.

Results are small immutable tuples, as in pycoral's ``adapters/detect.py``::

    for d in detect(model, image, threshold=0.5):
        print(d.label, d.score, d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax)

Two families of output layouts are decoded, chosen from the output shapes
(or named with ``format=``):

- SSD style: the four outputs of TFLite's ``TFLite_Detection_PostProcess``
  (boxes ``[1,N,4]`` as ymin,xmin,ymax,xmax in [0,1], classes ``[1,N]``,
  scores ``[1,N]``, count ``[1]``), or raw box encodings ``[1,A,4]`` plus
  class scores ``[1,A,C]`` decoded against ``anchors`` (``[A,4]``: ycenter,
  xcenter, height, width).
- YOLO style: one output of ``[1,N,5+C]`` (cx, cy, w, h, objectness, class
  scores: YOLOv5 and the repo's demo detector) or ``[1,4+C,N]`` (YOLOv8/11, no
  objectness); coordinates normalised or in input pixels.
- End-to-end exports with NMS inside: ``[1,K,6]`` (x1, y1, x2, y2, score, class);
  ONNX ``NonMaxSuppression`` outputs (``nms_indices``: selected_indices ``[K,3]`` with
  the boxes and scores it selected from) and gathered ones (``nms``: boxes, scores,
  classes and a count, EfficientNMS-style), in :mod:`.detect_nms`.
- BlazeFace-style raw anchors with keypoints: regressors ``[1,A,4+2K]`` and score
  logits ``[1,A,1]`` against MediaPipe's SSD anchors (:func:`blazeface_anchors`);
  each :class:`Detection` carries its ``keypoints``.

A bundle's manifest records the layout at convert time (``decoder``: format, box
form, units, classes); :func:`detect` reads it and guesses from shapes only for a
bare file without one. Candidates are capped (``max_candidates``, best scores
first) before the numpy NMS, so a noisy frame cannot make it quadratic.

Boxes come back in pixels of the image that was passed in (letterbox and
centre-crop preprocessing are undone). numpy only; OpenCV is used through the
preprocessing spec (the one rule, :mod:`edgeship.preprocess`) when the image must be resized.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from ...preprocess import PreprocessSpec, ResizeMode
from .common import model_decoder, model_labels, prepare_input, preprocess_spec
from .detect_blazeface import blazeface_anchors, decode_blazeface
from .detect_nms import NMS_FORMATS, decode_with_spec, guess_nms_format

__all__ = [
    "BBox",
    "Detection",
    "decode",
    "decode_ssd",
    "decode_ssd_raw",
    "decode_yolo",
    "decode_end2end",
    "decode_blazeface",
    "blazeface_anchors",
    "detect",
    "nms",
    "candidates",
    "postprocess",
    "prepare_input",
    "preprocess_spec",
    "to_image_boxes",
]

FORMATS = ("auto", "ssd", "ssd_raw", "yolo", "yolov5", "yolov8", "end2end", "blazeface") + NMS_FORMATS
MAX_CANDIDATES = 1000  # boxes kept (best scores) before NMS


class BBox(NamedTuple):
    """A box in pixel coordinates: ``xmin, ymin`` top-left, ``xmax, ymax`` bottom-right."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


class Detection(NamedTuple):
    """One detected object: its box, class index, score, label (or None) and, for
    keypoint models (BlazeFace), ``keypoints``: ``((x, y), ...)`` in image pixels."""

    bbox: BBox
    id: int
    score: float
    label: str | None = None
    keypoints: tuple | None = None


# ------------------------------------------------------------------------------ NMS


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` xyxy box with ``[N,4]`` xyxy boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    a = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    b = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = a + b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def candidates(scores: np.ndarray, threshold: float = 0.0, max_candidates: int | None = MAX_CANDIDATES) -> np.ndarray:
    """Indices of the scores >= ``threshold``, at most ``max_candidates`` of them (the best
    scores, in index order when nothing is cut): what enters the NMS."""
    scores = np.asarray(scores).reshape(-1)
    keep = np.flatnonzero(scores >= threshold)
    if max_candidates is not None and len(keep) > max_candidates:
        # argpartition: O(n) to find the best, then only those are sorted
        best = np.argpartition(-scores[keep], max_candidates - 1)[:max_candidates]
        keep = keep[best[np.argsort(-scores[keep][best], kind="stable")]]
    return keep


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45, *, classes: np.ndarray | None = None,
        max_detections: int = 100, max_candidates: int | None = MAX_CANDIDATES, stats: dict | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; the indices kept, best score first.

    With ``classes``, boxes of different classes never suppress each other. Only the
    ``max_candidates`` best-scoring boxes are considered (None: all), so the loop is
    never quadratic in the number of boxes; ``stats`` (a dict), if given, receives
    ``boxes`` (given) and ``candidates`` (considered).

    Raises:
        InputError: shapes do not match.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise InputError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if stats is not None:
        stats.update(boxes=int(boxes.shape[0]), candidates=min(boxes.shape[0], max_candidates or boxes.shape[0]))
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    cand = None
    if max_candidates is not None and boxes.shape[0] > max_candidates:
        cand = candidates(scores, -np.inf, max_candidates)
        boxes, scores = boxes[cand], scores[cand]
        classes = None if classes is None else np.asarray(classes).reshape(-1)[cand]
    if classes is not None:
        classes = np.asarray(classes).reshape(-1)
        # Offset boxes per class so that boxes of different classes never overlap.
        span = float(np.max(boxes) - np.min(boxes)) + 1.0
        boxes = boxes + (classes.astype(np.float32) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < max_detections:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i], boxes[order[1:]])
        order = order[1:][ious <= iou_threshold]
    keep = np.asarray(keep, np.int64)
    return keep if cand is None else cand[keep]


# ------------------------------------------------------------------------------ decoders
# Each decoder returns (boxes [N,4] xyxy normalised to the model input, scores [N], class ids [N]).


def _squeeze_batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[0] if a.ndim >= 2 and a.shape[0] == 1 else a


def decode_ssd(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count=None):
    """Outputs of ``TFLite_Detection_PostProcess`` (ymin, xmin, ymax, xmax in [0,1])."""
    b = _squeeze_batch(boxes).reshape(-1, 4).astype(np.float32)
    c = _squeeze_batch(classes).reshape(-1)
    s = _squeeze_batch(scores).reshape(-1).astype(np.float32)
    n = min(len(b), len(c), len(s))
    if count is not None:
        n = min(n, int(np.asarray(count).reshape(-1)[0]))
    b, c, s = b[:n], c[:n], s[:n]
    return b[:, [1, 0, 3, 2]], s, np.rint(c).astype(np.int64)


def decode_ssd_raw(box_encodings: np.ndarray, class_scores: np.ndarray, anchors: np.ndarray, *,
                   scales: Sequence[float] = (10.0, 10.0, 5.0, 5.0), background: bool = True,
                   sigmoid: bool | None = None):
    """Raw SSD outputs against anchors (``[A,4]`` ycenter, xcenter, h, w; normalised).

    ``box_encodings`` are ``(ty, tx, th, tw)`` per anchor; ``class_scores`` ``[A,C]``
    (class 0 is the background when ``background``). Scores outside [0,1]
    are passed through a sigmoid.
    """
    enc = _squeeze_batch(box_encodings).reshape(-1, 4).astype(np.float32)
    sc = _squeeze_batch(class_scores).astype(np.float32)
    sc = sc.reshape(enc.shape[0], -1)
    anc = np.asarray(anchors, np.float32).reshape(-1, 4)
    if anc.shape[0] != enc.shape[0]:
        raise InputError(f"SSD decoding: {enc.shape[0]} box encodings but {anc.shape[0]} anchors")
    if sigmoid or (sigmoid is None and (sc.min() < 0 or sc.max() > 1)):
        sc = 1.0 / (1.0 + np.exp(-sc))
    if background and sc.shape[1] > 1:
        sc = sc[:, 1:]
    yc = enc[:, 0] / scales[0] * anc[:, 2] + anc[:, 0]
    xc = enc[:, 1] / scales[1] * anc[:, 3] + anc[:, 1]
    h = np.exp(enc[:, 2] / scales[2]) * anc[:, 2]
    w = np.exp(enc[:, 3] / scales[3]) * anc[:, 3]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    ids = np.argmax(sc, axis=1)
    return boxes, sc[np.arange(len(ids)), ids], ids.astype(np.int64)


def decode_yolo(pred: np.ndarray, *, input_size: tuple[int, int] | None = None, objectness: bool | None = None,
                num_classes: int | None = None, units: str = "auto"):
    """One YOLO output: ``[N,5+C]`` (with objectness) or ``[4+C,N]`` (YOLOv8).

    Coordinates are ``cx, cy, w, h`` in ``units``: ``pixels`` of ``input_size``
    (height, width), ``normalized``, or ``auto`` (pixels when larger than ~1.5).
    """
    p = _squeeze_batch(pred).astype(np.float32)
    if p.ndim != 2:
        raise InputError(f"YOLO decoding expects one output shaped [1,N,5+C] or [1,4+C,N], got {np.shape(pred)}")
    if num_classes is not None and p.shape[1] not in (num_classes + 4, num_classes + 5) and \
            p.shape[0] in (num_classes + 4, num_classes + 5):
        p = p.T
    elif num_classes is None and p.shape[0] < p.shape[1] and (p.shape[1] >= 32 or objectness is False):
        # [4+C, N] (YOLOv8: many candidates, few values each) -> [N, 4+C]; small ambiguous
        # shapes are read as [N, 5+C] unless format="yolov8" says otherwise.
        p = p.T
        if objectness is None:
            objectness = False
    if p.shape[1] < 5:
        raise InputError(f"YOLO output rows have {p.shape[1]} values; expected at least 5 (cx, cy, w, h, score)")
    if objectness is None:
        objectness = True if num_classes is None else p.shape[1] == num_classes + 5
    xywh = p[:, :4]
    if objectness:
        obj = p[:, 4]
        cls = p[:, 5:] if p.shape[1] > 5 else np.ones((len(p), 1), np.float32)
        ids = np.argmax(cls, axis=1)
        scores = obj * cls[np.arange(len(ids)), ids]
    else:
        cls = p[:, 4:]
        ids = np.argmax(cls, axis=1)
        scores = cls[np.arange(len(ids)), ids]
    pixels = units == "pixels" or (units == "auto" and len(xywh) and float(np.max(np.abs(xywh))) > 1.5)
    if input_size is not None and pixels:
        h, w = input_size
        xywh = xywh / np.asarray([w, h, w, h], np.float32)
    cx, cy, bw, bh = xywh.T
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return boxes, scores.astype(np.float32), ids.astype(np.int64)


def decode_end2end(pred: np.ndarray, *, input_size: tuple[int, int] | None = None, units: str = "auto"):
    """``[1,K,6]`` rows of x1, y1, x2, y2, score, class (exports with NMS inside)."""
    p = _squeeze_batch(pred).astype(np.float32).reshape(-1, 6)
    boxes = p[:, :4].copy()
    pixels = units == "pixels" or (units == "auto" and len(boxes) and float(np.max(np.abs(boxes))) > 1.5)
    if input_size is not None and pixels:
        h, w = input_size
        boxes /= np.asarray([w, h, w, h], np.float32)
    return boxes, p[:, 4], np.rint(p[:, 5]).astype(np.int64)


def _guess_format(outputs: Sequence[np.ndarray]) -> str:
    shapes = [np.shape(o) for o in outputs]
    if guess_nms_format(outputs):
        return guess_nms_format(outputs)
    if len(outputs) >= 3:
        return "ssd"
    if len(outputs) == 2:
        reg = max(outputs, key=lambda o: np.shape(o)[-1])
        if np.shape(reg)[-1] > 4 and (np.shape(reg)[-1] - 4) % 2 == 0:
            return "blazeface"
        return "ssd_raw"
    if len(outputs) == 1 and len(shapes[0]) in (2, 3):
        return "yolo"
    raise InputError(
        f"cannot tell the detection output format from output shapes {shapes}; pass format= "
        f"(one of {', '.join(FORMATS[1:])})"
    )


def _ssd_order(outputs: Sequence[np.ndarray]):
    """Pick boxes/classes/scores/count out of the SSD post-process outputs, whatever their order."""
    boxes = next((o for o in outputs if np.ndim(o) >= 2 and np.shape(o)[-1] == 4), None)
    rest = [o for o in outputs if o is not boxes]
    count = next((o for o in rest if np.size(o) == 1), None)
    rest = [o for o in rest if o is not count]
    if boxes is None or len(rest) != 2:
        raise InputError(f"SSD outputs shaped {[np.shape(o) for o in outputs]} are not boxes/classes/scores/count")
    a, b = (np.asarray(r, np.float32).reshape(-1) for r in rest)
    # classes are whole numbers, scores are in [0, 1]
    a_int = bool(np.all(np.abs(a - np.rint(a)) < 1e-3))
    b_int = bool(np.all(np.abs(b - np.rint(b)) < 1e-3))
    classes, scores = (rest[0], rest[1]) if a_int and not b_int else (rest[1], rest[0]) if b_int and not a_int else (rest[0], rest[1])
    return boxes, classes, scores, count


def decode(outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray], *, format: str = "auto",
           input_size: tuple[int, int] | None = None, anchors: np.ndarray | None = None,
           num_classes: int | None = None, decoder: Mapping | None = None, with_keypoints: bool = False):
    """Decode raw outputs of one sample into (boxes xyxy normalised, scores, class ids), unfiltered.

    ``decoder``: the manifest's spec (format, units, num_classes; for NMS-inside layouts
    the output names per role and the box form); used when ``format`` is ``auto``.
    ``with_keypoints``: also return keypoints (or None).
    """
    outs = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    units = "auto"
    if decoder and format == "auto":
        format = str(decoder.get("format") or "auto")
        units = str(decoder.get("units") or "auto")
        num_classes = decoder.get("num_classes") or num_classes
    fmt = format.lower()
    if fmt == "auto":
        fmt = guess_nms_format(outs) or fmt
    if fmt in NMS_FORMATS:  # roles by output name: keep the mapping
        res = decode_with_spec(outputs, fmt, decoder if decoder and decoder.get("format") == fmt else None,
                               input_size, units)
    else:
        res = _decode(outs, format, input_size, anchors, num_classes, units)
    if with_keypoints:
        return res if len(res) == 4 else (*res, None)
    return res[:3]


def _decode(outs, format, input_size, anchors, num_classes, units):
    fmt = format.lower()
    if fmt not in FORMATS:
        raise InputError(f"detection format {format!r} is unknown; expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = _guess_format(outs)
    if fmt == "ssd":
        return decode_ssd(*_ssd_order(outs))
    if fmt == "ssd_raw":
        if anchors is None:
            raise InputError("raw SSD outputs (box encodings + class scores) need anchors=[A,4] to be decoded")
        enc = next(o for o in outs if np.shape(o)[-1] == 4)
        sc = next(o for o in outs if o is not enc)
        return decode_ssd_raw(enc, sc, anchors)
    if fmt == "end2end":
        return decode_end2end(outs[0], input_size=input_size, units=units)
    if fmt == "blazeface":
        reg = max(outs, key=lambda o: np.shape(o)[-1])
        sc = next(o for o in outs if o is not reg)
        k = (np.shape(reg)[-1] - 4) // 2
        return decode_blazeface(reg, sc, anchors=anchors, input_size=tuple(input_size or (128, 128)), keypoints=k)
    objectness = {"yolov5": True, "yolov8": False}.get(fmt)
    return decode_yolo(outs[0], input_size=input_size, objectness=objectness, num_classes=num_classes, units=units)


# ------------------------------------------------------------------------------ geometry


def to_image_boxes(boxes: np.ndarray, image_size: tuple[int, int], spec: PreprocessSpec | None) -> np.ndarray:
    """Map boxes normalised to the model input back to pixels of an image of ``image_size`` (width, height)."""
    iw, ih = image_size
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    mode = spec.resize if spec is not None else ResizeMode.STRETCH
    if spec is None or mode in (ResizeMode.STRETCH, ResizeMode.NONE):
        b *= np.asarray([iw, ih, iw, ih], np.float32)
    else:
        h, w = spec.size
        if mode is ResizeMode.LETTERBOX:
            s = min(h / ih, w / iw)
            nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
            top, left = (h - nh) // 2, (w - nw) // 2
        else:  # centre crop
            s = max(h / ih, w / iw)
            nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
            top, left = -((nh - h) // 2), -((nw - w) // 2)
        b *= np.asarray([w, h, w, h], np.float32)
        b -= np.asarray([left, top, left, top], np.float32)
        b /= np.float32(s)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, iw)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, ih)
    return b


def postprocess(outputs, image_size: tuple[int, int], *, spec: PreprocessSpec | None = None, threshold: float = 0.5,
                iou: float = 0.45, max_detections: int = 100, format: str = "auto", anchors=None,
                labels: Sequence[str] | None = None, class_agnostic: bool = False, decoder: Mapping | None = None,
                max_candidates: int = MAX_CANDIDATES, stats: dict | None = None) -> tuple[Detection, ...]:
    """Raw outputs of one sample -> detections in pixels of an image of ``image_size`` (width, height).

    ``decoder``: the manifest's decoder spec (see :func:`decode`); ``max_candidates``: at
    most this many boxes above ``threshold`` (best scores) enter the NMS; ``stats`` (a
    dict), if given, receives ``decoded`` (boxes out of the decoder), ``above_threshold``
    and ``candidates`` (boxes that entered the NMS).
    """
    input_size = tuple(spec.size) if spec is not None else None
    boxes, scores, ids, kps = decode(outputs, format=format, input_size=input_size, anchors=anchors,
                                     num_classes=len(labels) if labels else None, decoder=decoder,
                                     with_keypoints=True)
    keep = candidates(scores, threshold, max_candidates)
    if stats is not None:
        stats.update(decoded=int(len(scores)), above_threshold=int(np.count_nonzero(scores >= threshold)),
                     candidates=int(len(keep)))
    boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
    kps = kps[keep] if kps is not None else None
    if len(scores) == 0:
        return ()
    sel = nms(boxes, scores, iou, classes=None if class_agnostic else ids, max_detections=max_detections,
              max_candidates=None)  # capped above
    px = to_image_boxes(boxes[sel], image_size, spec)
    kpx = None
    if kps is not None:
        pts = kps[sel].reshape(-1, 2)
        kpx = to_image_boxes(np.concatenate([pts, pts], axis=1), image_size, spec)[:, :2].reshape(len(sel), -1, 2)
    out = []
    for n, (b, s, c) in enumerate(zip(px, scores[sel], ids[sel])):
        c = int(c)
        label = labels[c] if labels is not None and 0 <= c < len(labels) else None
        points = tuple((float(x), float(y)) for x, y in kpx[n]) if kpx is not None else None
        out.append(Detection(BBox(*(float(v) for v in b)), c, float(s), label, points))
    return tuple(out)


# ------------------------------------------------------------------------------ model glue


def detect(model, image: np.ndarray, threshold: float = 0.5, *, iou: float = 0.45, max_detections: int = 100,
           format: str = "auto", anchors=None, class_agnostic: bool = False) -> tuple[Detection, ...]:
    """Detect objects in one image (HxWx3 BGR uint8, as OpenCV gives it).

    Args:
        model: an :class:`edgeship.runtime.Model` (anything with ``run``,
            ``inputs`` and optionally ``manifest``).
        image: the image; boxes come back in its pixels.
        threshold: minimum score.
        iou: NMS overlap above which the lower-scoring box of a class is dropped.
        format: ``auto`` (the manifest's decoder spec, else from the output shapes),
            ``ssd``, ``ssd_raw``, ``yolo``, ``yolov5``, ``yolov8``, ``end2end``, ``blazeface``,
            ``nms`` or ``nms_indices``.
        anchors: ``[A,4]`` anchors for ``ssd_raw``.

    Returns:
        A tuple of :class:`Detection`, best score first.

    Raises:
        InputError: the image is not an image, or the outputs are not a known layout.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise InputError(f"expected an image shaped HxW or HxWx3, got {img.shape}")
    spec = preprocess_spec(model, img)  # img: a dynamic-size input runs at its size
    outputs = model.run(prepare_input(model, spec, img))
    return postprocess(
        outputs,
        (img.shape[1], img.shape[0]), spec=spec, threshold=threshold, iou=iou, max_detections=max_detections,
        format=format, anchors=anchors, labels=model_labels(model), class_agnostic=class_agnostic,
        decoder=model_decoder(model),
    )
