"""Bundles written by convert(): manifest schema (own validator and jsonschema), files, atomicity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

import edgeship.runtime as rt  # noqa: E402
from edgeship import manifest as man_mod  # noqa: E402
from edgeship.bundle import sha256_file, stale_temp_dirs  # noqa: E402
from edgeship.converters import convert  # noqa: E402
from edgeship.errors import BundleExistsError, ValidationFailedError  # noqa: E402

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def data(digits):
    return digits


@pytest.fixture(scope="module")
def model(digits_cnn):
    """The session's digits CNN (tests/conftest.py)."""
    return digits_cnn


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model, data):
    x, y = data
    root = tmp_path_factory.mktemp("bundles")
    npz = root / "calib.npz"
    np.savez(npz, x=x[1200:1500], y=y[1200:1500])
    res = convert(model, root / "digits", calib=str(npz), calib_count=100, seed=7,
                  labels=[str(i) for i in range(10)], task="classification", name="digits")
    return res


def test_manifest_follows_the_schema_both_validators(bundle):
    jsonschema = pytest.importorskip("jsonschema")
    path = os.path.join(bundle.bundle, "manifest.json")
    with open(path, encoding="utf-8") as fh:
        on_disk = json.load(fh)
    assert on_disk == json.loads(json.dumps(bundle.manifest))
    assert man_mod.validation_errors(on_disk) == []
    with open(man_mod.SCHEMA_PATH, encoding="utf-8") as fh:
        schema = json.load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(on_disk))
    assert errors == []
    assert man_mod.read(bundle.bundle)["name"] == "digits"


def test_manifest_contents(bundle):
    m = bundle.manifest
    assert m["source"]["format"] == "in_memory" and m["source"]["layout"] == "NHWC"
    assert "tensorflow" in m["source"]["framework_versions"]
    art = m["artifacts"][0]
    p = os.path.join(bundle.bundle, art["file"])
    assert art["sha256"] == sha256_file(p) and art["bytes"] == os.path.getsize(p) and 0 < art["gzip_bytes"]
    assert art["inputs"][0]["quantization"]["scale"] and art["outputs"][0]["dtype"] == "int8"
    assert m["labels"] == [str(i) for i in range(10)] and m["task"] == "classification"
    cal = m["calibration"]
    assert cal["kind"] == "npz" and cal["seed"] == 7 and cal["method"] == "minmax" and cal["file"] == "calibration.npz"
    assert m["pruning"] is None
    assert set(m["validation"]["artifacts"][art["file"]]) >= {"top1_agreement", "accuracy", "cosine", "sqnr_db"}
    assert m["validation"]["count"] > 0
    assert {"edgeship", "tensorflow", "numpy"} <= set(m["tools"])
    assert m["settings"]["precision"] == "int8" and m["settings"]["calib_count"] == 100


def test_calibration_file_holds_the_samples_used(bundle, data):
    x, y = data
    cal = bundle.manifest["calibration"]
    with np.load(os.path.join(bundle.bundle, "calibration.npz"), allow_pickle=False) as z:
        cx, cy = z["x"], z["y"]
    assert cx.shape == (cal["count"], 8, 8, 1) and cal["count"] <= 100 and cy.shape == (cal["count"],)
    pool = x[1200:1500].reshape(300, -1)
    for xi, yi in zip(cx[:10], cy[:10]):  # each sample comes from the given file, with its label
        i = int(np.argmin(np.abs(pool - xi.reshape(1, -1)).sum(axis=1)))
        assert np.array_equal(pool[i], xi.reshape(-1)) and y[1200 + i] == yi
    # held-out validation samples are not among the calibration samples
    assert bundle.manifest["validation"]["count"] + cal["count"] <= 300
    assert "held out" in bundle.manifest["validation"]["data"]


def test_report(bundle):
    text = open(os.path.join(bundle.bundle, "report.md"), encoding="utf-8").read()
    assert "model.int8.tflite" in text and "KiB" in text and "top-1 agreement" in text and "calibration" in text
    assert bundle.table().splitlines()[0].startswith("| artifact")


def test_runtime_loads_and_verifies_the_bundle(bundle, data):
    x, _ = data
    with rt.load(bundle.bundle) as m:
        out = next(iter(m.run(x[1500:1510]).values()))
    assert out.shape == (10, 10) and out.dtype == np.float32


def test_atomic_writes(tmp_path, model, data):
    x, y = data
    calib, ev = x[1200:1300], (x[1400:1600], y[1400:1600])
    out = tmp_path / "b"
    first = convert(model, out, calib=calib, eval_data=ev, calib_count=32)
    with pytest.raises(BundleExistsError):
        convert(model, out, calib=calib, eval_data=ev, calib_count=32)
    second = convert(model, out, calib=calib, eval_data=ev, precision="fp16", calib_count=32, force=True)
    assert sorted(os.listdir(out)) == ["calibration.npz", "manifest.json", "model.fp16.tflite", "report.html", "report.md"]
    assert second.manifest["artifacts"][0]["precision"] == "fp16" != first.manifest["artifacts"][0]["precision"]
    before = (out / "manifest.json").read_bytes()
    # a forced conversion that fails mid-way (artifact written, validation fails) keeps the old bundle
    with pytest.raises(ValidationFailedError):
        convert(model, out, calib=np.zeros((32, 8, 8, 1), np.float32), eval_data=ev, force=True)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(out)) == ["calibration.npz", "manifest.json", "model.fp16.tflite", "report.html", "report.md"]
    assert stale_temp_dirs(str(out)) == [] and [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    # a fresh target with a failure mid-conversion: no target, no temp folder
    fresh = tmp_path / "fresh"
    with pytest.raises(ValidationFailedError):
        convert(model, fresh, calib=calib * 0.05, eval_data=ev, max_drop=1)
    assert not fresh.exists() and stale_temp_dirs(str(fresh)) == []
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
