"""Detectors with their NMS inside (issue 12): ONNX NonMaxSuppression appended to the real
Ultralytics YOLOv8 export the way end-to-end exports are built (transpose, split boxes and
scores, cxcywh -> xyxy, NonMaxSuppression, Gather), in three output layouts:

- ``indices``: selected_indices [K,3] + the boxes [1,N,4] and scores [1,C,N] it selected from;
- ``trt``: num_dets, det_boxes, det_scores, det_classes (EfficientNMS-style names);
- ``offset``: boxes [1,K,4], scores [1,K], labels [1,K] from one class-offset NMS over the
  best class of each box (Ultralytics' own ``nms=True`` trick).

The layout is read from the graph at convert time (the manifest's decoder spec) and the
decoded detections must be the ones edgeship's numpy NMS finds on the raw model's
[1,6,8400] output, on real photos and video frames.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _real_fixtures import real_file, real_image, video_frames

from edgeship.preprocess import PreprocessSpec
from edgeship.runtime.tasks import detect as D
from edgeship.runtime.tasks import detect_nms as N

YOLO_SPEC = dict(size=(640, 640), resize="letterbox", color="rgb", layout="NCHW", scale=1 / 255)
LABELS = ("Normal", "Fall")
LAYOUTS = ("indices", "trt", "offset")


def add_nms(src: str, dst: str, layout: str, *, iou: float = 0.45, score: float = 0.25, max_per_class: int = 100):
    """Append an ONNX NonMaxSuppression post-process to the YOLOv8 [1,4+C,N] export at ``src``."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    model = onnx.load(src)
    g = model.graph
    pred = g.output[0].name
    n_cls = g.output[0].type.tensor_type.shape.dim[1].dim_value - 4
    n = g.output[0].type.tensor_type.shape.dim[2].dim_value

    def const(name, arr):
        g.initializer.append(nh.from_array(np.asarray(arr), name))
        return name

    cxcywh_to_xyxy = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-.5, 0, .5, 0], [0, -.5, 0, .5]], np.float32)
    g.node.extend([
        h.make_node("Transpose", [pred], ["nms/pred"], perm=[0, 2, 1]),
        h.make_node("Split", ["nms/pred", const("nms/split", np.array([4, n_cls], np.int64))],
                    ["nms/xywh", "nms/cls"], axis=2),
        h.make_node("MatMul", ["nms/xywh", const("nms/to_xyxy", cxcywh_to_xyxy)], ["nms/boxes"]),
        h.make_node("Transpose", ["nms/cls"], ["nms/scores"], perm=[0, 2, 1]),
    ])
    limits = [const("nms/max", np.array([max_per_class], np.int64)), const("nms/iou", np.array([iou], np.float32)),
              const("nms/score", np.array([score], np.float32))]
    ax0 = const("nms/ax0", np.array([0], np.int64))
    b02 = const("nms/b02", np.array([0, 2], np.int64))
    del g.output[:]
    if layout == "offset":
        g.node.extend([
            h.make_node("ReduceMax", ["nms/cls"], ["nms/best"], axes=[2], keepdims=1),  # [1,N,1]
            h.make_node("ArgMax", ["nms/cls"], ["nms/label_all"], axis=2, keepdims=0),  # [1,N]
            h.make_node("Cast", ["nms/label_all"], ["nms/label_f"], to=T.FLOAT),
            h.make_node("Unsqueeze", ["nms/label_f", const("nms/ax2", np.array([2], np.int64))], ["nms/label_u"]),
            h.make_node("Mul", ["nms/label_u", const("nms/span", np.array(4096.0, np.float32))], ["nms/offset"]),
            h.make_node("Add", ["nms/boxes", "nms/offset"], ["nms/boxes_off"]),
            h.make_node("Transpose", ["nms/best"], ["nms/best_t"], perm=[0, 2, 1]),  # [1,1,N]
            h.make_node("NonMaxSuppression", ["nms/boxes_off", "nms/best_t"] + limits, ["nms/sel"]),
            h.make_node("Gather", ["nms/sel", b02], ["nms/bi"], axis=1),
            h.make_node("GatherND", ["nms/boxes", "nms/bi"], ["nms/kb"]),
            h.make_node("GatherND", ["nms/best_t", "nms/sel"], ["nms/ks"]),
            h.make_node("GatherND", ["nms/label_all", "nms/bi"], ["nms/kl"]),
            h.make_node("Unsqueeze", ["nms/kb", ax0], ["boxes"]),
            h.make_node("Unsqueeze", ["nms/ks", ax0], ["scores"]),
            h.make_node("Unsqueeze", ["nms/kl", ax0], ["labels"]),
        ])
        g.output.extend([h.make_tensor_value_info("boxes", T.FLOAT, [1, "K", 4]),
                         h.make_tensor_value_info("scores", T.FLOAT, [1, "K"]),
                         h.make_tensor_value_info("labels", T.INT64, [1, "K"])])
    else:
        g.node.append(h.make_node("NonMaxSuppression", ["nms/boxes", "nms/scores"] + limits, ["nms/sel"],
                                  center_point_box=0))
        if layout == "indices":
            g.node.extend([h.make_node("Identity", ["nms/sel"], ["selected_indices"]),
                           h.make_node("Identity", ["nms/boxes"], ["boxes"]),
                           h.make_node("Identity", ["nms/scores"], ["scores"])])
            g.output.extend([h.make_tensor_value_info("selected_indices", T.INT64, ["K", 3]),
                             h.make_tensor_value_info("boxes", T.FLOAT, [1, n, 4]),
                             h.make_tensor_value_info("scores", T.FLOAT, [1, n_cls, n])])
        else:
            g.node.extend([
                h.make_node("Gather", ["nms/sel", const("nms/c1", np.array(1, np.int64))], ["nms/cls_id"], axis=1),
                h.make_node("Gather", ["nms/sel", b02], ["nms/bi"], axis=1),
                h.make_node("GatherND", ["nms/boxes", "nms/bi"], ["nms/kb"]),
                h.make_node("GatherND", ["nms/scores", "nms/sel"], ["nms/ks"]),
                h.make_node("Unsqueeze", ["nms/kb", ax0], ["det_boxes"]),
                h.make_node("Unsqueeze", ["nms/ks", ax0], ["det_scores"]),
                h.make_node("Unsqueeze", ["nms/cls_id", ax0], ["det_classes"]),
                h.make_node("Shape", ["nms/cls_id"], ["num_dets"]),
            ])
            g.output.extend([h.make_tensor_value_info("num_dets", T.INT64, [1]),
                             h.make_tensor_value_info("det_boxes", T.FLOAT, [1, "K", 4]),
                             h.make_tensor_value_info("det_scores", T.FLOAT, [1, "K"]),
                             h.make_tensor_value_info("det_classes", T.INT64, [1, "K"])])
    for node in g.node:  # exporters name every node
        if not node.name and node.output[0].startswith("nms/") or node.output[0] in (
                "boxes", "scores", "labels", "selected_indices", "num_dets", "det_boxes", "det_scores", "det_classes"):
            node.name = node.name or f"/nms/{node.op_type}_{node.output[0].replace('nms/', '')}"
    used = {i for node in g.node for i in node.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return dst


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    src = real_file("yolov8_fall.onnx")
    d = tmp_path_factory.mktemp("nms")
    return {lay: add_nms(src, str(d / f"yolov8_{lay}.onnx"), lay) for lay in LAYOUTS}


@pytest.fixture(scope="module")
def images():
    return [real_image("messi5.jpg"), real_image("basketball1.png")] + video_frames([100, 300, 500])


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run(sess, x) -> dict:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))


