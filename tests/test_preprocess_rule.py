"""One image -> tensor rule: ``PreprocessSpec.to_input`` is the reference, and the stream's
``FastPreprocess`` (resize + LUT) equals it bit for bit on real photographs.

The images are scikit-learn's sample photographs (427x640 RGB), downscaled and
upscaled to the model size, with every colour order, both layouts, mean/std,
integer spec dtypes and a quantized (int8/uint8) model input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
datasets = pytest.importorskip("sklearn.datasets")

from edgeship.errors import InputError  # noqa: E402
from edgeship.preprocess import ColorOrder, Interpolation, Layout, PreprocessSpec, ResizeMode  # noqa: E402
from edgeship.runtime import Quantization, TensorSpec  # noqa: E402
from edgeship.runtime.stream import FastPreprocess  # noqa: E402
from edgeship.runtime.tasks import input_layout, prepare_input, preprocess_spec  # noqa: E402


@pytest.fixture(scope="module")
def photos():
    """The two sample photographs as OpenCV gives images (BGR uint8), plus a small crop (for upscaling)."""
    out = []
    for name in ("china.jpg", "flower.jpg"):
        rgb = datasets.load_sample_image(name)
        out.append(np.ascontiguousarray(rgb[:, :, ::-1]))
    out.append(np.ascontiguousarray(out[0][100:140, 200:250]))  # 40x50: enlarged to the model size
    return out


class Described:
    """What FastPreprocess and the task helpers read of a model: its input tensors and manifest.

    Nothing is run here (these tests compare preprocessing, not inference), so
    no engine is needed; the input is described with the runtime's own
    ``TensorSpec``/``Quantization``.
    """

    def __init__(self, shape, dtype=np.float32, quantization=None, manifest=None):
        self.inputs = (TensorSpec("x", tuple(shape), np.dtype(dtype), quantization),)
        self.manifest = manifest


def _quantize(x, q: Quantization, dtype):
    """``Model.run``'s input quantization: clip(round(x / scale) + zero_point)."""
    info = np.iinfo(dtype)
    v = np.rint(np.divide(x, np.float32(q.scale[0]), dtype=np.float32)) + np.float32(q.zero_point[0])
    return np.clip(v, info.min, info.max).astype(dtype)


CASES = [
    # (color, layout, mean, std, spec dtype)
    (ColorOrder.RGB, Layout.NHWC, (0.0,), (1.0,), "float32"),
    (ColorOrder.BGR, Layout.NHWC, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "float32"),
    (ColorOrder.RGB, Layout.NCHW, (0.5,), (0.5,), "float32"),
    (ColorOrder.GRAY, Layout.NHWC, (0.1,), (0.3,), "float32"),
    (ColorOrder.GRAY, Layout.NCHW, (0.0,), (1.0,), "float32"),
]


@pytest.mark.parametrize("interpolation", list(Interpolation))
@pytest.mark.parametrize("color,layout,mean,std,dtype", CASES)
def test_fast_path_equals_the_rule_bit_for_bit_float(photos, color, layout, mean, std, dtype, interpolation):
    spec = PreprocessSpec(size=(48, 64), color=color, layout=layout, mean=mean, std=std, dtype=dtype,
                          interpolation=interpolation)
    model = Described((None,) + spec.sample_shape(layout))
    fast = FastPreprocess.build(model, spec)
    assert fast is not None
    for img in photos:
        want = spec.to_input(img)
        got = fast(img)
        assert got.shape == want.shape == (1,) + spec.sample_shape(layout) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine_dtype,scale,zp", [(np.int8, 1 / 255, -128), (np.uint8, 1 / 255, 0),
                                                   (np.int8, 0.0173, 3)])
@pytest.mark.parametrize("layout", [Layout.NHWC, Layout.NCHW])
def test_fast_path_folds_the_models_quantization(photos, engine_dtype, scale, zp, layout):
    spec = PreprocessSpec(size=(40, 40), layout=layout, mean=(0.2,), std=(0.7,), interpolation="linear")
    q = Quantization((scale,), (zp,))
    model = Described((1,) + spec.sample_shape(layout), engine_dtype, q)
    fast = FastPreprocess.build(model, spec)
    for img in photos:
        want = _quantize(spec.to_input(img), q, engine_dtype)
        got = fast(img)
        assert got.dtype == np.dtype(engine_dtype)
        # same float32 operations in the same order: bit for bit (1 LSB is the documented bound)
        assert int(np.max(np.abs(got.astype(np.int32) - want.astype(np.int32)))) <= 1
        np.testing.assert_array_equal(got, want)


