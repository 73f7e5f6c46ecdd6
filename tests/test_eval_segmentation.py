"""``edgeship eval`` on a segmentation bundle: mIoU and pixel accuracy against label masks (single-channel
and palette PNGs) or against the source model, and clear errors for masks that cannot be labels.

The model is an ONNX graph with fixed weights (a 3x3 conv -> ReLU -> 1x1 conv to 2 class logits:
"red" vs the rest), converted to INT8 by ``edgeship convert``; the scenes are drawn here with their
exact masks, so the FP32 source's own mIoU against the labels is known to be high.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
SIZE = 32


def cli(*args):
    return subprocess.run(EDGESHIP + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=600)


def _model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = np.zeros((4, 3, 3, 3), np.float32)  # NCHW input RGB in [0, 1]: feature 0 = red - green - blue, box-blurred
    w1[0, 0], w1[0, 1], w1[0, 2] = 1 / 9, -1 / 9, -1 / 9
    w1[1:, :, 1, 1] = 0.1
    b1 = np.zeros(4, np.float32)
    w2 = np.zeros((2, 4, 1, 1), np.float32)
    w2[1, 0, 0, 0], w2[0, 0, 0, 0] = 4.0, -4.0
    b2 = np.array([1.0, -1.0], np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["logits"])],
        "redseg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, SIZE, SIZE])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _scene(rng):
    img = rng.integers(0, 90, (SIZE * 2, SIZE * 2, 3), dtype=np.uint8)  # BGR, twice the model's size
    mask = np.zeros(img.shape[:2], np.uint8)
    for _ in range(2):
        y, x = rng.integers(0, SIZE * 2 - 20, 2)
        h, w = rng.integers(12, 20, 2)
        img[y:y + h, x:x + w] = (rng.integers(0, 40), rng.integers(0, 40), rng.integers(200, 255))
        mask[y:y + h, x:x + w] = 1
    return img, mask


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("evalseg")
    _model(root / "redseg.onnx")
    rng = np.random.default_rng(0)
    for sub in ("calib", "images", "masks"):
        (root / sub).mkdir()
    for i in range(12):
        img, _ = _scene(rng)
        cv2.imwrite(str(root / "calib" / f"c{i}.png"), img)
    for i in range(8):
        img, mask = _scene(rng)
        cv2.imwrite(str(root / "images" / f"s{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(root / "masks" / f"s{i}.png"), mask)
    r = cli("convert", root / "redseg.onnx", "-o", root / "bundle", "--formats", "onnx", "--calib", root / "calib",
            "--task", "segmentation", "--preprocess", f"size={SIZE}x{SIZE},color=rgb,scale=1/255", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_eval_against_label_masks_reports_miou_per_artifact(work):
    r = cli("eval", work / "bundle", "--data", work / "images", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["reference"] == "labels" and rep["count"] == 8 and rep["masks"].endswith("masks")
    (m,) = rep["artifacts"].values()
    assert m["num_classes"] == 2 and m["miou"] > 0.8 and m["pixel_accuracy"] > 0.9, m
    # the FP32 source, still at its path, is measured against the same masks: the INT8 drop in points
    assert rep["source"]["miou"] > 0.8 and m["drop_points"] == pytest.approx(100 * (rep["source"]["miou"] - m["miou"]))
    assert abs(m["drop_points"]) < 2
    table = cli("eval", work / "bundle", "--data", work / "images")
    assert table.returncode == 0 and "mIoU" in table.stdout and "label masks" in table.stdout
    assert "source (FP32)" in table.stdout and "drop, points" in table.stdout


def test_palette_masks_and_an_explicit_masks_folder(work, tmp_path):
    from PIL import Image

    from edgeship.evaluate_segmentation import read_mask

    pal = tmp_path / "pal"
    pal.mkdir()
    for f in sorted(os.listdir(work / "masks")):
        ids = np.asarray(Image.open(work / "masks" / f))
        im = Image.fromarray(ids.astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 200, 20, 20] + [0] * 762)  # VOC-style: colours shown, indices stored
        im.save(pal / f)
        np.testing.assert_array_equal(read_mask(str(pal / f)), ids)
    a = json.loads(cli("eval", work / "bundle", "--data", work / "images", "--json").stdout)
    b = cli("eval", work / "bundle", "--data", work / "images", "--masks", pal, "--json")
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout)["artifacts"] == a["artifacts"]


def test_eval_against_the_source_without_masks(work, tmp_path):
    import shutil

    only = tmp_path / "photos"
    shutil.copytree(work / "images", only)
    r = cli("eval", work / "bundle", "--data", only, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["reference"] == "source model" and rep["count"] == 8
    (m,) = rep["artifacts"].values()
    assert m["miou"] > 0.9, m  # INT8 against its own FP32 source


def test_bad_masks_are_clear_user_errors(work, tmp_path):
    import cv2

    colour = tmp_path / "colour"
    colour.mkdir()
    for i in range(8):
        cv2.imwrite(str(colour / f"s{i}.png"), np.dstack([np.full((64, 64), v, np.uint8) for v in (10, 200, 30)]))
    r = cli("eval", work / "bundle", "--data", work / "images", "--masks", colour)
    assert r.returncode == 2 and "colour image" in r.stderr and "Traceback" not in r.stderr, r.stderr
    small = tmp_path / "small"
    small.mkdir()
    for i in range(8):
        cv2.imwrite(str(small / f"s{i}.png"), np.zeros((10, 10), np.uint8))
    r = cli("eval", work / "bundle", "--data", work / "images", "--masks", small)
    assert r.returncode == 2 and "10x10" in r.stderr and "64x64" in r.stderr, r.stderr
    none = tmp_path / "none"
    none.mkdir()
    r = cli("eval", work / "bundle", "--data", work / "images", "--masks", none)
    assert r.returncode == 2 and "has a mask" in r.stderr, r.stderr
    alone = tmp_path / "alone" / "pics"
    alone.mkdir(parents=True)
    cv2.imwrite(str(alone / "a.png"), np.zeros((64, 64, 3), np.uint8))
    r = cli("eval", work / "bundle", "--data", alone, "--against", "labels")
    assert r.returncode == 2 and "--masks DIR" in r.stderr, r.stderr


def test_convert_eval_with_masks_validates_on_label_miou_and_max_drop_applies(work, tmp_path):
    """``convert --eval DIR`` whose folder has masks beside it: the source's and the artifact's mIoU
    against the labels are recorded and ``--max-drop`` is compared with their difference."""
    out = tmp_path / "b"
    r = cli("convert", work / "redseg.onnx", "-o", out, "--formats", "onnx", "--calib", work / "calib",
            "--eval", work / "images", "--task", "segmentation", "--max-drop", "2",
            "--preprocess", f"size={SIZE}x{SIZE},color=rgb,scale=1/255", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]["artifacts"]["model.int8.onnx"]
    assert v["drop_metric"] == "label_miou" and v["labelled_images"] == 8
    assert v["source_label_miou"] > 0.8 and v["label_miou"] > 0.8
    assert v["drop_points"] == pytest.approx(100 * (v["source_label_miou"] - v["label_miou"]))
    # the same numbers as `edgeship eval` against the masks (both map the masks back to each image)
    rep = json.loads(cli("eval", out, "--data", work / "images", "--json").stdout)
    assert rep["artifacts"]["model.int8.onnx"]["miou"] == pytest.approx(v["label_miou"], abs=1e-9)
    assert rep["source"]["miou"] == pytest.approx(v["source_label_miou"], abs=1e-9)
    assert "mIoU" in (out / "report.md").read_text()
    # with labels, max_drop reads the label mIoU drop, not the masks' agreement with the source
    from edgeship.metrics import drop_points

    assert drop_points({"label_miou": 0.70, "source_label_miou": 0.75, "miou": 0.99}) == pytest.approx(5.0)
    assert drop_points({"miou": 0.99}) == pytest.approx(1.0)