def _iou(a, b) -> float:
    return float(D.box_iou(np.asarray(a, np.float32), np.asarray([b], np.float32))[0])


def _same(ref, got, what):
    """Every detection of one list has one in the other with IoU > 0.9 and the same class."""
    assert len(ref) == len(got), (what, len(ref), len(got))
    for r in ref:
        best = max(got, key=lambda g: _iou(r.bbox, g.bbox))
        assert best.id == r.id and _iou(r.bbox, best.bbox) > 0.9, (what, r, best)
        assert best.score == pytest.approx(r.score, abs=1e-4), (what, r, best)


def _spec_of(path):
    import onnx

    from edgeship.converters.nms_layout import nms_decoder_spec

    return nms_decoder_spec(onnx.load(path, load_external_data=False), (640, 640), "pixels")


def test_layout_is_read_from_the_graph(exports):
    ind, trt, off = (_spec_of(exports[k]) for k in LAYOUTS)
    assert ind["format"] == "nms_indices" and ind["boxes"] == "xyxy"
    assert ind["outputs"] == {"selected_indices": "selected_indices", "boxes": "boxes", "scores": "scores"}
    assert trt["format"] == "nms"
    assert trt["outputs"] == {"count": "num_dets", "boxes": "det_boxes", "scores": "det_scores",
                              "classes": "det_classes"}
    assert off["format"] == "nms" and off["outputs"] == {"boxes": "boxes", "scores": "scores", "classes": "labels"}
    assert off["order"] == ["boxes", "scores", "labels"]


