"""INT8 detection that keeps its boxes (issue 12).

- The repo's labelled detector (the demo shapes detector): the INT8 bundle's mAP@0.5:0.95,
  measured by ``edgeship eval`` on labelled scenes, is within 1 point of FP32, because the
  decode head (and the ``5+C`` head conv whose channels are sliced into boxes and scores)
  stays float; the head is recorded in the manifest.
- ``auto_fallback`` on the real Ultralytics YOLOv8 ONNX starts from the detection-head
  exclusion: the head is float in the measured model and in every attempt, is never a
  candidate, and the attempt keeps its detections against FP32.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _shared import write_demo_scenes
from _real_fixtures import real_file, video_frames

from edgeship.preprocess import PreprocessSpec

YOLO_SPEC = dict(size=(640, 640), resize="letterbox", color="rgb", layout="NCHW", scale=1 / 255)
SCENES = 60  # held-out labelled scenes (the README figure, 200 scenes, is benchmarks/bench_detect_demo.py)


def _write_scenes(folder: str, mod, n: int, seed: int = 999) -> str:
    return write_demo_scenes(folder, mod, n, seed)


def _eval(main, capfd, bundle: str, folder: str) -> dict:
    assert main(["eval", bundle, "--data", folder, "--json"]) == 0
    (m,) = json.loads(capfd.readouterr().out)["artifacts"].values()
    return m


@pytest.mark.slow
def test_int8_demo_detector_map_is_within_one_point_of_fp32_by_edgeship_eval(demo_detector, tmp_path, capfd):
    from edgeship.cli import main
    from edgeship.converters import convert

    mod, int8_bundle, _ = demo_detector
    s = mod.DetectorSettings()
    model = mod.load_keras(os.path.dirname(int8_bundle), s)
    fp32_bundle = str(tmp_path / "fp32")
    convert(model, fp32_bundle, precision="fp32", preprocess=mod.preprocess_spec(s), labels=list(mod.LABELS),
            task="detection", force=True)
    folder = _write_scenes(str(tmp_path / "val"), mod, SCENES)
    fp32, int8 = _eval(main, capfd, fp32_bundle, folder), _eval(main, capfd, int8_bundle, folder)
    assert 0.15 < fp32["map"] <= fp32["map50"]
    drop = 100 * (fp32["map"] - int8["map"])
    assert drop <= 1.0, (fp32["map"], int8["map"])
    assert 100 * (fp32["map50"] - int8["map50"]) <= 2.0, (fp32["map50"], int8["map50"])
    # the choice is made from the graph and recorded: decode ops and the sliced 5+C head conv stay float
    man = json.loads(open(os.path.join(int8_bundle, "manifest.json"), encoding="utf-8").read())
    head = man["settings"]["tflite_detection_head"]
    assert "CONV_2D x1" in head["summary"] and "LOGISTIC" in head["summary"] and "SOFTMAX" in head["summary"]
    assert any(t.startswith(("detector", "StatefulPartitionedCall")) for t in head["tensors"])
    art = man["artifacts"][0]
    assert art["precision"] == "int8" and art["inputs"][0]["dtype"] == "int8"
    assert art["outputs"][0]["dtype"] == "float32"
    assert any(n.startswith("detection head:") and "CONV_2D" in n for n in art["notes"])
    # and the artifact holds them in float: the head conv runs on float weights, the other convs on int8
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.path.join(int8_bundle, art["file"]))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]  # noqa: SLF001
    kinds = [str(dtypes[int(op["inputs"][1])]) for op in convs]
    assert kinds[-1] == "float32" and kinds[:-1] == ["int8"] * (len(kinds) - 1), kinds


def _head_is_float(path: str, head: list) -> None:
    """No head node's output is quantized, and the graph output is float."""
    import onnx

    model = onnx.load(path)
    by_name = {n.name: n for n in model.graph.node}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    present = [n for n in head if n in by_name]
    assert len(present) >= len(head) - 2, (len(present), len(head))  # the same graph, the same names
    for name in present:
        assert not set(by_name[name].output) & quantized, f"{name} is quantized in {path}"
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.slow
def test_onnx_auto_fallback_on_real_yolov8_keeps_the_head_float(tmp_path):
    """The fallback loop over the real YOLOv8: one attempt (small calibration), the head stays float throughout."""
    import onnxruntime as ort

    from edgeship.converters.refine import fallback
    from edgeship.converters.refine.onnx import OnnxNodeErrors
    from edgeship.metrics_detection import match_f1
    from edgeship.runtime.tasks.detect import postprocess

    src = real_file("yolov8_fall.onnx")
    spec = PreprocessSpec(**YOLO_SPEC)
    calib = np.concatenate([spec.to_input(f, layout="NCHW") for f in video_frames(range(0, 160, 40))])
    held_out = video_frames([30, 90])

    def detections(path):
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = []
        for img in held_out:
            (y,) = sess.run(None, {"images": spec.to_input(img, layout="NCHW")})
            out.append(postprocess([y[0]], (img.shape[1], img.shape[0]), spec=spec, threshold=0.25,
                                   format="yolov8", labels=("Normal", "Fall")))
        return out

    ref = detections(src)
    assert sum(len(d) for d in ref) >= 4

    def evaluate(path):
        return {"detection_f1": match_f1(ref, detections(path))["f1"]}

    sens = OnnxNodeErrors(src, calib, workdir=str(tmp_path), samples=2, keep_head_float=True)
    head = set(sens.head)
    assert {"/model.22/Concat_5", "/model.22/Sigmoid", "/model.22/dfl/conv/Conv"} <= head
    assert "decode-head nodes kept in float" in sens.head_summary
    # the measured (plain) model already has the head float, so no head node is ranked or offered
    assert not head & {c.node for c in sens.candidates()}
    assert all(not head & set(sens.new_members(c, [])) for c in sens.candidates()[:20])
    _head_is_float(sens.plain_path, sens.head)
    # one attempt of the real loop: the most sensitive node goes float, the head is float beside it
    res = fallback(sens, evaluate, max_drop=100.0, baseline={"drop_points": 100.0}, max_attempts=1)
    assert res.ok and len(res.attempts) == 2 and res.denylist
    assert not head & set(res.denylist)
    _head_is_float(res.model, sens.head)
    assert res.metrics["detection_f1"] >= 0.9, res.metrics


