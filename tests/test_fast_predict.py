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
    # MobileNet-style input, pixel / 127.5 - 1 at an int8 step of ~1/127.5: a table near pixel - 128
    pre = {"size": [16, 16], "color": "rgb", "scale": 1.0, "mean": [127.5] * 3, "std": [127.5] * 3}
    calib = (rng.integers(0, 256, (64, 16, 16, 3)) / 127.5 - 1.0).astype(np.float32)
    calib[0, 0, 0], calib[0, 0, 1] = -1.0, 1.0  # both ends of the range
    out["mnet"] = edgeship.convert(m, str(root / "mnet"), calib=calib, io="int8", preprocess=pre).bundle
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


def test_default_path_is_within_one_step_and_exact_input_is_bit_exact(bundles):
    """A MobileNet-style table (pixel / 127.5 - 1) is within one step of ``pixel - 128`` but not equal to it:
    predict() compiles it to XOR 0x80 by default, and keeps the exact table with ``exact_input=True``."""
    frames = _frames(4) + _frames(2, 16, 16)
    with rt.load(bundles["mnet"]) as m:
        assert not m.exact_input
        spec = tasks.preprocess_spec(m)
        table = fastimage.engine_table(spec, m.inputs[0])
        fast = fastimage.build(m, spec, tolerance=1)
        assert fast.fast.map.kind == "affine" and fast.fast.map.xor == 0x80 and fast.fast.map.max_error == 1
        exact = fastimage.build(m, spec)
        assert exact.fast.map.kind == "lut1" and exact.fast.map.max_error == 0
        assert not np.array_equal(table[:, 0].astype(np.int32), np.arange(256) - 128)  # ties: not pixel - 128
        for f in frames:
            ref = np.asarray(exact(f), np.int32)
            got = np.asarray(fast(f), np.int32)
            assert np.abs(got - ref).max() <= 1  # to the quantization step
            assert (got != ref).any() or f.shape[:2] != (16, 16)
        m.predict(frames[0])
        assert m._fast.fast.map.kind == "affine"  # what predict() took
        approx = [m.predict(f) for f in frames]
        ref_run = [m.run(tasks.prepare_input(m, spec, f)) for f in frames]
    with rt.load(bundles["mnet"], exact_input=True) as m:
        assert m.exact_input
        got = [m.predict(f) for f in frames]
        assert m._fast.fast.map.kind == "lut1"
    for g, r, a in zip(got, ref_run, approx):
        for name in r:
            np.testing.assert_array_equal(g[name], r[name])  # exact_input: bit for bit with run()
            assert a[name].shape == r[name].shape and np.allclose(a[name], r[name], atol=0.05)


# -- the compiled pixel map: every kind equals its table ---------------------------------------------

def _tables():
    p = np.arange(256)
    rng = np.random.default_rng(7)
    return {
        "uint8 identity": (p.astype(np.uint8)[:, None].repeat(3, 1), "affine"),
        "int8 p - 128": ((p - 128).astype(np.int8)[:, None].repeat(3, 1), "affine"),
        "int8 clip(p - 128, -128, 126)": (np.clip(p - 128, -128, 126).astype(np.int8)[:, None].repeat(3, 1), "affine"),
        "uint8 clip(p, 16, 235)": (np.clip(p, 16, 235).astype(np.uint8)[:, None], "affine"),
        "int8 near p - 128 (one value off)": (np.where(p == 40, -87, p - 128).astype(np.int8)[:, None].repeat(3, 1),
                                             "lut1"),
        "int8 one table per channel": (rng.integers(-128, 128, (256, 3)).astype(np.int8), "lut"),
        "float32 shared": (np.repeat((p / 255.0).astype(np.float32)[:, None], 3, 1), "lut1"),
        "float32 per channel": (rng.normal(size=(256, 3)).astype(np.float32), "lut"),
    }


