"""Decoders for detectors whose NMS is inside the graph (issue 12).

Two layouts beyond the single ``[1,K,6]`` tensor (:func:`.detect.decode_end2end`):

- ``nms_indices``: the outputs of ONNX ``NonMaxSuppression`` itself,
  ``selected_indices [K,3]`` (batch, class, box) next to the tensors it selected
  from, boxes ``[B,N,4]`` and scores ``[B,C,N]`` (the operator's own layout).
- ``nms``: the selection already gathered into separate tensors, as TensorRT's
  ``EfficientNMS_TRT`` and YOLO end-to-end exports give it: boxes ``[1,K,4]``
  (or packed ``[1,K,5]`` with the score in the last column), scores ``[1,K]``,
  classes ``[1,K]`` and optionally a count (``num_dets [1]``/``[1,1]``: only the
  first ``count`` rows are detections, the rest is padding).

Which output plays which role, the box form (``xyxy``, ``yxyx``, ``cxcywh``) and
the units are recorded in the manifest's decoder spec at convert time
(:mod:`edgeship.converters.nms_layout`); roles are looked up by output name, then
by position in the spec's ``order``, and guessed from shapes only without a spec.
Every decoder returns (boxes ``[K,4]`` xyxy normalised to the model input,
scores ``[K]``, class ids ``[K]``), like the other decoders; numpy only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ...errors import InputError

__all__ = ["NMS_FORMATS", "BOX_FORMS", "to_xyxy", "decode_nms", "decode_nms_indices", "decode_with_spec",
           "guess_nms_format"]

NMS_FORMATS = ("nms", "nms_indices")
BOX_FORMS = ("xyxy", "yxyx", "cxcywh")


def to_xyxy(boxes: np.ndarray, form: str = "xyxy") -> np.ndarray:
    """``[K,4]`` boxes in ``form`` -> x1, y1, x2, y2 (corners ordered: x1 <= x2, y1 <= y2)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if form == "cxcywh":
        cx, cy, w, h = b.T
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    elif form == "yxyx":
        b = b[:, [1, 0, 3, 2]]
    elif form != "xyxy":
        raise InputError(f"box form {form!r} is unknown; expected one of {', '.join(BOX_FORMS)}")
    return np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)


def _normalise(boxes: np.ndarray, input_size, units: str) -> np.ndarray:
    pixels = units == "pixels" or (units == "auto" and len(boxes) and float(np.max(np.abs(boxes))) > 1.5)
    if input_size and pixels:
        h, w = input_size[:2]
        boxes = boxes / np.asarray([w, h, w, h], np.float32)
    return boxes.astype(np.float32)


def decode_nms_indices(selected: np.ndarray, boxes: np.ndarray, scores: np.ndarray, *, box_form: str = "xyxy",
                       input_size: tuple | None = None, units: str = "auto", batch: int = 0):
    """ONNX ``NonMaxSuppression``: ``selected [K,3]`` rows of (batch, class, box index) into
    boxes ``[B,N,4]`` and scores ``[B,C,N]``; rows of another batch entry are skipped.

    Raises:
        InputError: the shapes are not the operator's, or an index is out of range.
    """
    sel = np.rint(np.asarray(selected, np.float64)).astype(np.int64).reshape(-1, 3)
    b = np.asarray(boxes, np.float32)
    s = np.asarray(scores, np.float32)
    if b.ndim == 2:
        b = b[None]
    if s.ndim == 2:
        s = s[None]
    if b.ndim != 3 or b.shape[-1] != 4 or s.ndim != 3:
        raise InputError(f"NonMaxSuppression outputs: boxes {np.shape(boxes)} and scores {np.shape(scores)} "
                         "are not [B,N,4] and [B,C,N]")
    if s.shape[2] != b.shape[1] and s.shape[1] == b.shape[1]:
        s = s.transpose(0, 2, 1)  # [B,N,C] given: the operator's own layout is [B,C,N]
    sel = sel[sel[:, 0] == batch]
    if len(sel) and (sel[:, 1].max() >= s.shape[1] or sel[:, 2].max() >= b.shape[1] or sel.min() < 0
                     or batch >= b.shape[0]):
        raise InputError(f"selected_indices {sel.max(axis=0).tolist()} fall outside boxes {b.shape} / scores {s.shape}")
    xyxy = _normalise(to_xyxy(b[batch, sel[:, 2]], box_form), input_size, units)
    return xyxy, s[batch, sel[:, 1], sel[:, 2]].astype(np.float32), sel[:, 1].astype(np.int64)


