"""Detection: NMS, SSD/YOLO decoders, box geometry, detect(), detection streams, and the demo detector."""

from __future__ import annotations

import os
from collections import namedtuple

import numpy as np
import pytest

from edgeship.errors import InputError
from edgeship.preprocess import PreprocessSpec, ResizeMode
from edgeship.runtime.tasks import detect as D

Spec = namedtuple("Spec", "name shape dtype quantization")


def test_nms_keeps_best_per_cluster_and_respects_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert D.nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert D.nms(boxes, scores, 0.5, classes=np.array([0, 1, 0, 0])).tolist() == [3, 1, 2]
    assert D.nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    assert D.nms(boxes, scores, 0.5, max_detections=1).tolist() == [3]
    assert D.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    with pytest.raises(InputError):
        D.nms(boxes, scores[:2])


def test_decode_ssd_postprocessed_any_output_order():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.1, 0.1], [0, 0, 0, 0]]], np.float32)  # ymin,xmin,ymax,xmax
    classes = np.array([[2, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.3, 0.0]], np.float32)
    count = np.array([2], np.float32)
    for outs in ([boxes, classes, scores, count], [count, scores, boxes, classes]):
        b, s, c = D.decode(outs)
        assert b.shape == (2, 4) and np.allclose(b[0], [0.2, 0.1, 0.6, 0.5])
        assert s.tolist() == pytest.approx([0.9, 0.3]) and c.tolist() == [2, 0]


