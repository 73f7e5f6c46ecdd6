"""edgeship.metrics_detection: agreement F1 and COCO mAP, against hand-computed cases and
against pycocotools' COCOeval on a recorded fixture (live too when pycocotools is installed)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgeship.metrics_detection import coco_map, iou_matrix, match_f1

FIX = json.loads((Path(__file__).parent / "fixtures" / "coco_small.json").read_text())


def test_iou_matrix_hand_values():
    iou = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_match_f1_hand_values():
    ref = [[([0, 0, 10, 10], 0, 0.9), ([20, 20, 40, 40], 1, 0.8)], []]
    # one match, one wrong class at the right place, one extra box on the empty image
    cand = [[([1, 0, 10, 10], 0, 0.7), ([20, 20, 40, 40], 0, 0.6)], [([0, 0, 5, 5], 0, 0.5)]]
    r = match_f1(ref, cand)
    assert (r["matched"], r["reference"], r["candidate"]) == (1, 2, 3)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert match_f1([[]], [[]])["f1"] == 1.0
    assert match_f1(ref, [[], []])["f1"] == 0.0


def test_match_f1_one_reference_box_matches_once():
    ref = [[([0, 0, 10, 10], 0, 0.9)]]
    cand = [[([0, 0, 10, 10], 0, 0.9), ([0, 0, 10, 11], 0, 0.8)]]
    assert match_f1(ref, cand)["matched"] == 1


def test_coco_map_hand_values():
    gt = [[([0, 0, 10, 10], 0)], [([0, 0, 10, 10], 0)]]
    # perfect detections: AP 1 at every IoU threshold
    assert coco_map(gt, [[([0, 0, 10, 10], 0, 0.9)], [([0, 0, 10, 10], 0, 0.8)]])["map"] == pytest.approx(1.0)
    # a false positive scored above the second true positive: precision 1 up to recall 0.5, then 2/3
    r = coco_map(gt, [[([0, 0, 10, 10], 0, 0.9), ([50, 50, 60, 60], 0, 0.85)], [([0, 0, 10, 10], 0, 0.8)]])
    expect = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert r["map50"] == pytest.approx(expect) and r["map"] == pytest.approx(expect)
    # a box with IoU 0.68 counts at thresholds 0.50..0.65 only (4 of 10)
    r = coco_map([[([0, 0, 10, 10], 0)]], [[([0, 0, 10, 6.8], 0, 0.9)]])
    assert r["map50"] == 1.0 and r["map75"] == 0.0 and r["map"] == pytest.approx(0.4)


def test_coco_map_matches_pycocotools_recorded():
    r = coco_map(FIX["gt"], FIX["dt"])
    assert abs(r["map"] - FIX["stats"][0]) < 1e-3
    assert abs(r["map50"] - FIX["stats"][1]) < 1e-3
    assert abs(r["map75"] - FIX["stats"][2]) < 1e-3


def test_coco_map_matches_pycocotools_live():
    pytest.importorskip("pycocotools", reason="pycocotools not installed; the recorded test covers it")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, res = [], []
    for i, g in enumerate(FIX["gt"]):
        for b, c, crowd in g:
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": crowd})
    for i, d in enumerate(FIX["dt"]):
        for b, c, s in d:
            res.append({"image_id": i + 1, "category_id": c + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i + 1} for i in range(len(FIX["gt"]))], "annotations": anns,
                        "categories": [{"id": k + 1} for k in range(3)]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    r = coco_map(FIX["gt"], FIX["dt"])
    np.testing.assert_allclose([r["map"], r["map50"], r["map75"]], ev.stats[:3], atol=1e-3)
