"""edgeship.calibration.load_samples: every source kind, determinism and the errors users hit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeship.calibration import CalibrationSet, load_samples
from edgeship.errors import CalibrationError, EdgeshipError
from edgeship.preprocess import ColorOrder, PreprocessSpec

SHAPE = (8, 8, 1)
SPEC = PreprocessSpec(size=(8, 8), color=ColorOrder.GRAY)


@pytest.fixture(scope="module")
def digits(digits):  # the session's digits (tests/conftest.py), first 120
    x, y = digits
    return x[:120], y[:120]


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, digits):
    cv2 = pytest.importorskip("cv2")
    x, y = digits
    root = tmp_path_factory.mktemp("pngs")
    for i in range(60):
        cls = root / f"class_{y[i]}"
        cls.mkdir(exist_ok=True)
        assert cv2.imwrite(str(cls / f"{i:03d}.png"), (x[i, :, :, 0] * 255).round().astype(np.uint8))
    (root / f"class_{y[0]}" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def test_folder_with_class_subfolders(png_folder, digits):
    s = load_samples(str(png_folder), input_shape=SHAPE, preprocess=SPEC, count=50, seed=0)
    assert isinstance(s, CalibrationSet)
    assert s.kind == "folder" and s.x.shape == (50, 8, 8, 1) and s.x.dtype == np.float32
    assert s.classes == tuple(sorted({p.name for p in png_folder.iterdir()}))
    assert s.y is not None and s.y.shape == (50,)
    # labels follow the folder names, and pixels round-trip through PNG + preprocessing
    x, y = digits
    for xi, yi in zip(s.x[:10], s.y[:10]):
        i = int(np.argmin(np.abs(x[:60] - xi).reshape(60, -1).sum(axis=1)))
        assert np.abs(x[i] - xi).max() < 1 / 255 + 1e-6
        assert s.classes[yi] == f"class_{y[i]}"


def test_folder_skips_undecodable_images_with_a_counted_warning(png_folder):
    s = load_samples(str(png_folder), input_shape=SHAPE, preprocess=SPEC, count=1000, seed=0)
    assert len(s) == 60 and s.skipped == 1
    assert any("skipped 1 image" in w for w in s.warnings)


def test_sampling_is_deterministic(png_folder):
    a = load_samples(str(png_folder), input_shape=SHAPE, preprocess=SPEC, count=20, seed=3)
    b = load_samples(str(png_folder), input_shape=SHAPE, preprocess=SPEC, count=20, seed=3)
    c = load_samples(str(png_folder), input_shape=SHAPE, preprocess=SPEC, count=20, seed=4)
    assert a.sha256 == b.sha256 and np.array_equal(a.x, b.x)
    assert a.sha256 != c.sha256


def test_npy_with_and_without_batch_axis_and_uint8(tmp_path, digits):
    x, _ = digits
    p = tmp_path / "x.npy"
    np.save(p, x[:30])
    s = load_samples(str(p), input_shape=SHAPE, count=100)
    assert s.kind == "npy" and s.x.shape == (30, 8, 8, 1) and s.y is None
    np.save(p, x[0])
    with pytest.raises(CalibrationError, match="holds 1 sample"):
        load_samples(str(p), input_shape=SHAPE, count=100)
    raw = (x[:20] * 255).round().astype(np.uint8)
    np.save(p, raw)
    s = load_samples(str(p), input_shape=SHAPE, preprocess=SPEC, count=100)
    assert s.x.dtype == np.float32 and 0.0 <= s.x.min() and s.x.max() <= 1.0
    assert np.allclose(s.x, raw / 255.0, atol=1e-6)


def test_npz_with_labels_bounded_by_count(tmp_path, digits):
    x, y = digits
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    s = load_samples(str(p), input_shape=SHAPE, count=40, seed=1)
    assert s.kind == "npz" and s.x.shape[0] == 40 and s.y.shape == (40,)
    for xi, yi in zip(s.x, s.y):  # labels stay paired with their samples
        i = int(np.argmin(np.abs(x - xi).reshape(len(x), -1).sum(axis=1)))
        assert y[i] == yi


def test_iterables_and_arrays(digits):
    x, y = digits
    s = load_samples(((x[i], y[i]) for i in range(30)), input_shape=SHAPE, count=100)
    assert s.kind == "iterable" and len(s) == 30 and np.array_equal(s.y, y[:30])
    s = load_samples([x[:10], x[10:25]], input_shape=SHAPE, count=100)  # batches
    assert len(s) == 25 and s.y is None
    s = load_samples(x, input_shape=SHAPE, count=16)
    assert len(s) == 16


def test_random_only_by_name():
    s = load_samples("random", input_shape=SHAPE, count=12, seed=0, allow_random=True)
    assert s.kind == "random" and s.x.shape == (12, 8, 8, 1)
    assert any("random" in w for w in s.warnings)
    with pytest.raises(CalibrationError, match="random"):
        load_samples("random", input_shape=SHAPE, count=12)


def test_errors_name_what_and_where(tmp_path, digits, png_folder):
    x, _ = digits
    missing = tmp_path / "nope"
    with pytest.raises(CalibrationError, match="does not exist"):
        load_samples(str(missing), input_shape=SHAPE, preprocess=SPEC)
    few = tmp_path / "few"
    (few / "a").mkdir(parents=True)
    import cv2

    for i in range(3):
        cv2.imwrite(str(few / "a" / f"{i}.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(CalibrationError) as ei:
        load_samples(str(few), input_shape=SHAPE, preprocess=SPEC)
    assert "3 image" in str(ei.value) and str(few) in str(ei.value) and "at least 8" in str(ei.value)
    p = tmp_path / "wrong.npy"
    np.save(p, np.zeros((20, 16, 16, 1), np.float32))
    with pytest.raises(CalibrationError, match=r"expected \(N, 8, 8, 1\)"):
        load_samples(str(p), input_shape=SHAPE)
    with pytest.raises(CalibrationError, match=r"16, 16"):
        load_samples(str(png_folder), input_shape=(16, 16, 1), preprocess=SPEC)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="cannot read"):
        load_samples(str(obj), input_shape=SHAPE)
    txt = tmp_path / "data.csv"
    txt.write_text("1,2,3")
    with pytest.raises(CalibrationError, match="unknown kind"):
        load_samples(str(txt), input_shape=SHAPE)
    with pytest.raises(CalibrationError, match="no calibration data"):
        load_samples(None, input_shape=SHAPE)
    assert issubclass(CalibrationError, EdgeshipError) and issubclass(CalibrationError, ValueError)


def test_module_imports_numpy_only():
    import subprocess
    import sys

    code = (
        "import sys; import edgeship.calibration; "
        "bad = [m for m in ('tensorflow', 'cv2', 'keras', 'tf_keras', 'onnx') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