@pytest.mark.slow
def test_int8_onnx_demo_detector_keeps_its_head_and_its_map(demo_detector, tmp_path, capfd):
    """The ONNX path (Keras -> tf2onnx -> QDQ) finds the small detector's head too (17 of 29 nodes)."""
    from edgeship.cli import main
    from edgeship.converters import convert

    mod, int8_bundle, _ = demo_detector
    s = mod.DetectorSettings()
    model = mod.load_keras(os.path.dirname(int8_bundle), s)
    x, _, _ = mod.make_dataset(64, s, s.seed + 5)
    kw = dict(preprocess=mod.preprocess_spec(s), labels=list(mod.LABELS), task="detection", formats=("onnx",),
              force=True)
    convert(model, str(tmp_path / "fp32"), precision="fp32", **kw)
    r = convert(model, str(tmp_path / "int8"), precision="int8", calib=x, **kw)
    q = r.manifest["settings"]["onnx_quantization"]["detection_head"]
    assert "Conv x1" in q["summary"] and "Sigmoid x1" in q["summary"] and "Softmax x1" in q["summary"]
    assert "detector_1/head_1/BiasAdd" in q["nodes"] or any("head" in n for n in q["nodes"])
    art = r.manifest["artifacts"][0]
    _head_is_float(os.path.join(r.bundle, art["file"]), q["nodes"])
    folder = _write_scenes(str(tmp_path / "val"), mod, SCENES)
    fp32, int8 = _eval(main, capfd, str(tmp_path / "fp32"), folder), _eval(main, capfd, str(tmp_path / "int8"), folder)
    assert 100 * (fp32["map"] - int8["map"]) <= 1.0, (fp32["map"], int8["map"])


@pytest.mark.slow
def test_tflite_fallback_attempts_keep_the_demo_detector_head_float(demo_detector, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.converters import registry
    from edgeship.converters.refine.tflite import TfliteLayerErrors
    from edgeship.vocab import IOType, Precision

    mod, int8_bundle, _ = demo_detector
    s = mod.DetectorSettings()
    model = mod.load_keras(os.path.dirname(int8_bundle), s)
    x, _, _ = mod.make_dataset(32, s, s.seed + 5)
    registry.load_plugins()
    _, loader = registry.find_loader(model)
    source = loader(model)
    req = registry.ExportRequest(precision=Precision.INT8, io=IOType.INT8, calib=x, out_path=str(tmp_path / "m.tflite"),
                                 workdir=str(tmp_path), keep_head_float=True)
    sens = TfliteLayerErrors(source, req, samples=8)
    assert sens.head and "CONV_2D x1" in sens.head_summary
    head = set(sens.head)
    assert not head & {c.tensor for c in sens.candidates()}
    first = sens.candidates()[0]
    deny = sens.new_members(first, [])
    assert deny and not head & set(deny)
    it = Interpreter(model_path=sens.quantize_file(deny))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]  # noqa: SLF001
    assert str(dtypes[int(convs[-1]["inputs"][1])]) == "float32"  # the 5+C head conv, in every attempt
    assert it.get_output_details()[0]["dtype"] == np.float32
    assert it.get_input_details()[0]["dtype"] == np.int8  # the requested integer input is kept