def test_decode_ssd_raw_with_anchors():
    anchors = np.array([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]], np.float32)
    enc = np.zeros((1, 2, 4), np.float32)
    scores = np.array([[[0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]], np.float32)  # class 0 = background
    b, s, c = D.decode([enc, scores], anchors=anchors)
    assert np.allclose(b[0], [0.4, 0.4, 0.6, 0.6]) and c[0] == 0 and s[0] == pytest.approx(0.8)
    with pytest.raises(InputError, match="anchors"):
        D.decode([enc, scores])


def test_decode_yolo_v5_and_v8_layouts_and_pixel_coords():
    v5 = np.array([[[0.5, 0.5, 0.2, 0.4, 0.9, 0.1, 0.9], [0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 0.5]]], np.float32)
    b, s, c = D.decode(v5)
    assert np.allclose(b[0], [0.4, 0.3, 0.6, 0.7]) and c[0] == 1 and s[0] == pytest.approx(0.81)
    # YOLOv8: [1, 4+C, N], no objectness, coordinates in input pixels (64x64 input)
    n = 40
    v8 = np.zeros((1, 6, n), np.float32)
    v8[0, :, 3] = [32, 16, 16, 8, 0.1, 0.7]
    b, s, c = D.decode(v8, input_size=(64, 64))
    assert np.allclose(b[3], [0.375, 0.1875, 0.625, 0.3125]) and c[3] == 1 and s[3] == pytest.approx(0.7)
    b2, s2, _ = D.decode(v8[:, :, :8], format="yolov8", input_size=(64, 64))  # few candidates: say so
    assert np.allclose(b2[3], b[3]) and s2[3] == pytest.approx(0.7)


def test_postprocess_maps_boxes_back_through_letterbox():
    spec = PreprocessSpec(size=(100, 100), resize=ResizeMode.LETTERBOX)
    # a 200x100 image letterboxed into 100x100: scale 0.5, 25 px of padding top and bottom
    rows = np.array([[[0.5, 0.5, 0.2, 0.2, 1.0, 1.0]]], np.float32)
    (d,) = D.postprocess([rows], (200, 100), spec=spec, threshold=0.5, labels=["thing"])
    assert d.label == "thing" and d.id == 0
    assert (d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax) == pytest.approx((80, 30, 120, 70))
    assert d.bbox.width == pytest.approx(40) and d.bbox.area == pytest.approx(1600)
    stretch = D.postprocess([rows], (200, 100), spec=PreprocessSpec(size=(100, 100)), threshold=0.5)
    assert (stretch[0].bbox.xmin, stretch[0].bbox.ymax) == pytest.approx((80, 60))
    assert D.postprocess([rows * np.array([1, 1, 1, 1, 0.1, 1])], (200, 100), spec=spec, threshold=0.5) == ()


class FakeDetector:
    """Puts one box wherever the image's brightest 8x8 block is (a stand-in Model)."""

    inputs = (Spec("image", (1, 32, 32, 3), np.float32, None),)
    outputs = (Spec("rows", (1, 16, 7), np.float32, None),)
    manifest = {"task": "detection", "labels": ["blob", "other"],
                "preprocessing": {"size": [32, 32], "resize": "stretch", "color": "rgb"}}

    def run(self, x):
        g = x[0].mean(axis=2).reshape(4, 8, 4, 8).mean(axis=(1, 3))
        rows = np.zeros((16, 7), np.float32)
        i = int(np.argmax(g))
        gy, gx = divmod(i, 4)
        rows[i] = [(gx + 0.5) / 4, (gy + 0.5) / 4, 0.25, 0.25, 0.95, 0.9, 0.1]
        return {"rows": rows[None]}


def test_detect_on_an_image():
    img = np.zeros((240, 320, 3), np.uint8)
    img[60:120, 160:240] = 255  # bright block in cell (x=2, y=1) of a 4x4 grid
    (d,) = D.detect(FakeDetector(), img, threshold=0.5)
    assert d.label == "blob" and d.score == pytest.approx(0.855, abs=1e-3)
    assert (d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax) == pytest.approx((160, 60, 240, 120))
    with pytest.raises(InputError):
        D.detect(FakeDetector(), np.zeros((2, 2, 2, 2)))


def test_detection_stream_draws_boxes(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edgeship.runtime.stream import Stream, Task

    path = str(tmp_path / "blob.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(20):
        f = np.zeros((240, 320, 3), np.uint8)
        f[60:120, 160:240] = 255
        w.write(f)
    w.release()
    with Stream(FakeDetector(), path) as st:
        assert st.task is Task.DETECT
        results = list(st)
    assert len(results) == 20
    r = results[-1]
    assert len(r.results) == 1 and r.results[0].label == "blob"
    # the box outline was drawn in a palette colour around the blob
    assert r.image[60:120, 150:160].reshape(-1, 3).max(axis=0).tolist() != [0, 0, 0]


@pytest.mark.slow
def test_demo_detector_trains_converts_and_finds_shapes(tmp_path):
    """The repo's own detector: trained here, INT8 through convert(), boxes on the synthetic video."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("tensorflow")
    import json

    from edgeship.demos import detector as detector_demo
    import edgeship.runtime as rt

    bundle = detector_demo.build(str(tmp_path), log=lambda m: None)
    info = json.load(open(os.path.join(str(tmp_path), "detector-int8.json")))
    assert info["int8_map50"] > 0.4 and info["int8_map50"] > info["keras_map50"] - 0.1, info
    rng = np.random.default_rng(123)
    hits = 0
    with rt.load(bundle) as m:
        assert m.manifest["task"] == "detection" and list(m.manifest["labels"]) == list(detector_demo.LABELS)
        assert m.inputs[0].dtype == np.int8 or m.artifact["precision"] == "int8"
        for _ in range(20):
            img, boxes, ids = detector_demo.render_scene(rng, (320, 240), max_objects=3)
            dets = m.detect(img, threshold=0.4)  # Model.detect: the public path
            for b, k in zip(boxes * np.array([320, 240, 320, 240]), ids):
                hits += any(d.id == k and D.box_iou(b, np.array([list(d.bbox)]))[0] > 0.4 for d in dets)
            total = len(ids)
    assert hits >= 0.5 * 20 * 1, hits  # at least half a hit per scene on average
    assert detector_demo.build(str(tmp_path), log=lambda m: None) == bundle  # cached: returns at once
    del total, cv2
