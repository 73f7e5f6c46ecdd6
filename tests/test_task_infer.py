"""The task is known, not guessed (issue 12): inferred from the graph where unambiguous, recorded with
the reason and a detector's decoder spec; dense maps are not read as one class per sample."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _real_fixtures import real_file, video_frames

from edgeship.converters.task_infer import decoder_spec, infer_task
from edgeship.vocab import Task


class _Src:
    def __init__(self, ins, outs, layout="NHWC", kind="keras", handle=None):
        self.inputs = [{"shape": s} for s in ins]
        self.outputs = [{"shape": s} for s in outs]
        self.layout, self.kind, self.handle = layout, kind, handle


def test_shapes_alone():
    assert infer_task(_Src([(1, 32, 32, 3)], [(1, 10)]))[0] is Task.CLASSIFICATION
    assert infer_task(_Src([(1, 64, 64, 3)], [(1, 64, 64, 5)]))[0] is Task.SEGMENTATION
    task, why = infer_task(_Src([(1, 3, 64, 64)], [(1, 1, 64, 64)], layout="NCHW"))
    assert task is Task.SEGMENTATION and "binary" in why  # one channel: a binary map (probability > 0.5)
    # a YOLO-shaped tensor without a graph to prove it is not called detection
    assert infer_task(_Src([(1, 640, 640, 3)], [(1, 6, 8400)]))[0] is Task.OTHER


def test_real_yolov8_graph_is_a_detector():
    src = _Src([(1, 3, 640, 640)], [(1, 6, 8400)], layout="NCHW", kind="onnx", handle=real_file("yolov8_fall.onnx"))
    task, why = infer_task(src)
    assert task is Task.DETECTION and "decode head" in why


def test_real_text_detector_is_a_dense_map_not_a_classifier():
    src = _Src([(1, 3, 320, 320)], [(1, 1, 320, 320)], layout="NCHW", kind="onnx", handle=real_file("ppocrv4_det.onnx"))
    assert infer_task(src)[0] is Task.SEGMENTATION  # binary: text probability > 0.5


def test_text_detector_with_a_fixed_input_shape_is_still_segmentation(tmp_path):
    # --input-shape 1,3,480,480 fixes the input; the graph's output H/W stay dynamic (shape inference
    # does not reach them): the map is still at the input's size because the graph's input was dynamic
    src = _Src([(1, 3, 480, 480)], [(1, 1, None, None)], layout="NCHW", kind="onnx",
               handle=real_file("ppocrv4_det.onnx"))
    assert infer_task(src)[0] is Task.SEGMENTATION
    # a graph whose own input is fixed and whose output H/W are unknown: not guessed
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [0.1, 0.2, 0.3])
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])], "g", [x], [y], [w])
    path = str(tmp_path / "fixed.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    fixed = _Src([(1, 3, 64, 64)], [(1, 1, None, None)], layout="NCHW", kind="onnx", handle=path)
    assert infer_task(fixed)[0] is Task.OTHER


def test_decoder_specs():
    assert decoder_spec([(1, 6, 8400)], (640, 640), units="pixels") == {
        "format": "yolov8", "boxes": "cxcywh", "units": "pixels", "objectness": False, "num_classes": 2,
        "candidates": 8400, "input_size": [640, 640]}
    v5 = decoder_spec([(1, 25200, 85)], (640, 640))
    assert v5["format"] == "yolov5" and v5["objectness"] and v5["num_classes"] == 80
    assert decoder_spec([(1, 300, 6)], (640, 640))["format"] == "end2end"
    assert decoder_spec([(1, 10, 4), (1, 10), (1, 10), (1,)], (300, 300))["format"] == "ssd"
    assert decoder_spec([(1, 10)], None) is None


def test_dense_map_is_compared_not_argmaxed():
    from edgeship.converters import task_metrics
    from edgeship.errors import ValidationFailedError

    rng = np.random.default_rng(0)
    ref = [rng.uniform(0, 1, (4, 1, 32, 32)).astype(np.float32)]
    task_metrics.check_dense(ref, [{"cosine": 0.97}], Task.OTHER, "a.onnx")
    with pytest.raises(ValidationFailedError, match="no longer resembles"):
        task_metrics.check_dense(ref, [{"cosine": 0.2}], Task.OTHER, "a.onnx")
    task_metrics.check_dense(ref, [{"cosine": 0.2}], Task.SEGMENTATION, "a.onnx")  # masks are checked by mIoU
    task_metrics.check_dense(ref, [{"cosine": 0.2}], Task.CLASSIFICATION, "a.onnx")  # not a dense task


@pytest.mark.slow
def test_convert_real_yolov8_infers_detection_keeps_head_and_validates_on_detections(tmp_path, capfd):
    import cv2

    from edgeship.converters import convert

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(video_frames(range(0, 400, 25))):
        cv2.imwrite(str(frames / f"f{i:03d}.jpg"), f)
    res = convert(real_file("yolov8_fall.onnx"), str(tmp_path / "b"), calib=str(frames), formats=("onnx",),
                  preprocess="size=640x640,resize=letterbox,color=rgb,scale=1/255", labels=("Normal", "Fall"))
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["task"] == "detection" and man["task_reason"].startswith("inferred from the graph")
    assert man["decoder"]["format"] == "yolov8" and man["decoder"]["units"] == "pixels"
    assert any("task= detection inferred" in w for w in res.warnings)
    notes = man["artifacts"][0]["notes"]
    assert any(n.startswith("detection head:") for n in notes), notes
    v = man["validation"]["artifacts"]["model.int8.onnx"]
    assert v["top1_agreement"] is None and v["detection_f1"] >= 0.9
    # the bundle decodes with the recorded spec through the runtime
    from edgeship import runtime

    with runtime.load(str(tmp_path / "b")) as model:
        dets = model.detect(video_frames([205])[0], threshold=0.25)
    assert dets and all(d.label in ("Normal", "Fall") for d in dets)
    assert os.path.getsize(tmp_path / "b" / "model.int8.onnx") < os.path.getsize(real_file("yolov8_fall.onnx")) / 2
    # and streams a real video with the boxes drawn
    from edgeship.cli import main

    rec = tmp_path / "out.mp4"
    capfd.readouterr()  # drop what the conversion printed
    assert main(["stream", str(tmp_path / "b"), "--source", real_file("vtest.avi"), "--task", "detect",
                 "--display", "none", "--max-frames", "4", "--threshold", "0.25", "--record", str(rec),
                 "--json"]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["task"] == "detect" and summary["frames"] == 4
    cap = cv2.VideoCapture(str(rec))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 4


@pytest.mark.slow
def test_convert_real_yolov8_to_int8_tflite_keeps_its_detections(tmp_path):
    import cv2

    from edgeship.converters import convert

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(video_frames(range(0, 320, 20))):
        cv2.imwrite(str(frames / f"f{i:03d}.jpg"), f)
    convert(real_file("yolov8_fall.onnx"), str(tmp_path / "t"), calib=str(frames), formats=("tflite",),
            preprocess="size=640x640,resize=letterbox,color=rgb,scale=1/255", labels=("Normal", "Fall"))
    man = json.loads((tmp_path / "t" / "manifest.json").read_text())
    art = man["artifacts"][0]
    assert art["file"] == "model.int8.tflite" and art["precision"] == "int8"
    assert any(n.startswith("detection head:") and "TFLite denylisted_nodes" in n for n in art["notes"]), art["notes"]
    assert art["outputs"][0]["dtype"] == "float32"  # boxes and scores never share one int8 scale
    assert man["validation"]["artifacts"]["model.int8.tflite"]["detection_f1"] >= 0.9
