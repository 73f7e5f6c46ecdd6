"""``edgeship eval`` on detection bundles: COCO mAP from YOLO txt or COCO JSON labels (issue 12)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgeship.errors import InputError
from edgeship.evaluate_detection import load_labelled_images
from edgeship.metrics_detection import coco_map


def _scenes(folder, mod, n=40, seed=123, *, layout="beside"):
    import cv2

    rng = np.random.default_rng(seed)
    img_dir = os.path.join(folder, "images") if layout == "ultralytics" else folder
    lab_dir = os.path.join(folder, "labels") if layout == "ultralytics" else folder
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    truth = []
    for i in range(n):
        img, boxes, ids = mod.render_scene(rng)
        cv2.imwrite(os.path.join(img_dir, f"s{i:03d}.png"), img)
        h, w = img.shape[:2]
        with open(os.path.join(lab_dir, f"s{i:03d}.txt"), "w") as fh:
            for b, c in zip(boxes, ids):
                fh.write(f"{c} {(b[0] + b[2]) / 2} {(b[1] + b[3]) / 2} {b[2] - b[0]} {b[3] - b[1]}\n")
        truth.append([([b[0] * w, b[1] * h, b[2] * w, b[3] * h], int(c)) for b, c in zip(boxes, ids)])
    return img_dir, truth


def test_yolo_txt_and_coco_json_read_the_same_boxes(tmp_path):
    import cv2

    img = np.zeros((100, 200, 3), np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "images" / "b.png"), img)  # no txt: no objects
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    ((p, gt), (_, gt_b)) = load_labelled_images(str(tmp_path / "images"))
    assert p.endswith("a.png") and gt_b == []
    (box, c), = gt
    assert c == 1 and box == pytest.approx([80, 30, 120, 70])
    coco = {"images": [{"id": 7, "file_name": "a.png"}], "categories": [{"id": 3, "name": "x"}, {"id": 9, "name": "y"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 9, "bbox": [80, 30, 40, 40]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ((_, gt2),) = load_labelled_images(str(tmp_path / "images"), str(tmp_path / "ann.json"), labels=["x", "y"])
    assert gt2 == [([80, 30, 120, 70], 1, 0)]
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 oops\n")
    with pytest.raises(InputError, match="class cx cy w h"):
        load_labelled_images(str(tmp_path / "images"))


def test_images_without_any_labels_are_refused(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="no YOLO label files"):
        load_labelled_images(str(tmp_path))


@pytest.mark.slow
def test_edgeship_eval_gives_map_of_the_labelled_demo_detector(tmp_path, demo_detector, capfd):
    from edgeship.cli import main

    mod, bundle, info = demo_detector
    folder, truth = _scenes(str(tmp_path / "val"), mod, layout="ultralytics")
    assert main(["eval", bundle, "--data", folder, "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    m = report["artifacts"]["model.int8.tflite"]
    assert report["count"] == 40 and report["task"] == "detection"
    assert 0.2 < m["map"] <= m["map50"] <= 1.0
    # the same detections through the Python API give the same numbers
    from edgeship import runtime
    from edgeship.images import list_images, read_image

    with runtime.load(bundle) as model:
        dets = [model.detect(read_image(p), threshold=0.001, max_detections=100) for p in list_images(folder)]
    assert coco_map(truth, dets)["map"] == pytest.approx(m["map"], abs=1e-3)
    assert main(["eval", bundle, "--data", folder]) == 0
    assert "mAP@0.5:0.95" in capfd.readouterr().out
