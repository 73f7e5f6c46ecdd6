"""Segmentation streams on real models and a real video (make fixtures): MediaPipe's selfie model (fixed
256x256 input) and PP-OCRv4's text detector (dynamic height/width: each frame size gets its own spec).
The stream's masks equal ``Model.segment`` on the same frames, and the overlay touches only the
pixels whose class is not the background."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _real_fixtures import real_file, video_frames

from edgeship.preprocess import PreprocessSpec


def _stream(model, n, **kw):
    from edgeship.runtime.stream import Stream

    out = []
    with Stream(model, real_file("vtest.avi"), **kw) as st:
        for r in st:
            out.append(r)
            if len(out) == n:
                break
        task = st.task
    return task, out


def test_selfie_stream_masks_equal_model_segment_and_overlay_only_the_foreground():
    from edgeship import runtime
    from edgeship.runtime.stream.options import Task

    with runtime.load(real_file("selfie_segmentation.tflite"), threads=2) as m:
        m.preprocessing = PreprocessSpec(size=(256, 256), resize="letterbox")
        # streams resize with `linear` by default (cheap), Model.segment with `area`: the same here to compare
        task, drawn = _stream(m, 3, interpolation="area")
        _task, plain = _stream(m, 3, draw=False, interpolation="area")
        frames = video_frames(range(3))
        want = [m.segment(f) for f in frames]
    assert task is Task.SEGMENT  # read from the [1, 256, 256, 1] output, as `edgeship run` reads it
    assert any((w.mask != 0).any() for w in want)  # people in these frames: the tint check below is not empty
    for r, p, w, f in zip(drawn, plain, want, frames):
        assert r.results.mask.shape == f.shape[:2]
        np.testing.assert_array_equal(p.results.mask, w.mask)
        np.testing.assert_array_equal(r.results.mask, w.mask)
        body = (w.mask == 0)
        body[:60] = False  # the class legend (top-left) and the stats line (bottom) are drawn over the frame too
        body[-30:] = False
        np.testing.assert_array_equal(r.image[body], f[body])
        fg = w.mask != 0
        if fg.any():
            assert np.abs(r.image[fg].astype(int) - f[fg].astype(int)).mean() > 5  # the foreground is tinted


def test_dynamic_size_text_detector_streams_at_the_frames_size():
    from edgeship import runtime
    from edgeship.runtime.stream.options import Task

    with runtime.load(real_file("ppocrv4_det.onnx"), threads=2) as m:
        task, res = _stream(m, 2, draw=False, task="segmentation", interpolation="area")
        frames = video_frames(range(2))
        want = [m.segment(f) for f in frames]
    assert task is Task.SEGMENT
    for r, w, f in zip(res, want, frames):
        assert r.results.mask.shape == f.shape[:2] == (576, 768)
        np.testing.assert_array_equal(r.results.mask, w.mask)


def test_cli_stream_task_segmentation_on_a_dynamic_model(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
    rec = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "stream", real_file("ppocrv4_det.onnx"), "--source",
                        real_file("vtest.avi"), "--display", "none", "--max-frames", "2", "--task", "segment",
                        "--record", str(rec), "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["task"] == "segment" and summary["frames"] == 2
    assert rec.is_file() and rec.stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "stream", real_file("ppocrv4_det.onnx"), "--source",
                          real_file("vtest.avi"), "--task", "segmnt"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "segmentation" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("n_classes", [2, 21])
def test_overlay_mask_blends_only_labelled_pixels(n_classes):
    from edgeship.runtime.stream.draw import overlay_mask

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.int32)
    mask[5:20, 10:30] = n_classes - 1
    out = img.copy()
    overlay_mask(out, mask)
    np.testing.assert_array_equal(out[mask == 0], img[mask == 0])
    assert (out[mask != 0] != img[mask != 0]).any()