def test_pixel_map_tolerance_allows_one_step_never_two():
    import cv2  # noqa: PLC0415

    p = np.arange(256)
    one_off = np.where((p % 7 == 0) & (p > 0), p - 129, p - 128).astype(np.int8)[:, None]
    two_off = np.where(p == 40, p - 130, p - 128).astype(np.int8)[:, None]
    assert fastimage.PixelMap(one_off).kind == "lut1"  # the default stays exact
    pm = fastimage.PixelMap(one_off, tolerance=1)
    assert (pm.kind, pm.xor, pm.max_error) == ("affine", 0x80, 1)
    assert fastimage.PixelMap(two_off, tolerance=1).kind == "lut1"
    img = np.random.default_rng(2).integers(0, 256, (31, 17, 1), dtype=np.uint8)
    out = np.empty(img.shape, np.int8)
    np.copyto(out.view(np.uint8), img)
    pm.apply_in_place(cv2, out.view(np.uint8))
    diff = out.astype(np.int32) - one_off[img[..., 0], 0][..., None].astype(np.int32)
    assert np.abs(diff).max() == 1 and set(np.unique(diff)) <= {0, 1}


@pytest.mark.parametrize("name", list(_tables()))
def test_pixel_map_equals_its_table(name):
    import cv2  # noqa: PLC0415

    table, kind = _tables()[name]
    pm = fastimage.PixelMap(table)
    assert pm.kind == kind
    c = table.shape[1]
    img = np.random.default_rng(1).integers(0, 256, (37, 29, c), dtype=np.uint8)
    img[0, :c] = 0
    img[1, :c] = 255  # both ends of the table
    want = np.stack([table[img[..., k], k] for k in range(c)], axis=-1)
    out = np.empty(img.shape, table.dtype)
    if pm.bytes:
        u = out.view(np.uint8)
        np.copyto(u, img)
        pm.apply_in_place(cv2, u)
    else:
        pm.apply(cv2, img, out)
    np.testing.assert_array_equal(out, want)


class _Described:
    def __init__(self, shape, dtype, quantization):
        self.inputs = (rt.TensorSpec("x", tuple(shape), np.dtype(dtype), quantization),)
        self.manifest = None


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_affine_tables_take_the_in_place_path_and_equal_the_rule(layout):
    """``pixel - 128`` for an int8 input of scale 1: XOR 0x80 on the bytes, equal to the rule + quantization."""
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    spec = PreprocessSpec(size=(24, 20), scale=1.0, mean=(128.0,), std=(1.0,), layout=layout)
    q = rt.Quantization((1.0,), (0,))
    model = _Described((1,) + spec.sample_shape(spec.layout), np.int8, q)
    fast = fastimage.FastPreprocess.build(model, spec)
    assert fast.map.kind == "affine" and fast.map.xor == 0x80
    for f in _frames(3) + _frames(1, 24, 20):  # resized, and already at the model's size
        want = np.clip(np.rint(spec.to_input(f)) , -128, 127).astype(np.int8)
        np.testing.assert_array_equal(fast(f), want)


def test_predict_writes_into_the_engine_buffer_and_skips_resize_at_size(bundles, monkeypatch):
    import cv2  # noqa: PLC0415

    with rt.load(bundles["rgb"]) as m:
        spec = tasks.preprocess_spec(m)
        frames = _frames(2) + _frames(2, 16, 16)  # two resized, two already 16x16
        want = [m.run(tasks.prepare_input(m, spec, f)) for f in frames]
        backend = m._backend
        used = {"invoke": 0, "invoke_into": 0, "resize": 0}
        real_invoke, real_into, real_resize = backend.invoke, backend.invoke_into, cv2.resize

        def count(key, fn):
            def wrapped(*a, **k):
                used[key] += 1
                return fn(*a, **k)
            return wrapped

        monkeypatch.setattr(backend, "invoke", count("invoke", real_invoke))
        monkeypatch.setattr(backend, "invoke_into", count("invoke_into", real_into))
        monkeypatch.setattr(cv2, "resize", count("resize", real_resize))
        got = [m.predict(f) for f in frames]
        assert used == {"invoke": 0, "invoke_into": 4, "resize": 2}
        for g, w in zip(got, want):
            for name in w:
                np.testing.assert_array_equal(g[name], w[name])
        assert not np.shares_memory(got[0][m.outputs[0].name], got[1][m.outputs[0].name])
