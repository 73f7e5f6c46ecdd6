"""MediaPipe's BlazeFace (a float .tflite, make fixtures) converted to INT8 ONNX: the anchor decoder is
recorded in the manifest (format, keypoints, anchors), validation measures detections with it, and the
INT8 bundle finds the astronaut's face where the FP32 model does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from _real_fixtures import real_file, real_image

pytestmark = pytest.mark.slow

PHOTOS = ("astronaut.png", "messi5.jpg", "basketball1.png", "basketball2.png", "home.jpg", "coffee.png",
          "chelsea.png", "china.jpg", "fruits.jpg")
PRE = "size=128x128,color=rgb,mean=0.5,std=0.5"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgeship.cli import main

    root = tmp_path_factory.mktemp("blazeface")
    (root / "calib").mkdir()
    for p in PHOTOS:
        shutil.copy(real_file(p), root / "calib" / p)
    out = root / "bf"
    assert main(["convert", real_file("blazeface_short_range.tflite"), "-o", str(out), "--formats", "onnx,tflite",
                 "--calib", str(root / "calib"), "--preprocess", PRE, "--task", "detection"]) == 0
    return out


def test_blazeface_decoder_is_recorded_and_validation_decodes_detections(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    dec = man["decoder"]
    assert dec["format"] == "blazeface" and dec["keypoints"] == 6 and dec["candidates"] == 896
    assert dec["input_size"] == [128, 128] and dec["units"] == "pixels"
    arts = man["validation"]["artifacts"]
    assert set(arts) == {"model.int8.onnx", "model.int8.tflite"}
    assert all(v["detection_f1"] is not None for v in arts.values())  # decoded detections, not only a cosine
    # onnx2tf's TFLite lists the two outputs in the other order: the manifest keeps the source's order
    (tfl,) = [a for a in man["artifacts"] if a["format"] == "tflite"]
    assert [o["shape"][-1] for o in tfl["outputs"]] == [16, 1]


def test_int8_finds_the_same_face_as_the_float_model(bundle):
    from edgeship import runtime
    from edgeship.preprocess import PreprocessSpec

    img = real_image("astronaut.png")
    with runtime.load(real_file("blazeface_short_range.tflite")) as m32:
        m32.preprocessing = PreprocessSpec.parse(PRE)
        (d32,) = m32.detect(img, threshold=0.5)
    b32 = np.array(d32.bbox)
    for artifact in ("onnx", "tflite"):
        with runtime.load(str(bundle), artifact=artifact) as m8:
            (d8,) = m8.detect(img, threshold=0.5)
        b8 = np.array(d8.bbox)
        assert np.abs(b8 - b32).max() < 4.0 and abs(d8.score - d32.score) < 0.05, (artifact, b8, b32)
        assert 150 < b8[0] < 220 and 60 < b8[1] < 120  # her face, in the image's pixels


def test_output_order_matches_by_shape_only_when_unambiguous():
    from edgeship.converters.onnx_tflite import output_order

    assert output_order([(1, 896, 16), (1, 896, 1)], [(1, 896, 1), (1, 896, 16)]) == [1, 0]
    assert output_order([(1, 3, 8, 8), (1, 10)], [(1, 10), (1, 8, 8, 3)]) == [1, 0]  # NCHW vs NHWC
    assert output_order([(1, 4), (1, 4)], [(1, 4), (1, 4)]) is None  # two alike: not guessed
    assert output_order([(1, 4)], [(1, 4)]) is None
