"""Per-machine engine choice: `bench --all --save` records the fastest artifact x engine that keeps the
outputs; `load(backend="auto")` runs it and says why, and falls back to the static order otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import edgeship  # noqa: E402
from edgeship import runtime as rt  # noqa: E402
from edgeship.benchchoice import measure_and_save, pick  # noqa: E402
from edgeship.runtime import choices  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(digits_cnn, digits, tmp_path_factory):
    x, _ = digits
    res = edgeship.convert(digits_cnn, str(tmp_path_factory.mktemp("choice") / "b"), calib=x[:200],
                           precision="int8", io="float", formats=("tflite", "onnx"))
    return res.bundle


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESHIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _measured(rows):
    """A bench_all result with these (artifact, backend, p50_ms) rows (the timings are the input of the rule)."""
    return {"threads": None, "runs": 10, "combinations": [
        {"artifact": a, "backend": b, "delegate": None, "skipped": None, "fallback": False, "p50_ms": p,
         "runs_on": "cpu"} for a, b, p in rows]}


def test_no_record_means_the_static_order_and_says_so(bundle, cache):
    with rt.load(bundle, backend="auto") as m:
        assert m.info.backend == "litert" and m.artifact["file"] == "model.int8.tflite"
        assert m.info.chosen.startswith("static order: no measured choice")


def test_fastest_combination_that_agrees_is_saved_and_loaded(bundle, cache):
    res = _measured([("model.int8.tflite", "litert", 2.0), ("model.int8.onnx", "onnxruntime", 1.5),
                     ("model.int8.onnx", "tensorflow.lite", 9.0)])
    rec = measure_and_save(bundle, res)
    assert rec["choice"]["artifact"] == "model.int8.onnx" and rec["choice"]["backend"] == "onnxruntime"
    assert rec["choice"]["top1_agreement"] >= 0.99
    assert rec["default"] == {"artifact": "model.int8.tflite", "backend": "litert", "p50_ms": 2.0}
    assert os.path.dirname(rec["path"]) == str(cache / "choices")
    with rt.load(bundle, backend="auto") as m:
        assert m.info.backend == "onnxruntime" and m.artifact["file"] == "model.int8.onnx"
        assert m.info.chosen.startswith("measured: model.int8.onnx on onnxruntime: fastest of 3 measured")
        assert "with the source model at conversion" in m.info.chosen
        assert "1.500 ms vs 2.000 ms for the default" in m.info.chosen
        assert m.info.to_dict()["chosen"] == m.info.chosen
    with rt.load(bundle) as m:  # without "auto" nothing changes
        assert m.info.backend == "litert" and m.info.chosen == ""


def test_a_faster_combination_that_disagrees_is_not_chosen(bundle, cache):
    res = _measured([("model.int8.tflite", "litert", 2.0), ("model.int8.onnx", "onnxruntime", 1.5)])
    rec = pick(bundle, res, min_agreement=1.01)  # nothing can reach it: only the default remains
    assert rec["choice"]["backend"] == "litert"
    assert [c["passes"] for c in rec["candidates"]] == [False, False]
    assert "did not keep top-1 agreement >= 1.01" in rec["choice"]["reason"]


def test_a_record_that_no_longer_fits_is_ignored(bundle, cache):
    rec = measure_and_save(bundle, _measured([("model.int8.tflite", "litert", 2.0),
                                              ("model.int8.onnx", "onnxruntime", 1.0)]))
    data = json.loads(open(rec["path"]).read())
    for change, why in ((lambda d: d["machine"].update(cpus=999), "another machine"),
                        (lambda d: d["choice"].update(sha256="0" * 64), "no longer has"),
                        (lambda d: d["engine_versions"].update(onnxruntime="0.0.1"), "another version")):
        d = json.loads(json.dumps(data))
        change(d)
        with open(rec["path"], "w") as fh:
            json.dump(d, fh)
        with rt.load(bundle, backend="auto") as m:
            assert m.info.backend == "litert", why
            assert why in m.info.chosen


def test_bench_all_save_on_the_cli(bundle, cache):
    env = dict(os.environ, EDGESHIP_CACHE=str(cache), EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-m", "edgeship", "bench", bundle, "--all", "--save", "--runs", "20",
                        "--warmup", "2", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    saved = res["saved"]
    measured = {(r["artifact"], r["backend"]): r["p50_ms"] for r in saved["measured"]}
    assert ("model.int8.tflite", "litert") in measured and ("model.int8.onnx", "onnxruntime") in measured
    # never slower than the default by construction
    assert saved["choice"]["p50_ms"] <= saved["default"]["p50_ms"]
    with rt.load(bundle, backend="auto") as m:
        assert (m.artifact["file"], m.info.backend) == (saved["choice"]["artifact"], saved["choice"]["backend"])
        x = np.zeros((1, 8, 8, 1), np.float32)
        assert next(iter(m.run(x).values())).shape == (1, 10)


def test_save_needs_all_and_a_bundle(bundle, cache):
    p = subprocess.run([sys.executable, "-m", "edgeship", "bench", bundle, "--save"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "pass --all too" in p.stderr
    tfl = os.path.join(bundle, "model.int8.tflite")
    p = subprocess.run([sys.executable, "-m", "edgeship", "bench", tfl, "--all", "--save"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "needs a bundle folder" in p.stderr
    assert choices.lookup({"artifacts": []})[0] is None
