"""Detection: NMS, SSD/YOLO decoders, box geometry, detect(), detection streams, and the demo detector."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeship.errors import InputError
from edgeship.preprocess import PreprocessSpec, ResizeMode
from edgeship.runtime.tasks import detect as D


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


# The demo detector (tests/conftest.py ``demo_detector``: trained on synthetic shapes, INT8 through
# convert()) on 50 fresh scenes (seed 123, 99 objects), threshold 0.4, a hit = same class and
# IoU > 0.5. Measured: recall 0.747, precision 0.831; mAP@0.5 Keras 0.687 -> INT8 0.671.
# Bounds: the measurement minus a margin for noise.
MIN_RECALL, MIN_PRECISION = 0.65, 0.70


def _score_scenes(detect_fn, mod, n=50, seed=123, size=(320, 240)):
    """(recall, precision, objects, detections) of ``detect_fn(image)`` on ``n`` rendered scenes."""
    rng = np.random.default_rng(seed)
    hits = objects = false = found = 0
    for _ in range(n):
        img, boxes, ids = mod.render_scene(rng, size, max_objects=3)
        dets = detect_fn(img)
        truth = boxes * np.array([size[0], size[1], size[0], size[1]])
        found += len(dets)

        def match(b, k):
            return any(d.id == k and D.box_iou(b, np.array([list(d.bbox)]))[0] > 0.5 for d in dets)

        for b, k in zip(truth, ids):
            objects += 1
            hits += match(b, k)
        for d in dets:
            false += not any(d.id == k and D.box_iou(b, np.array([list(d.bbox)]))[0] > 0.5
                             for b, k in zip(truth, ids))
    return hits / objects, 1 - false / max(found, 1), objects, found


@pytest.fixture(scope="module")
def detector(demo_detector):
    import edgeship.runtime as rt

    mod, bundle, info = demo_detector
    with rt.load(bundle) as m:
        yield mod, m, info


def test_detect_on_images_finds_the_shapes(detector):
    """detect() on a real converted detector: boxes where the shapes are, with their classes."""
    mod, m, _ = detector
    recall, precision, objects, found = _score_scenes(lambda img: D.detect(m, img, threshold=0.4), mod)
    assert objects > 50 and found > 0
    assert recall >= MIN_RECALL and precision >= MIN_PRECISION, (recall, precision)
    # the public path on the Model gives the same detections
    img, _, _ = mod.render_scene(np.random.default_rng(7), (320, 240), max_objects=3)
    assert [(d.id, tuple(d.bbox)) for d in m.detect(img, threshold=0.4)] == \
        [(d.id, tuple(d.bbox)) for d in D.detect(m, img, threshold=0.4)]
    labels = {d.label for d in m.detect(img, threshold=0.4)}
    assert labels <= set(mod.LABELS)
    with pytest.raises(InputError):
        D.detect(m, np.zeros((2, 2, 2, 2)))


def test_detection_stream_draws_boxes(tmp_path, detector):
    cv2 = pytest.importorskip("cv2")
    from edgeship.runtime.stream import Stream, Task

    mod, m, _ = detector
    scene, boxes, ids = mod.render_scene(np.random.default_rng(11), (320, 240), max_objects=1)
    path = str(tmp_path / "scene.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for _ in range(20):
        w.write(scene)
    w.release()
    with Stream(m, path, threshold=0.4) as st:
        assert st.task is Task.DETECT
        results = list(st)
    assert len(results) == 20
    truth = boxes[0] * np.array([320, 240, 320, 240])
    r = results[-1]
    best = max(r.results, key=lambda d: D.box_iou(truth, np.array([list(d.bbox)]))[0])
    assert best.id == ids[0] and best.label == mod.LABELS[ids[0]]
    assert D.box_iou(truth, np.array([list(best.bbox)]))[0] > 0.5
    # the box outline was drawn: along the detected box's border the frame differs from the raw one
    with Stream(m, path, threshold=0.4, draw=False) as st:
        raw = list(st)[-1].image
    changed = np.abs(r.image.astype(int) - raw.astype(int)).sum(axis=2) > 60
    x0, y0, x1, y1 = (int(round(v)) for v in best.bbox)
    ring = np.zeros(changed.shape, bool)
    ring[max(y0 - 2, 0):y1 + 3, max(x0 - 2, 0):x1 + 3] = True
    ring[max(y0 + 3, 0):max(y1 - 2, 0), max(x0 + 3, 0):max(x1 - 2, 0)] = False
    assert changed[ring].mean() > 0.3, changed[ring].mean()


def test_demo_detector_trains_converts_and_finds_shapes(demo_detector, tmp_path):
    """The repo's own detector: trained, INT8 through convert(), measured on its validation scenes."""
    mod, bundle, info = demo_detector
    # measured: Keras 0.687, INT8 0.671 mAP@0.5 on the 200 validation scenes
    assert info["int8_map50"] >= 0.58 and info["int8_map50"] >= info["keras_map50"] - 0.05, info
    import edgeship.runtime as rt

    with rt.load(bundle) as m:
        assert m.manifest["task"] == "detection" and list(m.manifest["labels"]) == list(mod.LABELS)
        assert m.inputs[0].dtype == np.int8 and m.artifact["precision"] == "int8"
    workdir = os.path.dirname(bundle)
    assert mod.build(workdir, log=lambda m: None) == bundle  # cached: returns at once
