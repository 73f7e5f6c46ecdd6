"""The task of a model and, for a detector, its decoder spec: read from the graph at
convert time (never guessed from output values at run time).

:func:`infer_task` answers only where the structure is unambiguous and says why:

- an ONNX graph with ``NonMaxSuppression``, or a decode head (:mod:`.detection_head`)
  feeding one output shaped like a YOLO prediction (``[1,4+C,N]`` / ``[1,N,5+C]`` with
  ``N`` >= 100 candidates): detection;
- one output ``[1,C]`` with ``C`` > 1: classification;
- one 4-D output whose spatial size is the input's (dynamic sizes included): a dense map,
  segmentation: ``C`` > 1 class channels (argmax), or one channel (binary: a probability
  > 0.5, or a logit > 0; e.g. the PP-OCR/DBNet text map), measured by mIoU and pixel
  accuracy (:mod:`.task_metrics`), never by a per-sample argmax;
- anything else: other.

:func:`decoder_spec` records how a detector's output is laid out (YOLOv5 ``[1,N,5+C]``
with objectness, YOLOv8/11 ``[1,4+C,N]``, end-to-end ``[1,K,6]``, SSD post-process), its
box form and units, in the manifest, where :func:`edgeship.runtime.tasks.detect.detect`
reads it.
"""

from __future__ import annotations

from edgeship.vocab import Task

__all__ = ["infer_task", "decoder_spec", "MIN_CANDIDATES"]

MIN_CANDIDATES = 100  # a YOLO output has hundreds to thousands of candidate boxes


def _shape(t) -> tuple:
    return tuple(t.get("shape") or ()) if isinstance(t, dict) else tuple(t)


def _onnx_graph(source):
    if getattr(source, "kind", None) != "onnx" or not isinstance(getattr(source, "handle", None), str):
        return None
    try:
        import onnx  # noqa: PLC0415

        return onnx.load(source.handle, load_external_data=False)
    except Exception:  # noqa: BLE001 - the loader already checked the file; no graph, no inference
        return None


