"""Task adapters on a bare NCHW ONNX model with a dynamic batch (the form PyTorch exports have).

The user bug: ``edgeship run model.onnx photo.png`` failed with "the input shape
(None, 3, 224, 224) is not an image shape" while ``detect`` and ``stream``
guessed NCHW. Now one rule derives the default preprocessing from the
model's input shape and layout, and classify/detect/predict/run on the CLI
all go through it. The models are real ONNX graphs (random weights) run by
ONNX Runtime; the expected inputs are built here by hand (OpenCV resize,
BGR -> RGB, / 255, HWC -> CHW), independently of the rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgeship.runtime as rt  # noqa: E402
from edgeship.errors import InputError  # noqa: E402
from edgeship.preprocess import Layout, PreprocessSpec  # noqa: E402
from edgeship.runtime import tasks  # noqa: E402

SIZE = 32


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pytorch-like")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _input():
    return helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])


def nchw_classifier(path, classes=5, seed=0):
    """conv 3x3/2 -> relu -> global average pool -> flatten -> gemm -> softmax; input (batch, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b")
    fw = numpy_helper.from_array(rng.normal(0, 1.0, (classes, 8)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(np.zeros(classes, np.float32), "fb")
    nodes = [
        helper.make_node("Conv", ["pixels", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])
    return _save(helper.make_graph(nodes, "classifier", [_input()], [out], [w, b, fw, fb]), path)


def _detector(path, seed=1):
    """conv 8x8/8 -> (batch, 7, 4, 4) -> (batch, 16, 7) rows of cx, cy, w, h, objectness, 2 class scores."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (7, 3, 8, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 7, 16], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["pixels", "w"], ["c"], strides=[8, 8]),
        helper.make_node("Reshape", ["c", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["rows"]),
    ]
    out = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 16, 7])
    return _save(helper.make_graph(nodes, "detector", [_input()], [out], [w, shape]), path)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photograph (scikit-learn's sample image), as BGR uint8 and as a PNG file."""
    datasets = pytest.importorskip("sklearn.datasets")
    rgb = datasets.load_sample_image("china.jpg")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    path = str(tmp_path_factory.mktemp("photo") / "photo.png")
    assert cv2.imwrite(path, bgr)
    return bgr, path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return nchw_classifier(str(d / "classifier.onnx")), _detector(str(d / "detector.onnx"))


def _by_hand(bgr):
    """The expected input, built without the rule: area resize, RGB, / 255, CHW, batch of one."""
    small = cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    x = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def test_default_spec_of_a_dynamic_batch_nchw_input():
    spec = PreprocessSpec.default_for((None, 3, 224, 224))
    assert spec.size == (224, 224) and spec.layout is Layout.NCHW and spec.channels == 3
    assert PreprocessSpec.default_for((None, 224, 224, 3)).layout is Layout.NHWC
    assert PreprocessSpec.default_for((1, 1, 28, 28)).color.value == "gray"
    with pytest.raises(InputError, match="not an image shape"):
        PreprocessSpec.default_for((None, 10))
    with pytest.raises(InputError, match="no fixed height and width"):
        PreprocessSpec.default_for((None, 3, None, None))


def test_bare_nchw_onnx_predicts_and_classifies_a_photo(models, photo):
    bgr, path = photo
    with rt.load(models[0]) as model:
        assert model.inputs[0].shape == (None, 3, SIZE, SIZE)
        assert tasks.input_layout(model) is Layout.NCHW
        got = model.predict(path)["probs"]
        want = ort.InferenceSession(models[0], providers=["CPUExecutionProvider"]).run(None, {"pixels": _by_hand(bgr)})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        top = model.classify(bgr, top_k=3)
        assert [c.id for c in top] == list(np.argsort(-want[0], kind="stable")[:3])
        assert top[0].score == pytest.approx(float(want[0].max()), rel=1e-5)
        assert tasks.classify.classify(model, bgr, top_k=3) == top


def test_bare_nchw_onnx_detects_on_a_photo(models, photo):
    bgr, _ = photo
    with rt.load(models[1]) as model:
        dets = model.detect(bgr, threshold=0.0, iou=1.0, max_detections=100)
        rows = ort.InferenceSession(models[1], providers=["CPUExecutionProvider"]).run(None, {"pixels": _by_hand(bgr)})[0]
        want = tasks.postprocess([rows], (bgr.shape[1], bgr.shape[0]), spec=PreprocessSpec.default_for(
            model.inputs[0].shape), threshold=0.0, iou=1.0, max_detections=100)
        assert len(dets) == len(want) == 16 and [d.id for d in dets] == [d.id for d in want]
        np.testing.assert_allclose([d.bbox for d in dets], [d.bbox for d in want], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose([d.score for d in dets], [d.score for d in want], rtol=1e-4)
        h, w = bgr.shape[:2]
        assert all(0 <= d.bbox.xmin <= d.bbox.xmax <= w and 0 <= d.bbox.ymin <= d.bbox.ymax <= h for d in dets)


def test_cli_run_on_a_bare_nchw_onnx_and_a_photo(models, photo):
    """``edgeship run model.onnx photo.png`` (it failed with 'not an image shape')."""
    _, path = photo
    code = "import sys; from edgeship.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "run", models[0], path, "--json", "--top-k", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    (result,) = out["results"]
    assert result["input"] == path and len(result["classes"]) == 2
    with rt.load(models[0]) as model:
        assert result["classes"][0]["id"] == model.classify(path, top_k=1)[0].id


def _segmenter(path, classes=3, seed=2):
    """1x1 conv: per-pixel class logits (batch, 3 classes, 32, 32) from an NCHW image."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 2.0, (classes, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["logits"])]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes, SIZE, SIZE])
    return _save(helper.make_graph(nodes, "segmenter", [_input()], [out], [w]), path)


def test_bare_nchw_onnx_segments_a_photo(tmp_path, photo):
    bgr, _ = photo
    path = _segmenter(str(tmp_path / "seg.onnx"))
    with rt.load(path) as model:
        scores = model.predict(bgr)["logits"][0]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"pixels": _by_hand(bgr)})[0][0]
    seg = tasks.get_segmentation(scores, labels=["sky", "hill", "house"])
    np.testing.assert_array_equal(seg.mask, np.argmax(want, axis=0))
    assert seg.mask.shape == (SIZE, SIZE) and not seg.mask.flags.writeable
    assert sum(c.score for c in seg.classes) == pytest.approx(1.0)
    assert [c.score for c in seg.classes] == sorted((c.score for c in seg.classes), reverse=True)
    assert {c.label for c in seg.classes} <= {"sky", "hill", "house"}
    nhwc = tasks.get_mask(np.transpose(want, (1, 2, 0)))
    np.testing.assert_array_equal(nhwc, seg.mask)
    with pytest.raises(InputError):
        tasks.get_mask(np.zeros((2, 2, 2, 2, 2)))
