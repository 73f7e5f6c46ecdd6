"""The decoder spec of an ONNX detector with its NMS inside, read from the graph at convert
time (issue 12); decoded by :mod:`edgeship.runtime.tasks.detect_nms`.

- The graph outputs ``NonMaxSuppression``'s ``selected_indices`` together with the boxes
  and scores it selected from: ``{"format": "nms_indices"}``.
- The outputs are gathered from that selection (``Gather``/``GatherND`` of boxes, scores,
  the class column, ``Shape`` for a count), or come from TensorRT's ``EfficientNMS_TRT``
  / ``BatchedNMS_TRT`` plugins, or are named like them (``num_dets``, ``det_boxes``,
  ``det_scores``, ``det_classes``): ``{"format": "nms"}``; a single packed ``[1,K,6]``
  after NMS is ``end2end``.

Each output's role is found from the graph (what it is computed from, its dtype and
last dimension), then recorded by name (``outputs``: role -> name) and position
(``order``). The box form comes from the operator: ``center_point_box=1`` is
``cxcywh``; corners are read as ``xyxy`` (what PyTorch exports feed it; IoU does not
care), ``yxyx`` for graphs converted from TensorFlow (``tf2onnx``).
"""

from __future__ import annotations

__all__ = ["nms_decoder_spec", "TRT_NMS_OPS", "TRT_NAMES"]

TRT_NMS_OPS = ("EfficientNMS_TRT", "EfficientNMS_ONNX_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT")
TRT_NAMES = {"num_dets": "count", "num_detections": "count", "det_boxes": "boxes", "detection_boxes": "boxes",
             "det_scores": "scores", "detection_scores": "scores", "det_classes": "classes",
             "detection_classes": "classes"}
_PASS = ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten")
_FLOAT, _INT = (1, 10, 11, 16), (2, 3, 4, 5, 6, 7, 12, 13)  # onnx TensorProto element types


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _ancestors(name: str, prod: dict) -> set:
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        node = prod.get(t)
        if node is not None:
            todo.extend(i for i in node.input if i)
    return seen


def _origin(name: str, prod: dict) -> str:
    """The tensor ``name`` is a pass-through (Identity/Cast/...) of."""
    while name in prod and prod[name].op_type in ("Identity", "Cast"):
        name = prod[name].input[0]
    return name


def _via_shape(name: str, prod: dict, stop: str) -> bool:
    """Whether ``name`` is a size (Shape/Size) of something, following first inputs back."""
    while name in prod and name != stop:
        node = prod[name]
        if node.op_type in ("Shape", "Size"):
            return True
        if node.op_type not in _PASS + ("Gather", "Slice", "Concat", "ReduceSum", "Add"):
            return False
        name = node.input[0]
    return False


def _tensor_info(graph):
    """name -> (element type, last dim or None, rank) of the graph outputs."""
    out = {}
    for o in graph.output:
        t = o.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[o.name] = (t.elem_type, dims[-1] if dims else None, len(dims) if t.HasField("shape") else None)
    return out


def _box_form(model, nms) -> str:
    cpb = next((a.i for a in nms.attribute if a.name == "center_point_box"), 0) if nms is not None else 0
    if cpb == 1:
        return "cxcywh"
    return "yxyx" if "tf2onnx" in (model.producer_name or "").lower() else "xyxy"


def _spec(fmt: str, roles: dict, graph, form: str, units: str, input_size) -> dict:
    return {"format": fmt, "boxes": form, "units": units, "input_size": list(input_size or ()),
            "outputs": roles, "order": [o.name for o in graph.output], "postprocess": "in-model"}


def _gathered(graph, prod, info, sel: str, nms_boxes: str | None, nms_scores: str | None) -> dict | None:
    roles: dict = {}
    for name in (o.name for o in graph.output):
        anc = _ancestors(name, prod)
        if sel not in anc:
            continue
        elem, last, rank = info[name]
        lowered = name.lower()
        if last in (4, 5) and (rank or 0) >= 2:
            role = "boxes"
        elif last == 6 and (rank or 0) >= 2:
            role = "packed"
        elif "num" in lowered or "count" in lowered or _via_shape(name, prod, sel):
            role = "count"
        elif elem in _FLOAT and (nms_scores in anc and not any(w in lowered for w in ("class", "label"))
                                 or any(w in lowered for w in ("score", "conf", "prob"))):
            role = "scores"
        else:
            role = "classes"
        roles.setdefault(role, name)
    return roles or None


def nms_decoder_spec(model, input_size=None, units: str = "auto") -> dict | None:
    """The decoder spec of an ONNX ``ModelProto`` with NMS inside, or None if it has none
    (or its outputs cannot be decoded: no boxes among them)."""
    graph = model.graph
    prod = _producers(graph)
    info = _tensor_info(graph)
    nms = next((n for n in reversed(graph.node) if n.op_type == "NonMaxSuppression"), None)
    trt = next((n for n in graph.node if n.op_type in TRT_NMS_OPS), None)
    outs = [o.name for o in graph.output]
    form = _box_form(model, nms)
    if nms is not None:
        sel = nms.output[0]
        origins = {o: _origin(o, prod) for o in outs}
        by_origin = {v: k for k, v in origins.items()}
        if sel in by_origin:
            boxes, scores = by_origin.get(_origin(nms.input[0], prod)), by_origin.get(_origin(nms.input[1], prod))
            if boxes is None or scores is None:
                return None
            return _spec("nms_indices", {"selected_indices": by_origin[sel], "boxes": boxes, "scores": scores},
                         graph, form, units, input_size)
        roles = _gathered(graph, prod, info, sel, nms.input[0], nms.input[1])
    elif trt is not None:  # plugin outputs: count, boxes, scores, classes
        roles = {}
        for role, t in zip(("count", "boxes", "scores", "classes"), trt.output):
            roles.update({role: o for o in outs if _origin(o, prod) == t})
    else:
        roles = {TRT_NAMES[o.lower()]: o for o in outs if o.lower() in TRT_NAMES}
        if "boxes" not in roles or "scores" not in roles:
            return None
    if not roles:
        return None
    if "packed" in roles and "boxes" not in roles:
        return {"format": "end2end", "boxes": "xyxy", "units": units, "input_size": list(input_size or ()),
                "postprocess": "in-model", "outputs": {"detections": roles["packed"]}}
    if "boxes" not in roles:
        return None
    roles.pop("packed", None)
    return _spec("nms", roles, graph, form, units, input_size)