def test_task_infer_records_the_nms_layout(exports):
    from edgeship.converters.task_infer import decoder_spec, infer_task
    from edgeship.vocab import Task

    class Src:
        kind, layout = "onnx", "NCHW"

        def __init__(self, path):
            import onnxruntime as ort

            self.handle = path
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.inputs = [{"shape": [1, 3, 640, 640]}]
            self.outputs = [{"shape": [d if isinstance(d, int) else 1 for d in o.shape]} for o in s.get_outputs()]

    src = Src(exports["trt"])
    assert infer_task(src)[0] is Task.DETECTION
    # four outputs used to be read as a TFLite SSD post-process (yxyx, normalised)
    assert decoder_spec(src.outputs, (640, 640), source=src)["format"] == "nms"
    assert decoder_spec(src.outputs, (640, 640))["format"] == "ssd"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nms_inside_matches_numpy_nms_on_real_frames(exports, images, layout):
    spec = PreprocessSpec(**YOLO_SPEC)
    raw, e2e = _session(real_file("yolov8_fall.onnx")), _session(exports[layout])
    dec = _spec_of(exports[layout])
    total = 0
    for i, img in enumerate(images):
        x = spec.to_input(img, layout="NCHW")
        size = (img.shape[1], img.shape[0])
        (pred,) = raw.run(None, {"images": x})
        ref = D.postprocess([pred], size, spec=spec, threshold=0.25, format="yolov8", labels=LABELS)
        outs = _run(e2e, x)
        got = D.postprocess(outs, size, spec=spec, threshold=0.25, decoder=dec, labels=LABELS)
        _same(ref, got, (layout, i))
        # by position when the names are lost (a list in model order), still through the spec
        _same(ref, D.postprocess(list(outs.values()), size, spec=spec, threshold=0.25, decoder=dec, labels=LABELS),
              (layout, i, "order"))
        total += len(ref)
    assert total >= 10  # the frames have people in them
    assert all(d.label in LABELS for d in got)


def test_shapes_alone_decode_the_indices_and_gathered_layouts(exports, images):
    spec = PreprocessSpec(**YOLO_SPEC)
    img = images[2]
    x = spec.to_input(img, layout="NCHW")
    size = (img.shape[1], img.shape[0])
    want = D.postprocess(_run(_session(exports["indices"]), x), size, spec=spec, threshold=0.25,
                         decoder=_spec_of(exports["indices"]))
    assert len(want) >= 3
    # no spec: selected_indices [K,3] + [1,N,4] + [1,C,N] are told from the shapes
    _same(want, D.postprocess(list(_run(_session(exports["indices"]), x).values()), size, spec=spec,
                              threshold=0.25), "indices")
    trt = list(_run(_session(exports["trt"]), x).values())
    _same(want, D.postprocess(trt, size, spec=spec, threshold=0.25, format="nms"), "trt")
    _same(want, D.postprocess(trt[::-1], size, spec=spec, threshold=0.25, format="nms"), "trt reversed")