def _rows(a, last: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim >= 2 and a.shape[0] == 1 and (last is None or a.ndim > 2):
        a = a[0]
    return a.reshape(-1, last) if last else a.reshape(-1)


def decode_nms(boxes: np.ndarray, scores: np.ndarray | None = None, classes: np.ndarray | None = None,
               count=None, *, box_form: str = "xyxy", input_size: tuple | None = None, units: str = "auto"):
    """Gathered detections: boxes ``[1,K,4]`` (or ``[1,K,5]``: the score last), scores
    ``[1,K]``, classes ``[1,K]`` (None: class 0), count (None: all rows; else the first
    ``count`` rows). Rows with a negative class (padding of some exports) are dropped.
    """
    raw = np.asarray(boxes, np.float32)
    width = raw.shape[-1] if raw.ndim else 0
    if width not in (4, 5):
        raise InputError(f"gathered NMS boxes shaped {raw.shape}: expected [1,K,4] (or [1,K,5] with the score)")
    rows = _rows(raw, width)
    if scores is None:
        if width != 5:
            raise InputError("gathered NMS outputs without a scores tensor need boxes shaped [1,K,5] (score last)")
        sc = rows[:, 4]
    else:
        sc = _rows(scores).astype(np.float32)
    ids = np.zeros(len(rows), np.int64) if classes is None else np.rint(_rows(classes).astype(np.float64)).astype(np.int64)
    n = min(len(rows), len(sc), len(ids))
    if count is not None:
        n = min(n, max(0, int(np.asarray(count).reshape(-1)[0])))
    rows, sc, ids = rows[:n, :4], sc[:n], ids[:n]
    ok = ids >= 0
    return _normalise(to_xyxy(rows[ok], box_form), input_size, units), sc[ok].astype(np.float32), ids[ok]


def _is_int(a) -> bool:
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return True
    f = a.astype(np.float64).reshape(-1)
    return bool(f.size and np.all(np.abs(f - np.rint(f)) < 1e-3))


def guess_nms_format(outputs: Sequence[np.ndarray]) -> str | None:
    """``nms_indices`` when the outputs look like NonMaxSuppression's (an integer ``[K,3]``
    next to ``[B,N,4]`` boxes and a 3-D scores tensor), else None."""
    shapes = [np.shape(o) for o in outputs]
    sel = [o for o, s in zip(outputs, shapes) if len(s) == 2 and s[1] == 3 and _is_int(o)]
    boxes = [s for s in shapes if len(s) == 3 and s[-1] == 4]
    if len(outputs) == 3 and len(sel) == 1 and len(boxes) == 1 and sum(len(s) == 3 for s in shapes) == 2:
        return "nms_indices"
    return None


def _roles(outputs, spec: Mapping, wanted: Sequence[str]) -> dict:
    """role -> array, by the spec's output names, else its ``order``, else None (guess)."""
    names = dict(spec.get("outputs") or {})
    order = list(spec.get("order") or ())
    values = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    got = {}
    for role in wanted:
        name = names.get(role)
        if name is None:
            continue
        if isinstance(outputs, Mapping) and name in outputs:
            got[role] = outputs[name]
        elif name in order and len(order) == len(values):
            got[role] = values[order.index(name)]
    return got


def _guess_indices(values: list) -> dict:
    sel = next((o for o in values if np.ndim(o) == 2 and np.shape(o)[1] == 3 and _is_int(o)), None)
    boxes = next((o for o in values if o is not sel and np.ndim(o) == 3 and np.shape(o)[-1] == 4), None)
    scores = next((o for o in values if o is not sel and o is not boxes and np.ndim(o) == 3), None)
    if sel is None or boxes is None or scores is None:
        raise InputError(f"outputs shaped {[np.shape(o) for o in values]} are not NonMaxSuppression's "
                         "selected_indices [K,3], boxes [B,N,4] and scores [B,C,N]")
    return {"selected_indices": sel, "boxes": boxes, "scores": scores}


def _guess_gathered(values: list) -> dict:
    """Roles from shapes: boxes end in 4 (or 5); the count has one element and the fewest
    dims; of scores and classes, classes are whole numbers (else model order: scores first)."""
    boxes = next((o for o in values if np.ndim(o) >= 2 and np.shape(o)[-1] in (4, 5)), None)
    if boxes is None:
        raise InputError(f"gathered NMS outputs shaped {[np.shape(o) for o in values]} have no [1,K,4] boxes")
    rest = [o for o in values if o is not boxes]
    count = None
    if len(rest) == 3 or (len(rest) == 2 and np.shape(boxes)[-1] == 5 and min(np.size(o) for o in rest) == 1):
        count = min((o for o in rest if np.size(o) == 1), key=np.ndim, default=None)
        rest = [o for o in rest if o is not count]
    if len(rest) == 2 and _is_int(rest[0]) and not _is_int(rest[1]):
        rest = rest[::-1]
    scores = rest[0] if rest else None
    classes = rest[1] if len(rest) > 1 else None
    if scores is not None and np.shape(boxes)[-1] == 5 and len(rest) == 1:
        scores, classes = None, scores  # [1,K,5] dets + labels
    return {"boxes": boxes, "scores": scores, "classes": classes, "count": count}


def decode_with_spec(outputs, fmt: str, spec: Mapping | None, input_size, units: str):
    """Decode ``outputs`` (a dict by name, or a list in model order) as ``fmt`` (one of
    :data:`NMS_FORMATS`) with the manifest's decoder ``spec`` (or None: roles from shapes)."""
    spec = spec or {}
    values = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    form = str(spec.get("boxes") or "xyxy")
    size = input_size or (tuple(spec["input_size"]) if spec.get("input_size") else None)
    if fmt == "nms_indices":
        roles = _roles(outputs, spec, ("selected_indices", "boxes", "scores"))
        if len(roles) < 3:
            roles = _guess_indices(values)
        return decode_nms_indices(roles["selected_indices"], roles["boxes"], roles["scores"], box_form=form,
                                  input_size=size, units=units)
    roles = _roles(outputs, spec, ("boxes", "scores", "classes", "count"))
    if "boxes" not in roles:
        roles = _guess_gathered(values)
    return decode_nms(roles["boxes"], roles.get("scores"), roles.get("classes"), roles.get("count"),
                      box_form=form, input_size=size, units=units)