def _spatial_if_dynamic_in_graph(graph, layout: str, osp: tuple, isp: tuple) -> tuple:
    """The input's spatial size for an output whose H/W are left dynamic, when the graph's own
    input has dynamic H/W as well (the size was fixed by ``--input-shape``); else ``osp``."""
    inits = {t.name for t in graph.graph.initializer}
    real = [i for i in graph.graph.input if i.name not in inits]
    if not real:
        return osp
    dims = real[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        return osp
    hw = dims[2:] if layout == "NCHW" else dims[1:3]
    return isp if all(d.dim_param or not d.HasField("dim_value") or d.dim_value <= 0 for d in hw) else osp


def _yolo_like(shape: tuple) -> bool:
    if len(shape) != 3 or shape[0] not in (1, None):
        return False
    a, b = shape[1], shape[2]
    if not isinstance(a, int) or not isinstance(b, int):
        return False
    return (b >= MIN_CANDIDATES and 5 <= a < b) or (a >= MIN_CANDIDATES and 5 <= b < a)


def infer_task(source) -> tuple[Task, str]:
    """(task, why) from the source's graph and tensor shapes."""
    ins = [_shape(t) for t in source.inputs]
    outs = [_shape(t) for t in source.outputs]
    graph = _onnx_graph(source)
    if graph is not None:
        ops = {n.op_type for n in graph.graph.node}
        if "NonMaxSuppression" in ops:
            return Task.DETECTION, "the graph has a NonMaxSuppression node"
        if len(outs) == 1 and _yolo_like(outs[0]):
            from .detection_head import head_nodes  # noqa: PLC0415

            if head_nodes(graph):
                return Task.DETECTION, (f"a single {list(outs[0])} tensor of boxes + class scores per candidate, "
                                        "made by a decode head (concat/sigmoid after the last convolutions)")
    if len(outs) == 1 and len(outs[0]) == 2 and isinstance(outs[0][-1], int) and outs[0][-1] > 1:
        return Task.CLASSIFICATION, f"a single {list(outs[0])} tensor: a score per class"
    if len(outs) == 1 and len(outs[0]) == 4 and ins and len(ins[0]) == 4:
        o, i = outs[0], ins[0]
        layout = getattr(source, "layout", "")
        osp, isp = (o[2:], i[2:]) if layout == "NCHW" else (o[1:3], i[1:3])
        ch = o[1] if layout == "NCHW" else o[3]
        if graph is not None and osp != isp and all(d is None for d in osp):
            osp = _spatial_if_dynamic_in_graph(graph, layout, osp, isp)  # --input-shape fixed a dynamic H/W
        if osp == isp and all(d is None or (isinstance(d, int) and d >= 8) for d in osp):
            if isinstance(ch, int) and ch > 1:
                return Task.SEGMENTATION, f"a single {list(o)} tensor with the input's height and width and {ch} class channels"
            if ch == 1:
                return Task.SEGMENTATION, (f"a single {list(o)} tensor: a dense one-channel map at the input's size "
                                           "(binary segmentation: probability > 0.5, or logit > 0)")
    return Task.OTHER, f"tensors {[list(o) for o in outs]} are not a recognised classification, detection or segmentation layout"


def decoder_spec(outputs, input_size: tuple | None, labels=None, units: str = "auto", source=None) -> dict | None:
    """How to decode a detector's outputs (the manifest's ``decoder``), or None if unknown.

    ``outputs``: the output tensor dicts or shapes; ``input_size``: (height, width);
    ``units``: box units, ``pixels`` (of the input), ``normalized`` or ``auto`` (pixels when
    the values exceed 1.5: for sources that do not say); ``source``: an ONNX source whose
    graph has its NMS inside (:mod:`.nms_layout`: roles of the outputs by name).
    """
    graph = _onnx_graph(source) if source is not None else None
    if graph is not None:
        from .nms_layout import nms_decoder_spec  # noqa: PLC0415

        spec = nms_decoder_spec(graph, input_size, units)
        if spec is not None:
            return spec
    shapes = [_shape(t) for t in outputs]
    n_labels = len(labels) if labels else None
    if len(shapes) >= 3:
        return {"format": "ssd", "boxes": "yxyx", "units": "normalized", "postprocess": "in-model"}
    if len(shapes) == 2 and all(len(sh) == 3 for sh in shapes) and shapes[0][1] == shapes[1][1]:
        reg, score = sorted(shapes, key=lambda sh: -(sh[2] or 0))
        if score[2] == 1 and isinstance(reg[2], int) and reg[2] >= 4 and (reg[2] - 4) % 2 == 0 \
                and isinstance(reg[1], int) and reg[1] >= MIN_CANDIDATES:
            # BlazeFace/BlazePalm: [1,A,4+2K] box and K keypoint offsets in input pixels against MediaPipe's
            # SSD anchors, [1,A,1] score logits (runtime/tasks/detect_blazeface.py decodes them)
            return {"format": "blazeface", "boxes": "anchor offsets (dx, dy, w, h)", "units": "pixels",
                    "keypoints": (reg[2] - 4) // 2, "anchors": "mediapipe ssd", "candidates": reg[1],
                    "input_size": list(input_size or ())}
    if len(shapes) != 1 or len(shapes[0]) != 3:
        return None
    _, a, b = shapes[0]
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    if max(a, b) < MIN_CANDIDATES and not (b == 6 and a >= 10):
        return None  # too few rows for a YOLO prediction, too few for an end-to-end export: unknown
    if b == 6 and a <= 1000:
        # end-to-end exports (NMS inside): [1, K, 6] = x1, y1, x2, y2, score, class
        return {"format": "end2end", "boxes": "xyxy", "units": units, "input_size": list(input_size or ()),
                "postprocess": "in-model"}
    if a < b:  # [1, 4+C, N]: YOLOv8/11
        classes = a - 4
        if n_labels is not None and n_labels == a - 5:
            return {"format": "yolov5", "transposed": True, "boxes": "cxcywh", "units": units,
                    "objectness": True, "num_classes": a - 5, "input_size": list(input_size or ())}
        return {"format": "yolov8", "boxes": "cxcywh", "units": units, "objectness": False,
                "num_classes": classes, "candidates": b, "input_size": list(input_size or ())}
    classes = b - 5
    if n_labels is not None and n_labels == b - 4:
        return {"format": "yolov8", "transposed": True, "boxes": "cxcywh", "units": units, "objectness": False,
                "num_classes": b - 4, "input_size": list(input_size or ())}
    return {"format": "yolov5", "boxes": "cxcywh", "units": units, "objectness": True, "num_classes": classes,
            "candidates": a, "input_size": list(input_size or ())}
