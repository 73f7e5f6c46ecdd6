"""What keeps ``convert()``'s memory down (issue 15, "Conversion memory"); the figures are in
``benchmarks/bench_convert_memory.py``, not here (no memory thresholds in tests).

* validation runs with no TFLiteConverter left alive, on float32 calibration/validation
  arrays and float32 reference outputs, even when the user hands float64 data;
* the Keras source runs through one traced graph, in batches, with the eager model's outputs.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from edgeship.converters import convert, registry, stages  # noqa: E402
from edgeship.converters.sources import keras as keras_sources  # noqa: E402

pytestmark = pytest.mark.slow  # converts


def _live_converters() -> list:
    from tensorflow.lite.python.lite import TFLiteConverterBase  # noqa: PLC0415

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, TFLiteConverterBase)]


def test_validation_sees_float32_data_and_no_live_converter(digits, digits_cnn_file, tmp_path, monkeypatch):
    x, _ = digits
    calib = np.asarray(x[1200:1300], np.float64)  # a user's float64 array
    seen: dict = {}
    real_validate = stages.validate

    def spying_validate(plan, entry, w, reference, data, source_layout, warnings):
        seen["converters"] = len(_live_converters())
        seen["calib"] = data.calib.x.dtype
        seen["val"] = data.val.x.dtype
        seen["reference"] = {r.dtype for r in reference}
        return real_validate(plan, entry, w, reference, data, source_layout, warnings)

    monkeypatch.setattr(stages, "validate", spying_validate)
    res = convert(digits_cnn_file, tmp_path / "b", calib=calib, precision="int8", calib_count=60, seed=0)
    assert seen == {"converters": 0, "calib": np.float32, "val": np.float32, "reference": {np.dtype(np.float32)}}
    assert res.manifest["artifacts"][0]["precision"] == "int8"
    assert res.manifest["validation"]  # validation really ran on the artifact
    assert _live_converters() == []
    saved = np.load(os.path.join(res.bundle, "calibration.npz"))["x"]
    assert saved.dtype == np.float32


def test_keras_source_predict_is_batched_graph_with_eager_outputs(digits, digits_cnn, digits_cnn_file):
    x, _ = digits
    sample = np.asarray(x[:19], np.float64)  # not a multiple of the batch; float64 in
    _, loader = registry.find_loader(digits_cnn_file)
    source = loader(digits_cnn_file, input_shape=None, allow_legacy_h5=False, allow_unsafe=False)
    assert keras_sources.PREDICT_BATCH < 19
    first = source.predict(sample)
    again = source.predict(sample[:5], batch=2)
    eager = np.asarray(digits_cnn(np.asarray(sample, np.float32), training=False))
    assert len(first) == 1 and first[0].dtype == np.float32 and first[0].shape == (19, 10)
    np.testing.assert_allclose(first[0], eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again[0], eager[:5], rtol=1e-5, atol=1e-6)
