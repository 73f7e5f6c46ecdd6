"""Real third-party models (make fixtures): they load and run through edgeship.runtime, the
YOLOv8 decoder finds the people in real photos, and INT8 with the decode head kept in
float agrees with FP32 where fully quantized INT8 loses every box (issue 12)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from _real_fixtures import cache_files, listed, real_file, real_image, video_frames

from edgeship.preprocess import PreprocessSpec

YOLO_SPEC = dict(size=(640, 640), resize="letterbox", color="rgb", layout="NCHW", scale=1 / 255)


def test_fixture_list_is_complete_and_licensed():
    entries = listed()
    for name, e in entries.items():
        assert e["sha256"] and len(e["sha256"]) == 64, name
        assert e["license"] and e["spec"], name
    tasks = {e["task"] for e in entries.values()}
    assert {"detection", "segmentation", "image", "video"} <= tasks


@pytest.mark.parametrize("name", sorted(listed()))
def test_fixture_checksums(name):
    real_file(name, check=True)


@pytest.mark.parametrize("name, inputs, outputs", [
    ("yolov8_fall.onnx", [(1, 3, 640, 640)], [(1, 6, 8400)]),
    ("blazeface_short_range.tflite", [(1, 128, 128, 3)], [(1, 896, 16), (1, 896, 1)]),
    ("selfie_segmentation.tflite", [(1, 256, 256, 3)], [(1, 256, 256, 1)]),
])
def test_real_models_load_and_run(name, inputs, outputs):
    from edgeship import runtime

    with runtime.load(real_file(name)) as model:
        assert [tuple(t.shape) for t in model.inputs] == inputs
        y = model.run(np.zeros(inputs[0], np.float32))
        shapes = sorted(tuple(np.shape(v)) for v in (y.values() if isinstance(y, dict) else y))
        assert shapes == sorted(outputs)


def test_ppocr_detector_has_dynamic_height_and_width():
    import onnxruntime as ort

    sess = ort.InferenceSession(real_file("ppocrv4_det.onnx"), providers=["CPUExecutionProvider"])
    dims = sess.get_inputs()[0].shape
    assert not isinstance(dims[2], int) and not isinstance(dims[3], int), dims
    for h, w in ((320, 480), (640, 352)):
        (y,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, h, w), np.float32)})
        assert y.shape == (1, 1, h, w)
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def _yolo_detections(path, images, threshold=0.25):
    import onnxruntime as ort

    from edgeship.runtime.tasks.detect import postprocess

    spec = PreprocessSpec(**YOLO_SPEC)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = []
    for img in images:
        (y,) = sess.run(None, {"images": spec.to_input(img, layout="NCHW")})
        out.append(postprocess([y[0]], (img.shape[1], img.shape[0]), spec=spec, threshold=threshold,
                               format="yolov8", labels=("Normal", "Fall")))
    return out


def test_yolov8_finds_the_people_in_real_photos():
    img = real_image("messi5.jpg")
    frames = video_frames([100])
    dets = _yolo_detections(real_file("yolov8_fall.onnx"), [img] + frames)
    players, walkers = dets
    assert players and walkers
    for d in players + walkers:
        assert d.label in ("Normal", "Fall")
        assert 0 <= d.bbox.xmin < d.bbox.xmax and 0 <= d.bbox.ymin < d.bbox.ymax
    # people are taller than wide, in image pixels (letterbox undone)
    tall = [d for d in walkers if d.bbox.height > d.bbox.width]
    assert len(tall) >= len(walkers) * 0.7
    assert max(d.bbox.xmax for d in walkers) <= frames[0].shape[1]


def test_head_nodes_of_a_real_yolov8():
    import onnx

    from edgeship.converters.detection_head import head_nodes

    model = onnx.load(real_file("yolov8_fall.onnx"))
    head = set(head_nodes(model))
    by_name = {n.name: n for n in model.graph.node}
    # the final concat of boxes and scores, the score sigmoid and the DFL conv are decode ...
    assert "/model.22/Concat_5" in head and "/model.22/Sigmoid" in head
    assert "/model.22/dfl/conv/Conv" in head
    # ... the learned last convolutions (box and class branches) and the backbone are not
    convs = [n for n in head if by_name[n].op_type == "Conv"]
    assert convs == ["/model.22/dfl/conv/Conv"]
    assert all(n.startswith("/model.22/") for n in head), sorted(head)  # only the Detect module


@pytest.mark.slow
def test_int8_yolov8_keeps_its_boxes_only_with_the_head_in_float(tmp_path):
    from edgeship.converters.onnx_quant import quantize_onnx
    from edgeship.metrics_detection import match_f1

    spec = PreprocessSpec(**YOLO_SPEC)
    src = real_file("yolov8_fall.onnx")
    calib = np.concatenate([spec.to_input(f, layout="NCHW") for f in video_frames(range(0, 160, 20))])
    held_out = video_frames(range(10, 130, 20)) + [real_image("messi5.jpg"), real_image("basketball1.png")]
    quantize_onnx(src, str(tmp_path / "all.onnx"), calib)
    info = quantize_onnx(src, str(tmp_path / "head.onnx"), calib, keep_head_float=True)
    q = info["extra"]["onnx_quantization"]
    assert "/model.22/Concat_5" in q["detection_head"]["nodes"]
    assert any("detection head" in n for n in info["notes"])
    ref = _yolo_detections(src, held_out)
    assert sum(len(d) for d in ref) >= 10
    f1_all = match_f1(ref, _yolo_detections(str(tmp_path / "all.onnx"), held_out))["f1"]
    f1_head = match_f1(ref, _yolo_detections(str(tmp_path / "head.onnx"), held_out))["f1"]
    assert f1_head >= 0.9, f1_head
    assert f1_all < 0.5, f1_all


def test_dynamic_size_model_runs_at_two_sizes_through_the_runtime():
    from edgeship import runtime

    with runtime.load(real_file("ppocrv4_det.onnx")) as model:
        assert model.inputs[0].shape[2] is None and model.inputs[0].shape[3] is None
        for h, w in ((320, 480), (640, 352)):
            (y,) = model.run(np.zeros((1, 3, h, w), np.float32)).values()
            assert y.shape == (1, 1, h, w)
