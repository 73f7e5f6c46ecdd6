"""Dynamic input sizes in the runtime and a task-aware ``edgeship run``, on real models.

- PP-OCRv4's text detector (``ppocrv4_det.onnx``: input ``x [N,3,H,W]``, output a
  ``[N,1,H,W]`` probability map, height and width dynamic) runs at two sizes through
  ``Model.run`` (against a plain ONNX Runtime session on the same arrays), through
  ``Model.predict``/``segment`` (each photo at its own size, sides to a multiple of 32),
  through OpenVINO (compiled once per shape), as a bundle whose manifest has ``null``
  dims, and through ``edgeship run`` on two photos of different sizes;
  ``--save-masks`` writes PNGs of the image's size.
- A TFLite model with dynamic height/width (made with ``tf.lite`` from a small
  ``tf.function``: plumbing, synthetic on purpose) is resized per call and
  re-allocated only when the shape changes (the interpreter's own input details
  and the backend's counter say so).
- Detection printing on the real Ultralytics YOLOv8 file, segmentation on MediaPipe's
  selfie model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from _real_fixtures import real_file, real_image
from test_cli_claims_common import cli_capture, cli_json, one_error_line

import edgeship.runtime as rt
from edgeship.errors import InputError
from edgeship.preprocess import PreprocessSpec
from edgeship.runtime.tasks.common import own_size, per_image, preprocess_spec

cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")

OCR = "ppocrv4_det.onnx"
PHOTOS = ("china.jpg", "messi5.jpg")  # 640x427 and 548x342


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _reference(sess, image, size, **spec):
    """What ONNX Runtime itself gives for ``image`` preprocessed by the rule at ``size``."""
    x = PreprocessSpec(size=size, layout="NCHW", **spec).to_input(image, layout="NCHW")
    return sess.run(None, {"x": x})[0]


def _with_text(name: str) -> tuple[np.ndarray, tuple]:
    """A real photo with a white sign and black text drawn on it (the text's box)."""
    img = real_image(name).copy()
    cv2.rectangle(img, (60, 150), (580, 250), (255, 255, 255), -1)
    cv2.putText(img, "EDGESHIP 2026", (80, 225), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 5)
    return img, (150, 250, 60, 580)


# ------------------------------------------------------------------------------ the size rule


def test_own_size_rule():
    assert own_size((427, 640)) == (416, 640)  # nearest multiple of 32
    assert own_size((342, 548)) == (352, 544)
    assert own_size((10, 20)) == (32, 32)  # at least one stride
    assert own_size((427, 640), stride=1) == (427, 640)
    assert own_size((3000, 4000)) == (1536, 2048)  # longer side capped at 2048, aspect kept
    assert own_size((427, 640), max_side=320) == (224, 320)
    assert own_size((100, 400), (48, None), stride=8) == (48, 192)  # a fixed height: the width keeps the aspect
    with pytest.raises(InputError, match="stride"):
        own_size((10, 10), stride=0)


# ------------------------------------------------------------------------------ ONNX Runtime, bare file


def test_bare_ppocr_runs_at_two_sizes_through_model_run():
    path = real_file(OCR)
    sess = _session(path)
    rng = np.random.default_rng(0)
    with rt.load(path, threads=2) as m:
        assert m.inputs[0].shape == (None, 3, None, None)
        for h, w in ((320, 480), (416, 640)):
            x = rng.random((1, 3, h, w), dtype=np.float32)
            (y,) = m.run(x).values()
            assert y.shape == (1, 1, h, w)
            np.testing.assert_allclose(y, sess.run(None, {"x": x})[0], atol=1e-5)
        with pytest.raises(InputError):  # the net needs multiples of 32: why predict() rounds to them
            m.run(rng.random((1, 3, 328, 328), dtype=np.float32))


def test_predict_and_segment_run_each_photo_at_its_own_size():
    path = real_file(OCR)
    sess = _session(path)
    with rt.load(path, threads=2) as m:
        assert per_image(m)
        for name, want in zip(PHOTOS, ((416, 640), (352, 544))):
            img = real_image(name)
            assert preprocess_spec(m, img).size == want
            (y,) = m.predict(img).values()
            assert y.shape == (1, 1, *want)
            np.testing.assert_allclose(y, _reference(sess, img, want), atol=1e-5)
            seg = m.segment(img)
            assert seg.mask.shape == img.shape[:2]  # mapped back to the photo's pixels
        with pytest.raises(InputError, match="dynamic height/width"):
            preprocess_spec(m)  # no image, no size


def test_text_on_a_photo_is_found_at_two_sizes():
    with rt.load(real_file(OCR), threads=2) as m:
        img, (y0, y1, x0, x1) = _with_text("china.jpg")
        small = cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
        full, part = m.segment(img).mask, m.segment(small).mask
        assert full.shape == img.shape[:2] and part.shape == small.shape[:2]
        part = cv2.resize(part.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        for mask in (full, part):
            inside = mask[y0:y1, x0:x1].mean()
            outside = (mask.sum() - mask[y0:y1, x0:x1].sum()) / (mask.size - (y1 - y0) * (x1 - x0))
            assert inside > 0.05 and outside < 0.005, (inside, outside)
        iou = np.logical_and(full, part).sum() / np.logical_or(full, part).sum()
        assert iou > 0.6, iou


def test_openvino_compiles_once_per_shape():
    pytest.importorskip("openvino")
    path = real_file(OCR)
    sess = _session(path)
    rng = np.random.default_rng(1)
    a = rng.random((1, 3, 320, 320), dtype=np.float32)
    b = rng.random((1, 3, 352, 544), dtype=np.float32)
    from edgeship.runtime.backends.base import ModelSource
    from edgeship.runtime.backends.openvino import OpenVINOBackend
    from edgeship.runtime.model import Model

    be = OpenVINOBackend(ModelSource.read(path))
    with Model(be, path=path) as m:
        loaded = be.compiles
        for x, compiled in ((a, loaded + 1), (b, loaded + 2), (a, loaded + 2), (b, loaded + 2)):
            (y,) = m.run(x).values()
            np.testing.assert_allclose(y, sess.run(None, {"x": x})[0], atol=2e-2)
            assert be.compiles == compiled
        img = real_image("messi5.jpg")
        assert m.predict(img)[m.outputs[0].name].shape == (1, 1, 352, 544)  # a shape compiled already
        assert be.compiles == loaded + 2


# ------------------------------------------------------------------------------ bundles


def _bundle(tmp_path, name: str, **extra) -> str:
    """A bundle of the unchanged PP-OCR file whose manifest records its dynamic dims as null."""
    src = real_file(OCR)
    folder = tmp_path / name
    folder.mkdir()
    shutil.copyfile(src, folder / "model.fp32.onnx")
    data = (folder / "model.fp32.onnx").read_bytes()
    import gzip

    ins = [{"name": "x", "shape": [None, 3, None, None], "dtype": "float32", "quantization": None}]
    outs = [{"name": "sigmoid_0.tmp_0", "shape": [None, 1, None, None], "dtype": "float32", "quantization": None}]
    manifest = {
        "schema_version": 1, "name": name, "created": "2026-12-01T00:00:00+00:00", "task": "other",
        "source": {"format": "onnx", "layout": "NCHW", "inputs": ins, "outputs": outs},
        "artifacts": [{"file": "model.fp32.onnx", "format": "onnx", "precision": "fp32", "io": "float",
                       "layout": "NCHW", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                       "gzip_bytes": len(gzip.compress(data, 1)), "inputs": ins, "outputs": outs}],
        "preprocessing": None, "labels": None, "calibration": None, "validation": {}, "tools": {},
    }
    manifest.update(extra)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return str(folder)


def test_bundle_with_null_dims_runs_at_two_sizes(tmp_path):
    sess = _session(real_file(OCR))
    with rt.load(_bundle(tmp_path, "plain"), threads=2) as m:
        assert m.inputs[0].shape == (None, 3, None, None) and per_image(m)
        for name, want in zip(PHOTOS, ((416, 640), (352, 544))):
            img = real_image(name)
            (y,) = m.predict(img).values()
            np.testing.assert_allclose(y, _reference(sess, img, want), atol=1e-5)


def test_manifest_spec_and_dynamic_size_rule(tmp_path):
    """PP-OCR's own normalisation in the manifest, the size left to each image (max side 480)."""
    spec = {"size": [640, 640], "resize": "letterbox", "color": "bgr", "layout": "NCHW", "scale": 1 / 255,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    sess = _session(real_file(OCR))
    img = real_image("china.jpg")
    norm = {k: spec[k] for k in ("color", "mean", "std")}
    with rt.load(_bundle(tmp_path, "spec", preprocessing=spec, dynamic_size={"max_side": 480}), threads=2) as m:
        assert preprocess_spec(m, img).size == (320, 480)  # 640x427 scaled to 480 wide, then to 32s
        (y,) = m.predict(img).values()
        np.testing.assert_allclose(y, _reference(sess, img, (320, 480), **norm), atol=1e-5)
        assert m.segment(img).mask.shape == img.shape[:2]
    with rt.load(_bundle(tmp_path, "fixed", preprocessing=spec), threads=2) as m:  # a spec without dynamic_size
        assert not per_image(m) and preprocess_spec(m, img).size == (640, 640)
        assert m.predict(img)[m.outputs[0].name].shape == (1, 1, 640, 640)
    with rt.load(_bundle(tmp_path, "bad", dynamic_size={"stride": 0}), threads=2) as m:
        with pytest.raises(InputError, match="stride"):
            m.predict(img)


@pytest.mark.slow
def test_converted_fp32_bundle_through_edgeship_run(tmp_path, capfd):
    """`edgeship convert` to an FP32 ONNX bundle; `edgeship run` on two photos. A conversion that keeps the
    dynamic dims runs each photo at its own size; one that needs --input-shape runs both at that size."""
    src, out = real_file(OCR), tmp_path / "ocr"
    # 8 random samples: FP32 needs no calibration, and the default 300 at 640x640 cost ~12 GB of RAM here
    base = ("convert", src, "-o", out, "--formats", "onnx", "--precision", "fp32", "--calib", "random",
            "--calib-count", "8")
    rc, _, err = cli_capture(capfd, *base)
    if rc != 0:
        assert "--input-shape" in one_error_line(err)
        rc, _, err = cli_capture(capfd, *base, "--input-shape", "1,3,320,320")
        assert rc == 0, err[-3000:]
    with rt.load(str(out)) as m:
        dynamic = m.inputs[0].shape[2] is None
    photos = [real_file(p) for p in PHOTOS]
    res = cli_json(capfd, "run", out, *photos)
    assert res["task"] == "segmentation" and len(res["results"]) == 2
    for r, name in zip(res["results"], PHOTOS):
        img = real_image(name)
        assert r["mask"]["size"] == [img.shape[1], img.shape[0]]
        want = own_size(img.shape[:2]) if dynamic else (320, 320)
        assert r["input_size"] == [want[1], want[0]]


# ------------------------------------------------------------------------------ edgeship run


def test_edgeship_run_bare_ppocr_on_two_photos(capfd):
    path, photos = real_file(OCR), [real_file(p) for p in PHOTOS]
    res = cli_json(capfd, "run", path, *photos)
    assert res["task"] == "segmentation" and "output" in res["task_from"]
    sizes = [r["input_size"] for r in res["results"]]
    assert sizes == [[640, 416], [544, 352]]  # two photos, two input sizes
    for r, name in zip(res["results"], PHOTOS):
        img = real_image(name)
        assert r["image_size"] == r["mask"]["size"] == [img.shape[1], img.shape[0]]
        assert abs(sum(c["fraction"] for c in r["mask"]["classes"]) - 1.0) < 1e-6
    rc, out, err = cli_capture(capfd, "run", path, *photos)
    assert rc == 0, err[-2000:]
    assert "ran at 640x416" in out and "ran at 544x352" in out and "mask 640x427" in out


def test_save_masks_writes_pngs_of_the_image_size(tmp_path, capfd):
    img, (y0, y1, x0, x1) = _with_text("flower.jpg")
    p1 = tmp_path / "sign.png"
    assert cv2.imwrite(str(p1), img)
    p2 = real_file("messi5.jpg")
    masks = tmp_path / "masks"
    res = cli_json(capfd, "run", real_file(OCR), p1, p2, "--save-masks", masks)
    with rt.load(real_file(OCR), threads=2) as m:
        for r, (p, image) in zip(res["results"], ((p1, img), (p2, real_image("messi5.jpg")))):
            file = r["mask"]["file"]
            assert os.path.dirname(file) == str(masks)
            png = cv2.imread(file, cv2.IMREAD_UNCHANGED)
            assert png is not None and png.dtype == np.uint8 and png.shape == image.shape[:2]
            np.testing.assert_array_equal(png, m.segment(image).mask)  # pixel value = class id
    sign = cv2.imread(res["results"][0]["mask"]["file"], cv2.IMREAD_UNCHANGED)
    assert sign[y0:y1, x0:x1].mean() > 0.05  # the text is in the mask
    # a fixed-size segmentation model (MediaPipe selfie, 256x256): the mask comes back at the photo's size
    sel = cli_json(capfd, "run", real_file("selfie_segmentation.tflite"), real_file("astronaut.png"),
                   "--save-masks", tmp_path / "selfie")
    (r,) = sel["results"]
    assert sel["task"] == "segmentation" and r["input_size"] == [256, 256]
    png = cv2.imread(r["mask"]["file"], cv2.IMREAD_UNCHANGED)
    assert png.shape == (512, 512) and set(np.unique(png)) <= {0, 1}
    person = {c["id"]: c["fraction"] for c in r["mask"]["classes"]}
    assert abs(person.get(1, 0.0) - float((png == 1).mean())) < 1e-9
    # --save-masks on a detector, or onto a file: one line, exit 2, in CLI words
    rc, _, err = cli_capture(capfd, "run", real_file("yolov8_fall.onnx"), p2, "--save-masks", masks)
    assert rc == 2 and "--save-masks" in one_error_line(err) and "detection" in one_error_line(err)
    rc, _, err = cli_capture(capfd, "run", real_file(OCR), p2, "--save-masks", p1)
    assert rc == 2 and "--save-masks" in one_error_line(err)
    rc, _, err = cli_capture(capfd, "run", real_file(OCR), p2, "--task", "boxes")
    assert rc == 2 and "--task" in one_error_line(err)


def test_edgeship_run_prints_yolo_detections(capfd):
    path = real_file("yolov8_fall.onnx")
    photo = real_file("basketball1.png")
    res = cli_json(capfd, "run", path, photo, "--threshold", "0.25")
    assert res["task"] == "detection"
    (r,) = res["results"]
    with rt.load(path, threads=2) as m:
        want = m.detect(real_image("basketball1.png"), 0.25)
    assert len(want) >= 1 and len(r["detections"]) == len(want)
    for d, w in zip(r["detections"], want):
        assert d["id"] == w.id and abs(d["score"] - w.score) < 1e-6
        np.testing.assert_allclose(d["box"], list(w.bbox), atol=0.06)
        assert 0 <= d["box"][0] < d["box"][2] <= 640 and 0 <= d["box"][1] < d["box"][3] <= 480
    rc, out, err = cli_capture(capfd, "run", path, photo, "--threshold", "0.25")
    assert rc == 0, err[-2000:]
    lines = out.splitlines()
    assert lines[0].endswith(f"{len(want)} detection{'s' * (len(want) != 1)} (ran at 640x640)")
    assert lines[1].strip().startswith(f"{want[0].id} {want[0].score:.3f} [")
    # --task forces a reading: the same file read as classification scores is refused or gives classes
    forced = cli_json(capfd, "run", path, photo, "--task", "other")
    assert forced["task"] == "other" and "outputs" in forced["results"][0]


# ------------------------------------------------------------------------------ TFLite


@pytest.fixture(scope="module")
def dynamic_tflite(tmp_path_factory):
    """A conv + sigmoid TFLite model with input [None, None, None, 3] and its TF reference."""
    tf = pytest.importorskip("tensorflow")

    class Net(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.k = tf.constant(rng.normal(size=(3, 3, 3, 2)).astype(np.float32))
            self.b = tf.constant(np.array([0.1, -0.2], np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, x):
            return tf.sigmoid(tf.nn.conv2d(x, self.k, 1, "SAME") + self.b)

    net = Net()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([net.__call__.get_concrete_function()], net)
    path = tmp_path_factory.mktemp("dyn_tflite") / "dyn.tflite"
    path.write_bytes(conv.convert())
    return str(path), lambda x: net(x).numpy()


def test_tflite_resizes_per_call_and_reallocates_only_on_a_new_shape(dynamic_tflite):
    pytest.importorskip("ai_edge_litert")
    from edgeship.runtime.backends.base import ModelSource
    from edgeship.runtime.backends.tflite import LiteRTBackend
    from edgeship.runtime.model import Model

    path, ref = dynamic_tflite
    be = LiteRTBackend(ModelSource.read(path))
    rng = np.random.default_rng(2)
    with Model(be, path=path) as m:
        assert m.inputs[0].shape == (None, None, None, 3)
        calls = [((1, 40, 60, 3), 1), ((1, 40, 60, 3), 1), ((1, 64, 32, 3), 2), ((1, 64, 32, 3), 2),
                 ((1, 40, 60, 3), 3), ((3, 40, 60, 3), 4), ((3, 40, 60, 3), 4)]
        for shape, reallocs in calls:
            x = rng.random(shape, dtype=np.float32)
            (y,) = m.run(x).values()
            np.testing.assert_allclose(y, ref(x), atol=1e-5)
            assert be.input_shapes == [shape]  # the interpreter's own input details
            assert be.reallocations == reallocs
        img = real_image("china.jpg")
        (y,) = m.predict(img).values()
        assert y.shape == (1, 416, 640, 2) and be.input_shapes == [(1, 416, 640, 3)]
        assert m.segment(img).mask.shape == img.shape[:2]


def test_tflite_dynamic_model_through_edgeship_run(dynamic_tflite, capfd):
    path, _ = dynamic_tflite
    res = cli_json(capfd, "run", path, *[real_file(p) for p in PHOTOS], "--task", "segmentation")
    assert [r["input_size"] for r in res["results"]] == [[640, 416], [544, 352]]
    assert [r["mask"]["size"] for r in res["results"]] == [[640, 427], [548, 342]]


def test_static_tflite_keeps_the_plain_invoke(tmp_path):
    """No per-call shape check for a model without dynamic sizes (the selfie model is fixed)."""
    pytest.importorskip("ai_edge_litert")
    from edgeship.runtime.backends.base import ModelSource
    from edgeship.runtime.backends.tflite import LiteRTBackend

    be = LiteRTBackend(ModelSource.read(real_file("selfie_segmentation.tflite")))
    assert "invoke" not in vars(be) and be.reallocations == 0
    with rt.load(real_file("selfie_segmentation.tflite")) as m:
        assert not per_image(m)
