"""Model.predict on an integer-quantized input: one fused LUT pass from the uint8 frame, equal to the
reference rule + Model.run's quantization, and used by classify."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

import edgeship  # noqa: E402
from edgeship import runtime as rt  # noqa: E402
from edgeship.runtime import fastimage, tasks  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(digits_cnn, digits, tmp_path_factory):
    """{"gray": digits CNN, int8 I/O; "rgb": a 16x16 RGB conv net with mean/std, uint8 I/O; "float": float I/O}."""
    keras = pytest.importorskip("keras")
    x, _ = digits
    root = tmp_path_factory.mktemp("fastpred")
    out = {"gray": edgeship.convert(digits_cnn, str(root / "gray"), calib=x[:200], io="int8").bundle,
           "float": edgeship.convert(digits_cnn, str(root / "float"), calib=x[:200], io="float").bundle}
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    rng = np.random.default_rng(0)
    calib = ((rng.integers(0, 256, (64, 16, 16, 3)) / 255.0 - 0.45) / 0.25).astype(np.float32)
    pre = {"size": [16, 16], "color": "rgb", "scale": 1 / 255, "mean": [0.45, 0.45, 0.45], "std": [0.25, 0.25, 0.25]}
    out["rgb"] = edgeship.convert(m, str(root / "rgb"), calib=calib, io="uint8", preprocess=pre).bundle
    return out


def _frames(n, h=48, w=40):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("key", ["gray", "rgb"])
def test_fused_path_equals_the_reference_and_skips_the_float_image(bundles, key, monkeypatch):
    with rt.load(bundles[key]) as m:
        assert m.inputs[0].dtype.kind in "iu"
        spec = tasks.preprocess_spec(m)
        plan_q = m.inputs[0].quantization
        frames = _frames(6)
        ref_in = [tasks.prepare_input(m, spec, f) for f in frames]  # the rule: float, source layout
        ref_out = [m.run(x) for x in ref_in]
        calls = []
        real = tasks.prepare_input
        monkeypatch.setattr(tasks, "prepare_input", lambda *a: calls.append(1) or real(*a))
        got = [m.predict(f) for f in frames]
        assert calls == []  # no float image was made
        for g, r in zip(got, ref_out):
            for name in r:
                # equal to within one quantization step of the input, which here means equal outputs
                np.testing.assert_array_equal(g[name], r[name])
        # and the integer inputs themselves, against run()'s quantization of the rule's float values
        q = np.clip(np.rint(np.asarray(ref_in[0], np.float32) / plan_q.scale[0]) + plan_q.zero_point[0],
                    *(np.iinfo(m.inputs[0].dtype).min, np.iinfo(m.inputs[0].dtype).max))
        fast = fastimage.build(m, spec)(frames[0])  # the path predict() takes
        assert fast.dtype == m.inputs[0].dtype
        assert np.max(np.abs(fast.astype(np.int32) - q.astype(np.int32))) <= 1
        top = m.classify(frames[0], top_k=1)
        assert calls == [] and top[0].id == int(np.argmax(next(iter(ref_out[0].values()))[0]))


def test_float_input_keeps_the_reference_path(bundles, monkeypatch):
    with rt.load(bundles["float"]) as m:
        calls = []
        real = tasks.prepare_input
        monkeypatch.setattr(tasks, "prepare_input", lambda *a: calls.append(1) or real(*a))
        m.predict(_frames(1)[0])
        assert calls == [1]
