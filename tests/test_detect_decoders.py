"""Detection decoders for the layouts people ship (issue 12): end-to-end [1,K,6], BlazeFace
anchors + keypoints (on the real MediaPipe model and a real photo), the manifest's decoder
spec over shape guessing, and the candidate cap before NMS."""

from __future__ import annotations

import numpy as np
import pytest

from _real_fixtures import real_file, real_image

from edgeship.preprocess import PreprocessSpec
from edgeship.runtime.tasks import detect as D


def test_end2end_rows_decode_in_pixels():
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [64, 32, 192, 96, 0.9, 3]
    rows[0, 1] = [0, 0, 10, 10, 0.1, 1]
    b, s, c = D.decode(rows, format="end2end", input_size=(128, 256))
    np.testing.assert_allclose(b[0], [0.25, 0.25, 0.75, 0.75])
    assert s[0] == pytest.approx(0.9) and c[0] == 3


def test_manifest_decoder_beats_shape_guessing():
    # [1,1,6]: as a guess, a YOLOv5 row (cx, cy, w, h, obj, cls); the recorded spec says end-to-end
    row = np.array([[[10, 20, 50, 60, 0.8, 2]]], np.float32)
    b, _, c = D.decode([row], input_size=(100, 100), decoder={"format": "end2end", "units": "pixels"})
    np.testing.assert_allclose(b[0], [0.1, 0.2, 0.5, 0.6])
    assert c[0] == 2
    guessed, _, _ = D.decode([row], input_size=(100, 100))
    assert not np.allclose(guessed[0], b[0])


def test_units_from_the_spec_not_from_values():
    # a box in pixels whose values happen to be small (<1.5): "auto" would read them as normalised
    v8 = np.zeros((1, 6, 200), np.float32)
    v8[0, :, 0] = [1.0, 1.0, 1.0, 1.0, 0.9, 0.0]
    b, _, _ = D.decode(v8, input_size=(100, 100), decoder={"format": "yolov8", "units": "pixels"})
    np.testing.assert_allclose(b[0], [0.005, 0.005, 0.015, 0.015])


def test_candidates_are_capped_before_nms():
    n = 5000
    rng = np.random.default_rng(0)
    v8 = np.zeros((1, 5, n), np.float32)
    v8[0, 0:2] = rng.uniform(0.1, 0.9, (2, n))
    v8[0, 2:4] = 0.01
    v8[0, 4] = rng.uniform(0.5, 1.0, n)
    dets = D.postprocess([v8], (100, 100), threshold=0.5, max_candidates=50, max_detections=1000,
                         format="yolov8")
    assert 0 < len(dets) <= 50
    best = float(np.max(v8[0, 4]))
    assert dets[0].score == pytest.approx(best)


def test_blazeface_anchors_are_mediapipes():
    a = D.blazeface_anchors()
    assert a.shape == (896, 2)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])  # first 16x16 cell, 2 anchors
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8])  # then the 8x8 grid, 6 anchors per cell


def test_blazeface_finds_the_astronauts_face_with_keypoints():
    from edgeship import runtime

    spec = PreprocessSpec(size=(128, 128), resize="letterbox", color="rgb", scale=1 / 127.5, mean=(1.0,), std=(1.0,))
    img = real_image("astronaut.png")
    with runtime.load(real_file("blazeface_short_range.tflite")) as model:
        y = model.run(spec.to_input(img))
    dets = D.postprocess(y, (img.shape[1], img.shape[0]), spec=spec, threshold=0.5)  # format from the shapes
    assert len(dets) == 1
    (face,) = dets
    # Eileen Collins' face in skimage's astronaut.png (512x512): around x 180..275, y 80..180
    assert 150 < face.bbox.xmin < 210 and 250 < face.bbox.xmax < 300
    assert 50 < face.bbox.ymin < 110 and 150 < face.bbox.ymax < 210
    assert len(face.keypoints) == 6
    (rx, ry), (lx, ly) = face.keypoints[:2]  # the eyes: inside the box, side by side
    assert face.bbox.xmin < rx < lx < face.bbox.xmax and abs(ry - ly) < 20