def test_gathered_decoder_forms_padding_and_packed_rows():
    boxes = np.array([[[10, 20, 30, 60], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    b, s, c = N.decode_nms(boxes, np.array([[0.9, 0, 0]]), np.array([[2, -1, -1]]), np.array([1]),
                           input_size=(100, 100), units="pixels")
    np.testing.assert_allclose(b, [[0.1, 0.2, 0.3, 0.6]])
    assert s.tolist() == pytest.approx([0.9]) and c.tolist() == [2]
    b, _, _ = N.decode_nms(boxes[:, :1, [1, 0, 3, 2]], np.array([[0.9]]), None, box_form="yxyx",
                           input_size=(100, 100), units="pixels")
    np.testing.assert_allclose(b, [[0.1, 0.2, 0.3, 0.6]])
    b, _, _ = N.decode_nms(np.array([[[20, 40, 20, 40]]], np.float32), np.array([[0.9]]), box_form="cxcywh",
                           input_size=(100, 100), units="pixels")
    np.testing.assert_allclose(b, [[0.1, 0.2, 0.3, 0.6]])
    packed = np.array([[[10, 20, 30, 60, 0.8]]], np.float32)  # mmdet-style dets [1,K,5] + labels
    b, s, c = D.decode([packed, np.array([[3]])], format="nms", input_size=(100, 100))
    assert s.tolist() == pytest.approx([0.8]) and c.tolist() == [3]
    with pytest.raises(Exception, match="box form"):
        N.to_xyxy(boxes[0], "xywh")


def test_indices_decoder_skips_other_batch_entries_and_checks_ranges():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[1, 2] = [0.1, 0.2, 0.3, 0.4]
    scores = np.zeros((2, 2, 3), np.float32)
    scores[1, 1, 2] = 0.7
    sel = np.array([[1, 1, 2], [0, 0, 0]])
    b, s, c = N.decode_nms_indices(sel, boxes, scores, batch=1)
    np.testing.assert_allclose(b, [[0.1, 0.2, 0.3, 0.4]])
    assert s.tolist() == pytest.approx([0.7]) and c.tolist() == [1]
    from edgeship.errors import InputError

    with pytest.raises(InputError, match="outside"):
        N.decode_nms_indices(np.array([[0, 0, 9]]), boxes, scores)


def test_candidates_are_capped_on_a_noisy_frame():
    """100k random candidates (a noisy frame): at most MAX_CANDIDATES enter the NMS."""
    rng = np.random.default_rng(0)
    n = 100_000
    v8 = np.empty((1, 6, n), np.float32)
    v8[0, :2] = rng.uniform(0, 640, (2, n))
    v8[0, 2:4] = rng.uniform(5, 60, (2, n))
    v8[0, 4:] = rng.uniform(0.3, 1.0, (2, n))
    stats: dict = {}
    dets = D.postprocess([v8], (640, 640), threshold=0.25, format="yolov8", max_detections=300, stats=stats)
    assert stats["decoded"] == n and stats["above_threshold"] == n
    assert stats["candidates"] == D.MAX_CANDIDATES
    assert 0 < len(dets) <= 300
    assert dets[0].score == pytest.approx(float(v8[0, 4:].max()))
    # nms() itself caps what it considers, whoever calls it
    boxes = rng.uniform(0, 1, (n, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    scores = rng.uniform(0, 1, n).astype(np.float32)
    st: dict = {}
    keep = D.nms(boxes, scores, 0.5, max_detections=n, stats=st)
    assert st == {"boxes": n, "candidates": D.MAX_CANDIDATES}
    assert len(keep) <= D.MAX_CANDIDATES and scores[keep[0]] == scores.max()
    top = np.sort(scores)[-D.MAX_CANDIDATES]
    assert np.all(scores[keep] >= top)  # only the best-scoring boxes were considered


@pytest.mark.slow
def test_converted_nms_export_detects_through_model_detect(exports, images, tmp_path):
    """convert (--formats onnx, fp32) records the layout in the manifest; Model.detect decodes it."""
    import edgeship
    from edgeship import runtime

    spec = PreprocessSpec(**YOLO_SPEC)
    calib = np.concatenate([spec.to_input(f, layout="NCHW") for f in video_frames(range(0, 80, 10))])
    out = tmp_path / "bundle"
    edgeship.convert(exports["trt"], str(out), precision="fp32", formats="onnx", calib=calib,
                     preprocess=dict(YOLO_SPEC), labels=list(LABELS))
    man = json.loads((out / "manifest.json").read_text())
    assert man["task"] == "detection"
    assert man["decoder"]["format"] == "nms" and man["decoder"]["units"] == "pixels"
    assert man["decoder"]["outputs"]["boxes"] == "det_boxes"
    # validation decoded the per-frame detections (K differs per frame: stacked zero-padded)
    (val,) = man["validation"]["artifacts"].values()
    assert val["detection_f1"] == 1.0
    raw = _session(real_file("yolov8_fall.onnx"))
    with runtime.load(str(out)) as model:
        for i, img in enumerate(images):
            (pred,) = raw.run(None, {"images": spec.to_input(img, layout="NCHW")})
            ref = D.postprocess([pred], (img.shape[1], img.shape[0]), spec=spec, threshold=0.25, format="yolov8",
                                labels=LABELS)
            got = model.detect(img, threshold=0.25)
            _same(ref, got, i)
            assert all(d.label in LABELS for d in got)


def test_per_sample_outputs_of_different_sizes_stack_with_zero_padding():
    from edgeship.ragged import concat_ragged

    a, b = np.ones((1, 2, 4), np.float32), np.full((1, 5, 4), 2, np.float32)
    out = concat_ragged([a, b])
    assert out.shape == (2, 5, 4) and out[0, 2:].sum() == 0 and out[1].min() == 2
    assert concat_ragged([np.zeros((2, 3)), np.zeros((4, 3))]).shape == (6, 3)  # same trailing dims: as before


def test_validation_does_not_misread_stacked_selected_indices():
    """selected_indices of several samples, stacked, cannot be split per sample: no F1 from them."""
    from edgeship.converters.task_metrics import detection_agreement

    sel = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 2]])
    boxes, scores = np.ones((3, 4, 4), np.float32), np.ones((3, 2, 4), np.float32)
    ref = [sel, boxes, scores]
    assert detection_agreement(ref, ref, (640, 640), {"format": "nms_indices"}) is None


@pytest.mark.slow
def test_int8_onnx_of_an_nms_export_keeps_its_detections(exports, images, tmp_path):
    """INT8 ONNX of the end-to-end export (the decode head and the NMS post-process stay float):
    its detections through Model.detect agree with FP32's numpy NMS on held-out photos/frames."""
    import edgeship
    from edgeship import runtime
    from edgeship.metrics_detection import match_f1

    spec = PreprocessSpec(**YOLO_SPEC)
    calib = np.concatenate([spec.to_input(f, layout="NCHW") for f in video_frames(range(5, 320, 10))])
    out = tmp_path / "int8"
    edgeship.convert(exports["trt"], str(out), precision="int8", formats="onnx", calib=calib,
                     preprocess=dict(YOLO_SPEC), labels=list(LABELS))
    man = json.loads((out / "manifest.json").read_text())
    (val,) = man["validation"]["artifacts"].values()
    assert val["detection_f1"] >= 0.9
    raw = _session(real_file("yolov8_fall.onnx"))
    ref, got = [], []
    with runtime.load(str(out)) as model:
        assert model.artifact["precision"] == "int8"
        for img in images:  # photos and frames 100/300/500: none is a calibration frame (5, 15, ..., 315)
            (pred,) = raw.run(None, {"images": spec.to_input(img, layout="NCHW")})
            ref.append(D.postprocess([pred], (img.shape[1], img.shape[0]), spec=spec, threshold=0.25,
                                     format="yolov8", labels=LABELS))
            got.append(model.detect(img, threshold=0.25))
    assert sum(len(r) for r in ref) >= 10
    assert match_f1(ref, got)["f1"] >= 0.9
