"""ONNX magnitude pruning on the initializers: sparsity, N:M structure, accuracy cost.

The classifier is a real one: an sklearn MLP trained on the digits set, written
as an ONNX graph (Gemm + MatMul) by hand, so no TensorFlow is needed here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeship.converters.prune import PruneOptionError, check_n_m  # noqa: E402
from edgeship.converters.prune_onnx import onnx_accuracy_cost, prune_onnx  # noqa: E402
from edgeship.errors import EdgeshipError, ModelFormatError, UnsupportedModelError  # noqa: E402


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: few iterations on purpose
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=120, random_state=0).fit(xtr, ytr)
    w1, w2 = (c.astype(np.float32) for c in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    inits = [
        numpy_helper.from_array(w1.T.copy(), "w1"),  # Gemm transB=1: (N, K)
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),  # MatMul B: (K, N)
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["logits"]),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    onnx.save(m, str(path))
    return path, xte, yte


def _conv_model(tmp_path, cin=8):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, cin, 3, 3)).astype(np.float32)
    w0 = rng.normal(size=(cin, 3, 3, 3)).astype(np.float32)  # first conv: 3 input channels
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w, "w")])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_unstructured_sparsity_per_layer_and_accuracy_cost(digits_mlp, tmp_path):
    src, xte, yte = digits_mlp
    dst = tmp_path / "mlp.p50.onnx"
    info = prune_onnx(src, dst, sparsity=0.5)
    assert info["target"] == 0.5 and info["structure"] is None
    assert {r["op"] for r in info["layers"]} == {"Gemm", "MatMul"}
    w = _weights(dst)
    for r in info["layers"]:
        assert abs(r["achieved"] - 0.5) < 0.01
        assert abs(np.mean(w[r["initializer"]] == 0) - r["achieved"]) < 1e-9
    # biases untouched
    assert np.count_nonzero(w["b1"]) == w["b1"].size
    cost = onnx_accuracy_cost(src, dst, xte, yte)
    assert cost["source_accuracy"] > 0.9
    assert cost["drop_points"] < 5.0  # 50% of an MLP, without fine-tuning
    assert cost["top1_agreement"] > 0.9
    # the kept weights are the large ones
    orig = _weights(src)["w2"]
    kept = w["w2"] != 0
    assert np.abs(orig[kept]).min() >= np.abs(orig[~kept]).max() - 1e-7


def test_n_m_structure_along_input_channels(digits_mlp, tmp_path):
    src, _xte, _yte = digits_mlp
    dst = tmp_path / "mlp.24.onnx"
    info = prune_onnx(src, dst, structure="2:4")
    w = _weights(dst)
    by_init = {r["initializer"]: r for r in info["layers"]}
    assert by_init["w1"]["axis"] == 1 and by_init["w2"]["axis"] == 0  # K axis of Gemm(transB) / MatMul
    assert check_n_m(w["w1"], 2, 4, axis=1)
    assert check_n_m(w["w2"], 2, 4, axis=0)
    assert all(abs(r["achieved"] - 0.5) < 1e-3 for r in info["layers"])


@pytest.mark.slow
def test_conv_n_m_skips_indivisible_first_layer(tmp_path):
    src = _conv_model(tmp_path)
    dst = tmp_path / "conv.24.onnx"
    info = prune_onnx(src, dst, structure="2:4")
    assert [r["name"] for r in info["layers"]] == ["conv1"]
    assert info["skipped"][0]["name"] == "conv0" and "multiple of 4" in info["skipped"][0]["reason"]
    w = _weights(dst)
    assert check_n_m(w["w"], 2, 4, axis=1)
    assert np.count_nonzero(w["w0"]) == w["w0"].size
    # unstructured 75% touches both
    info = prune_onnx(src, tmp_path / "conv.75.onnx", sparsity=0.75)
    assert [round(r["achieved"], 2) for r in info["layers"]] == [0.75, 0.75]


def test_bad_options_and_inputs(digits_mlp, tmp_path):
    src, _x, _y = digits_mlp
    for kwargs in ({"sparsity": 1.0}, {"sparsity": 0}, {"structure": "4:2"}, {"structure": "2-4"},
                   {"sparsity": 0.75, "structure": "2:4"}, {}, {"sparsity": 0.5, "structure": "1x4"}):
        with pytest.raises(PruneOptionError):
            prune_onnx(src, tmp_path / "x.onnx", **kwargs)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError):
        prune_onnx(bad, tmp_path / "y.onnx", sparsity=0.5)
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    relu = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(relu))
    with pytest.raises(UnsupportedModelError):
        prune_onnx(relu, tmp_path / "z.onnx", sparsity=0.5)
    assert issubclass(PruneOptionError, EdgeshipError) and issubclass(PruneOptionError, ValueError)
