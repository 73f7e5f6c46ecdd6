"""Outputs that mix quantities of very different ranges (box coordinates beside scores).

A full-INT8 TFLite output tensor has one scale: with boxes in [0, 300] beside
sigmoid scores in [0, 1] in the same tensor, the scores land on one or two int8
levels while the overall cosine and max error (dominated by the boxes) look fine.
Validation must detect the case and say which channels were lost.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgeship.converters.validate import mixed_range_warnings, mixed_ranges

# -- the detector on arrays (fast) -----------------------------------------------------------


def _boxes_scores(n=64, anchors=10, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0, 300, (n, anchors, 4)), rng.uniform(0, 1, (n, anchors, 2))], axis=-1)


def test_per_tensor_quantization_crushes_scores_and_is_named():
    ref = _boxes_scores()
    step = 300 / 255  # one int8 scale for the whole tensor
    cand = np.round(ref / step) * step
    entry = mixed_ranges(ref, cand)
    assert entry is not None and entry["shape"] == [10, 6]
    wide, narrow = entry["groups"]
    assert wide["channels"] == [0, 1, 2, 3] and not wide["lossy"] and wide["range"][1] > 250
    assert narrow["channels"] == [4, 5] and narrow["lossy"] and narrow["max_rel_error"] > 0.3
    assert 0 <= narrow["range"][0] and narrow["range"][1] <= 1
    msgs = mixed_range_warnings(entry, output=0)
    assert len(msgs) == 1 and "channels 4-5" in msgs[0] and "channels 0-3" in msgs[0]
    json.dumps(entry)  # goes into the manifest as is


def test_mixed_but_well_quantized_is_reported_without_warning():
    ref = _boxes_scores()
    cand = ref + np.random.default_rng(1).normal(0, 1e-3, ref.shape)
    entry = mixed_ranges(ref, cand)
    assert entry is not None and not any(g["lossy"] for g in entry["groups"])
    assert mixed_range_warnings(entry) == []


@pytest.mark.parametrize("case", ["softmax", "similar", "spread", "one-channel", "constant-channel"])
def test_not_mixed(case):
    rng = np.random.default_rng(0)
    if case == "softmax":  # a classifier's probabilities: one quantity, even with a dead class
        ref = rng.dirichlet(np.full(10, 0.1), 200)
        ref[:, 3] = 1e-7
        ref /= ref.sum(1, keepdims=True)
    elif case == "similar":
        ref = rng.normal(0, 1, (100, 8)) * np.arange(1, 9)
    elif case == "spread":  # ranges from 1 to 1000 but no gap between quantities
        ref = rng.normal(0, 1, (100, 16)) * np.geomspace(1, 1000, 16)
    elif case == "one-channel":
        ref = rng.normal(0, 1, (100, 1))
    else:  # a constant channel has no range to lose
        ref = rng.normal(0, 1, (100, 4))
        ref[:, 2] = 5.0
    assert mixed_ranges(ref, ref * 0.9) is None


# -- end to end: a real Keras model through convert() ------------------------------------------

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from edgeship.converters import convert  # noqa: E402


@pytest.fixture(scope="module")
def detector_like(tmp_path_factory):
    """Features -> 4 anchors x [y1, x1, y2, x2 (0..300), score_a, score_b (sigmoid)] in one tensor."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="features")
    h = keras.layers.Dense(32, activation="relu")(inp)
    boxes = keras.layers.Dense(16, activation="sigmoid")(h)
    boxes = keras.layers.Rescaling(300.0)(boxes)
    boxes = keras.layers.Reshape((4, 4))(boxes)
    scores = keras.layers.Dense(8, activation="sigmoid")(h)
    scores = keras.layers.Reshape((4, 2))(scores)
    out = keras.layers.Concatenate(axis=-1, name="detections")([boxes, scores])
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1.5, (160, 16))).astype(np.float32)
    d = tmp_path_factory.mktemp("mixed")
    path = d / "det.keras"
    model.save(path)
    ref = model.predict(x, verbose=0)
    assert ref[..., :4].max() > 200 and ref[..., 4:].max() <= 1  # really boxes beside scores
    return str(path), x


