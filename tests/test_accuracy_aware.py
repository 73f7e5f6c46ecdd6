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
from edgeship.converters import convert, refine as accuracy  # noqa: E402
from edgeship.errors import ValidationFailedError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(digits16):  # the session's digits at 16x16, shuffled with seed 0 (tests/conftest.py)
    return digits16["x"], digits16["y"]


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


# -- ONNX: per-node error with onnxruntime, nodes kept in float via exclude -------------------


@pytest.fixture(scope="module")
def onnx_outlier(tmp_path_factory):
    """An ONNX MLP on 8x8 digits (Gemm 'pre' -> Relu -> Gemm 'hidden' -> Relu -> Gemm 'logits'),
    trained with scikit-learn; unit 0 of 'hidden' is a constant 3000 that 'logits' ignores."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    clf = MLPClassifier((48, 32), max_iter=400, random_state=0).fit(x[:1400], y[:1400])
    w = [a.astype(np.float32).copy() for a in clf.coefs_]
    b = [a.astype(np.float32).copy() for a in clf.intercepts_]
    w[1][:, 0], b[1][0] = 0.0, 3000.0  # the outlier unit in 'hidden'
    w[2][0, :] = 0.0  # ... ignored by 'logits'
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["pre_out"], name="pre"),
        helper.make_node("Relu", ["pre_out"], ["pre_relu_out"], name="pre_relu"),
        helper.make_node("Gemm", ["pre_relu_out", "w1", "b1"], ["hidden_out"], name="hidden"),
        helper.make_node("Relu", ["hidden_out"], ["hidden_relu_out"], name="hidden_relu"),
        helper.make_node("Gemm", ["hidden_relu_out", "w2", "b2"], ["logits"], name="logits"),
    ]
    inits = [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(w)]
    inits += [numpy_helper.from_array(a, f"b{i}") for i, a in enumerate(b)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("onnx_outlier") / "mlp.onnx"
    onnx.save(m, str(path))
    return str(path), x, y


def _onnx_eval(x, y, source_accuracy):
    import onnxruntime as ort

    def evaluate(path):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        out = np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        return {"accuracy": float(np.mean(np.argmax(out, -1) == y)), "source_accuracy": source_accuracy}

    return evaluate


def test_onnx_auto_fallback_excludes_the_outlier_nodes_and_meets_max_drop(onnx_outlier, tmp_path):
    path, x, y = onnx_outlier
    xe, ye = x[1400:], y[1400:]
    source = _onnx_eval(xe, ye, None)(path)["accuracy"]
    assert source > 0.9
    evaluate = _onnx_eval(xe, ye, source)
    errors = accuracy.OnnxNodeErrors(path, x[:200], workdir=str(tmp_path))
    # the outlier tensor (hidden's output, through its Relu) ranks first by local SQNR
    assert errors.layers[0].node in ("hidden", "hidden_relu"), [e.to_dict() for e in errors.layers]
    top = errors.top(10)
    assert top[0]["sqnr_db"] < min(e["sqnr_db"] for e in top[1:] if e["sqnr_db"] is not None)
    plain = evaluate(errors.plain_path)
    plain_drop = 100 * (source - plain["accuracy"])
    assert plain_drop > 5.0, plain

    res = accuracy.onnx_fallback(errors, evaluate, max_drop=1.0,
                                 baseline={"drop_points": plain_drop, "accuracy": plain["accuracy"]})
    assert res.ok, res.attempts
    assert res.attempts[-1]["drop_points"] <= 1.0 and res.attempts[0]["drop_points"] == plain_drop
    assert "hidden" in res.kept_float or "logits" in res.kept_float
    assert "pre" not in res.kept_float and "pre_relu" not in res.kept_float  # the first layer stays INT8
    assert len(res.attempts) <= 4
    import onnx

    q = onnx.load(res.model)
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # still an INT8 model, not all float

    # one attempt only, forced to fail: the best attempt is reported with ok=False
    res1 = accuracy.onnx_fallback(errors, evaluate, max_drop=-1.0, baseline={"drop_points": plain_drop},
                                  max_attempts=1)
    assert not res1.ok and len(res1.attempts) == 2 and res1.model is not None


def test_convert_onnx_auto_fallback_keeps_nodes_in_float_and_meets_max_drop(onnx_outlier, tmp_path):
    path, x, y = onnx_outlier
    kw = dict(calib=x[:200], eval_data=(x[1400:], y[1400:]), formats=("onnx",), max_drop=1)
    with pytest.raises(ValidationFailedError, match="max_drop"):
        convert(path, tmp_path / "plain", **kw)
    assert not (tmp_path / "plain").exists()

    r = convert(path, tmp_path / "fb", auto_fallback=True, **kw)
    fname = "model.int8.onnx"
    aa = r.manifest["settings"]["accuracy_aware"][fname]
    assert "qdq_loss_debug" in aa["method"]
    assert aa["kept_float"] and set(aa["kept_float"]) & {"hidden", "hidden_relu", "logits"}
    assert aa["baseline_drop_points"] > 1.0 and aa["attempts"][-1]["drop_points"] <= 1.0
    v = r.manifest["validation"]["artifacts"][fname]
    assert 100.0 * (v["source_accuracy"] - v["accuracy"]) <= 1.0
    art = next(a for a in r.manifest["artifacts"] if a["file"] == fname)
    assert art["precision"] == "int8" and any("accuracy-aware" in n for n in art["notes"])
    import onnx

    q = onnx.load(os.path.join(r.bundle, fname))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # still INT8 outside the kept nodes
    assert os.path.getsize(os.path.join(r.bundle, fname)) == art["bytes"]
    assert any("kept" in w for w in r.warnings)
