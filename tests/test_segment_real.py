"""Segmentation on a real model (MediaPipe selfie segmentation, make fixtures): Model.segment gives
the mask at the image's size with the letterbox undone; mIoU/pixel accuracy by hand."""

from __future__ import annotations

import numpy as np
import pytest

from _real_fixtures import real_file, real_image

from edgeship.metrics_segmentation import miou
from edgeship.preprocess import PreprocessSpec
from edgeship.runtime.tasks.segment import get_mask, to_image_mask


def test_miou_hand_values():
    t = [np.array([[0, 0], [1, 1]])]
    p = [np.array([[0, 1], [1, 1]])]
    r = miou(t, p, 2)
    assert r["iou"] == pytest.approx([0.5, 2 / 3]) and r["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["pixel_accuracy"] == pytest.approx(0.75)
    assert miou([np.array([[255, 0]])], [np.array([[1, 0]])], 2)["iou"] == [1.0, None]  # 255 ignored


def test_one_channel_map_is_thresholded_not_argmaxed():
    prob = np.zeros((4, 4, 1), np.float32)
    prob[1:3, 1:3, 0] = 0.9
    assert get_mask(prob).sum() == 4
    assert get_mask(prob * 20 - 10).sum() == 4  # logits: cut at 0


def test_mask_back_through_letterbox():
    spec = PreprocessSpec(size=(4, 4), resize="letterbox")
    out = np.array([[0, 0, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]])  # 8x4 image letterboxed: rows 1-2
    m = to_image_mask(out, (8, 4), spec)
    assert m.shape == (4, 8)
    assert (m[:, :4] == 1).all() and (m[:, 4:] == 2).all()


def test_selfie_segmentation_finds_the_person_at_image_size():
    from edgeship import runtime

    with runtime.load(real_file("selfie_segmentation.tflite")) as model:
        model.preprocessing = PreprocessSpec(size=(256, 256), resize="letterbox", color="rgb")
        person = model.segment(real_image("astronaut.png"), probabilities=True)
        nobody = model.segment(real_image("china.jpg"))
    assert person.mask.shape == (512, 512) and person.probabilities.shape == (512, 512, 1)
    frac = dict((c.id, c.score) for c in person.classes)[1]
    assert 0.3 < frac < 0.8  # the astronaut fills about half of skimage's photo
    assert person.mask[120, 230] == 1 and person.mask[10, 10] == 0  # her face; the top-left corner
    assert nobody.mask.shape == (427, 640) and nobody.mask.mean() < 0.05  # a landscape: no person


def test_cli_run_preprocess_sets_a_bare_models_preprocessing(tmp_path):
    """``edgeship run --preprocess`` gives a bare .tflite (no manifest) its real preprocessing: the selfie
    model expects a letterboxed frame; stretched, an empty room comes out half "person"."""
    import json
    import os
    import subprocess
    import sys

    from edgeship import runtime

    model, image = real_file("selfie_segmentation.tflite"), real_file("home.jpg")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    def run(*extra):
        r = subprocess.run([sys.executable, "-m", "edgeship.cli", "run", model, image, "--json", *extra],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        (res,) = json.loads(r.stdout)["results"]
        return {c["id"]: c["fraction"] for c in res["mask"]["classes"]}

    boxed, stretched = run("--preprocess", "resize=letterbox"), run()
    with runtime.load(model) as m:
        m.preprocessing = PreprocessSpec(size=(256, 256), resize="letterbox")  # the CLI keeps size and colour
        want = {c.id: c.score for c in m.segment(real_image("home.jpg")).classes}
    assert boxed == pytest.approx(want)
    assert boxed.get(1, 0.0) < 0.05 < stretched.get(1, 0.0)
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "run", model, image, "--preprocess", "reszie=letterbox"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "unknown key 'reszie'" in bad.stderr and "Traceback" not in bad.stderr