def test_int8_tflite_names_the_crushed_score_channels(tmp_path, detector_like):
    path, x = detector_like
    # task "other": nothing tells convert these are detections, so every op is quantized (the premise)
    res = convert(path, tmp_path / "b", calib=x, precision="int8", io="float", calib_count=96, task="other")
    art = res.manifest["artifacts"][0]
    assert art["file"] == "model.int8.tflite"
    assert art["outputs"][0]["quantization"] is None  # float I/O: the output is dequantized at the end ...
    # ... from ONE int8 tensor holding boxes and scores together, with one scale (the premise)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.path.join(res.bundle, art["file"]))
    (deq,) = [op for op in it._get_ops_details() if op["op_name"] == "DEQUANTIZE"
              and it.get_tensor_details()[op["outputs"][0]]["name"] == art["outputs"][0]["name"]] or [None]
    assert deq is not None, "no DEQUANTIZE feeds the float output"
    q_in = it.get_tensor_details()[deq["inputs"][0]]
    assert q_in["dtype"] == np.int8 and tuple(q_in["shape"][-2:]) == (4, 6)
    assert len(q_in["quantization_parameters"]["scales"]) == 1
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    assert v["cosine"] > 0.99  # the overall metric looks fine ...
    (entry,) = v["mixed_ranges"]  # ... but the scores were crushed, and the manifest says so
    assert entry["output"] == 0 and entry["shape"] == [4, 6]
    by = {tuple(g["channels"]): g for g in entry["groups"]}
    assert by[(4, 5)]["lossy"] and by[(4, 5)]["max_rel_error"] > 0.2
    assert not by[(0, 1, 2, 3)]["lossy"]
    warn = [w for w in res.warnings if "channels 4-5" in w]
    assert len(warn) == 1 and warn[0].startswith("model.int8.tflite: output 0") and "channels 0-3" in warn[0]
    # the manifest on disk (schema-checked when written) carries the entry too
    with open(os.path.join(res.bundle, "manifest.json")) as fh:
        on_disk = json.load(fh)
    assert on_disk["validation"]["artifacts"]["model.int8.tflite"]["mixed_ranges"] == v["mixed_ranges"]


def test_int8_onnx_qdq_output_is_checked_too(tmp_path, detector_like):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    path, x = detector_like
    res = convert(path, tmp_path / "b", calib=x, precision="int8", io="float", formats=("onnx",), calib_count=96,
                  task="other")
    v = res.manifest["validation"]["artifacts"]["model.int8.onnx"]
    groups = {tuple(g["channels"]): g for g in v["mixed_ranges"][0]["groups"]}
    assert groups[(4, 5)]["lossy"]
    assert any(w.startswith("model.int8.onnx: output 0: channels 4-5") for w in res.warnings)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_detection_task_keeps_the_head_float_so_scores_survive(tmp_path, detector_like, fmt):
    """The fix for the premise above: with task detection the decode head (down to the last
    learned layers) stays float, so the score channels are no longer crushed."""
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
    path, x = detector_like
    res = convert(path, tmp_path / "b", calib=x, precision="int8", io="float", formats=(fmt,), calib_count=96,
                  task="detection")
    v = res.manifest["validation"]["artifacts"][f"model.int8.{fmt}"]
    groups = {tuple(g["channels"]): g for g in (v.get("mixed_ranges") or [{"groups": []}])[0]["groups"]}
    assert not groups.get((4, 5), {}).get("lossy", False)
    assert not any("channels 4-5" in w for w in res.warnings)
    key = "tflite_detection_head" if fmt == "tflite" else "onnx_quantization"
    assert res.manifest["settings"].get(key), f"settings.{key} records the float head"


def test_fp32_of_the_same_model_is_mixed_but_not_lossy(tmp_path, detector_like):
    path, x = detector_like
    res = convert(path, tmp_path / "b", calib=x, precision="fp32", calib_count=96, task="detection")
    v = res.manifest["validation"]["artifacts"]["model.fp32.tflite"]
    assert not any(g["lossy"] for g in v["mixed_ranges"][0]["groups"])
    assert not any("channels 4-5" in w for w in res.warnings)


@pytest.mark.slow
def test_classifier_has_no_mixed_ranges_entry(tmp_path):
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.Dense(16, activation="relu")(inp))
    model = keras.Model(inp, out)
    x = np.random.default_rng(1).normal(0, 1, (80, 8)).astype(np.float32)
    res = convert(model, tmp_path / "b", calib=x, precision="int8", calib_count=48)
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    assert "mixed_ranges" not in v
