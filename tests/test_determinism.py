"""Converting the same model with the same data twice gives the same bundle content.

Two conversions of one saved Keras model with the same calibration array,
seed and settings, into two folders, at different times: every artifact's
bytes (sha256) and the manifest's ``content_hash`` are equal, while
``created`` may differ (the hash ignores it). A different calibration set must
change the hash (it is not a constant).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from edgeship import bundle as _bundle  # noqa: E402
from edgeship.converters import convert  # noqa: E402
from edgeship.converters.convert import content_hash  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")])
    p = tmp_path_factory.mktemp("det") / "m.keras"
    m.save(p)
    return str(p)


def _calib(seed):
    return np.random.default_rng(seed).random((32, 8, 8, 1), dtype=np.float32)


def test_same_model_same_data_same_content(tmp_path, model_path):
    a = convert(model_path, tmp_path / "a", calib=_calib(0), labels=[f"c{i}" for i in range(5)])
    time.sleep(1.1)  # so that "created" differs
    b = convert(model_path, tmp_path / "b", calib=_calib(0), labels=[f"c{i}" for i in range(5)])
    ma, mb = a.manifest, b.manifest
    assert [x["sha256"] for x in ma["artifacts"]] == [x["sha256"] for x in mb["artifacts"]], \
        "TFLite bytes differ between two identical conversions"
    assert ma["content_hash"].startswith("sha256:") and ma["content_hash"] == mb["content_hash"]
    assert ma["created"] != mb["created"]
    # the hash is recomputable from the manifest on disk and matches the files
    from edgeship import manifest as _manifest

    on_disk = _manifest.read(a.bundle)
    assert content_hash(on_disk) == on_disk["content_hash"]
    for art in on_disk["artifacts"]:
        _bundle.verify_file(a.bundle, art)
    # different calibration data -> different INT8 parameters -> different hash
    c = convert(model_path, tmp_path / "c", calib=_calib(1) * 3, labels=[f"c{i}" for i in range(5)])
    assert c.manifest["content_hash"] != ma["content_hash"]
    # labels are part of the content
    m2 = dict(on_disk, labels=["x"] * 5)
    assert content_hash(m2) != on_disk["content_hash"]