def test_integer_spec_dtype_passes_through_a_model_of_that_dtype(photos):
    spec = PreprocessSpec(size=(32, 32), scale=1.0, dtype="uint8")
    model = Described((1, 32, 32, 3), np.uint8, Quantization((1 / 255,), (0,)))
    fast = FastPreprocess.build(model, spec)
    for img in photos:
        want = spec.to_input(img)
        assert want.dtype == np.uint8
        np.testing.assert_array_equal(fast(img), want)


def test_fast_path_declines_what_it_does_not_implement():
    base = PreprocessSpec(size=(32, 32))
    assert FastPreprocess.build(Described((1, 32, 32, 3)), dataclasses.replace(base, resize=ResizeMode.LETTERBOX)) is None
    assert FastPreprocess.build(Described((1, 16, 16, 3)), base) is None  # the spec does not fit the input
    per_channel = Quantization((0.1, 0.2, 0.3), (0, 0, 0), axis=3)
    assert FastPreprocess.build(Described((1, 32, 32, 3), np.int8, per_channel), base) is None


def test_the_model_side_of_the_rule_reads_the_layout(photos):
    """A manifest-less NCHW input (a bare PyTorch export) is NCHW; a manifest's source layout wins."""
    bare = Described((None, 3, 24, 24))
    spec = preprocess_spec(bare)
    assert input_layout(bare) is Layout.NCHW and spec.layout is Layout.NCHW and spec.size == (24, 24)
    x = prepare_input(bare, spec, photos[0])
    assert x.shape == (1, 3, 24, 24)
    # a bundle whose spec is NHWC but whose source model takes NCHW: transposed once, by the rule
    bundle = Described((1, 3, 24, 24), manifest={"source": {"layout": "NCHW"},
                                                 "preprocessing": {"size": [24, 24], "layout": "NHWC"}})
    y = prepare_input(bundle, preprocess_spec(bundle), photos[0])
    np.testing.assert_array_equal(y, x)
    fast = FastPreprocess.build(bundle, preprocess_spec(bundle))
    np.testing.assert_array_equal(fast(photos[0]), x)


def test_parse_takes_defaults_from_the_models_real_layout():
    """``--preprocess`` without size= on an NCHW model: the size comes from H and W, not from NHWC positions."""
    default = PreprocessSpec.default_for((None, 3, 16, 20))
    spec = PreprocessSpec.parse("mean=0.5,std=0.5", default=default)
    assert spec.size == (16, 20) and spec.layout is Layout.NCHW and spec.mean == (0.5,)
    spec.check_input((None, 3, 16, 20))
    with pytest.raises(InputError, match="--preprocess gives NCHW samples shaped"):
        PreprocessSpec.parse("size=224x224", default=default).check_input((None, 3, 16, 20), what="--preprocess")
    gray = PreprocessSpec.default_for((1, 28, 28, 1))
    assert PreprocessSpec.parse("scale=1/127.5", default=gray).color is ColorOrder.GRAY


def test_spec_round_trips_and_refuses_bad_values():
    spec = PreprocessSpec(size=(8, 12), layout="NCHW", interpolation="linear", color="bgr")
    assert spec.layout is Layout.NCHW and spec.color is ColorOrder.BGR
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert "interpolation" not in PreprocessSpec(size=(8, 8)).to_dict()  # the default keeps old manifests identical
    for bad in ({"size": (0, 8)}, {"size": (8, 8), "layout": "other"}, {"size": (8, 8), "dtype": "float64"},
                {"size": (8, 8), "interpolation": "cubic"}):
        with pytest.raises(InputError):
            PreprocessSpec(**bad)


def test_normalize_is_the_formula_in_either_layout(photos):
    """Calibration arrays of raw uint8 pixels go through the same formula as decoded images."""
    spec = PreprocessSpec(size=(16, 16), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    nhwc = np.stack([cv2.resize(p, (16, 16), interpolation=cv2.INTER_AREA)[:, :, ::-1] for p in photos])
    want = np.concatenate([spec.to_input(p) for p in photos])
    np.testing.assert_array_equal(spec.normalize(nhwc), want)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(spec.normalize(nchw, "NCHW"), want.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(spec.normalize(nchw[0], Layout.NCHW), want[0].transpose(2, 0, 1))
