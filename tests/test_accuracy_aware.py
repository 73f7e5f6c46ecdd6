"""Accuracy-aware INT8 (auto_fallback): a digits model built so that one layer's output
carries a huge-range unit (a bias of 3000 that the next layer ignores) loses more than
5 points under plain INT8; the fallback keeps the sensitive layers in float and meets
max_drop, the manifest and report name them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("sklearn")

import edgeship.runtime as rt  # noqa: E402
from edgeship.converters import accuracy, convert  # noqa: E402
from edgeship.errors import ValidationFailedError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = tf.image.resize((d.images / 16.0).astype(np.float32)[..., None], (16, 16)).numpy()
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def outlier_model(data, tmp_path_factory):
    """Conv -> Dense 'hidden' (unit 0: constant 3000, ignored by 'logits') -> Dense 'logits'."""
    x, y = data
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
    m.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x[:1400], y[:1400], epochs=8, batch_size=32, verbose=0)
    w, b = (a.copy() for a in m.get_layer("hidden").get_weights())
    w[:, 0], b[0] = 0.0, 3000.0  # the outlier: one unit with a huge, constant activation
    m.get_layer("hidden").set_weights([w, b])
    wl, bl = (a.copy() for a in m.get_layer("logits").get_weights())
    wl[0, :] = 0.0  # ... which the float model ignores
    m.get_layer("logits").set_weights([wl, bl])
    path = tmp_path_factory.mktemp("outlier") / "outlier.keras"
    m.save(path)
    return str(path)


def _kw(data):
    x, y = data
    return dict(calib=x[:200], eval_data=(x[1400:], y[1400:]), calib_count=200)


@pytest.fixture(scope="module")
def plain(outlier_model, data, tmp_path_factory):
    return convert(outlier_model, tmp_path_factory.mktemp("plain") / "b", layer_errors=True, **_kw(data))


@pytest.fixture(scope="module")
def fallback(outlier_model, data, tmp_path_factory):
    return convert(outlier_model, tmp_path_factory.mktemp("fb") / "b", max_drop=1.0, auto_fallback=True, **_kw(data))


def _drop(result) -> float:
    v = result.manifest["validation"]["artifacts"]["model.int8.tflite"]
    return 100.0 * (v["source_accuracy"] - v["accuracy"])


def test_plain_int8_loses_more_than_five_points_and_fails_max_drop(plain, outlier_model, data, tmp_path):
    assert _drop(plain) > 5.0
    with pytest.raises(ValidationFailedError, match="max_drop"):
        convert(outlier_model, tmp_path / "b", max_drop=1.0, **_kw(data))
    assert not (tmp_path / "b").exists()


def test_layer_errors_rank_the_outlier_path_first(plain):
    errs = plain.manifest["validation"]["layer_errors"]["model.int8.tflite"]
    assert 1 <= len(errs) <= 10
    assert errs[0]["layer"] in ("hidden", "logits")
    assert errs[0]["sqnr_db"] < min(e["sqnr_db"] for e in errs[1:] if e["sqnr_db"] is not None)
    md = open(os.path.join(plain.bundle, "report.md"), encoding="utf-8").read()
    assert "## Layers with the largest quantization error" in md


def test_auto_fallback_keeps_the_sensitive_layer_in_float_and_meets_max_drop(fallback, plain, data):
    assert _drop(fallback) <= 1.0
    aa = fallback.manifest["settings"]["accuracy_aware"]["model.int8.tflite"]
    assert "hidden" in aa["kept_float"]  # the layer whose output carries the outlier
    assert aa["baseline_drop_points"] > 5.0
    drops = [a["drop_points"] for a in aa["attempts"]]
    assert drops[0] == pytest.approx(aa["baseline_drop_points"]) and drops[-1] <= 1.0
    assert len(aa["attempts"]) == len(aa["kept_float"]) + 1  # one layer more per attempt
    art = fallback.manifest["artifacts"][0]
    # size cost is recorded and real: float weights for the kept layers
    assert aa["size_cost_bytes"] == art["bytes"] - plain.manifest["artifacts"][0]["bytes"] > 0
    # integer I/O as asked, and the bundle runs on the device runtime
    assert art["io"] == "int8" and art["inputs"][0]["dtype"] == "int8"
    x, y = data
    with rt.load(fallback.bundle) as m:
        out = next(iter(m.run(x[1500:1600]).values()))
    assert np.mean(np.argmax(out, 1) == y[1500:1600]) >= 0.85
    md = open(os.path.join(fallback.bundle, "report.md"), encoding="utf-8").read()
    assert "## Accuracy-aware quantization" in md and "hidden" in md
    assert any("kept" in w and "hidden" in w for w in fallback.warnings)


def test_auto_fallback_that_cannot_meet_max_drop_fails_with_the_best_attempt(outlier_model, data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(accuracy, "MAX_ATTEMPTS", 1)  # only the top-ranked layer may be kept in float
    with pytest.raises(ValidationFailedError, match="Best:.*in float") as exc:
        convert(outlier_model, tmp_path / "b", max_drop=1.0, auto_fallback=True, **_kw(data))
    assert "Attempts:" in str(exc.value)
    assert not (tmp_path / "b").exists()


def test_auto_fallback_leaves_a_passing_artifact_alone(outlier_model, data, tmp_path):
    r = convert(outlier_model, tmp_path / "b", max_drop=60.0, auto_fallback=True, **_kw(data))
    assert "accuracy_aware" not in r.manifest["settings"]
