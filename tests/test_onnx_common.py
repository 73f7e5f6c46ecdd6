"""Model builders shared by the ONNX tests (onnx.helper graphs, seeded weights).

Imported by the other ``tests/test_onnx_*.py`` files; it also holds a few
quick checks of the builders themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def conv_net(path=None, *, opset=17, size=8, channels=3, classes=4, batch=1, nhwc=False, seed=0):
    """Conv(3x3, 8) -> Relu -> Conv(3x3, 8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm.

    ``batch=None`` makes the batch dimension dynamic ("N"); ``nhwc=True`` takes
    NHWC input and transposes inside the graph.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, channels, 3, 3))
    b1 = rng.normal(0, 0.1, (8,))
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3))
    b2 = rng.normal(0, 0.1, (8,))
    w3 = rng.normal(0, 0.5, (classes, 8))
    b3 = rng.normal(0, 0.1, (classes,))
    bdim = "N" if batch is None else batch
    nodes = []
    if nhwc:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [bdim, size, size, channels])
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        first = "x_nchw"
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [bdim, channels, size, size])
        first = "input"
    nodes += [
        helper.make_node("Conv", [first, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [bdim, classes])
    graph = helper.make_graph(
        nodes, "convnet", [x], [y],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2), _init("w3", w3), _init("b3", b3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeship-tests")
    model.ir_version = 8 if opset <= 17 else 9
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def reference_run(model_path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0]


def digits_like(n=64, size=8, channels=3, seed=0):
    """Structured, image-like samples (not noise): blurred blobs at class positions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05))
        for c in range(channels):
            out[i, c] = blob * rng.uniform(0.5, 1.0) + rng.normal(0, 0.05, (size, size))
    return out


def test_conv_net_builds_and_runs(tmp_path):
    p = tmp_path / "m.onnx"
    conv_net(p)
    y = reference_run(p, digits_like(1))
    assert y.shape == (1, 4)
    conv_net(p, batch=None)
    assert reference_run(p, digits_like(5)).shape == (5, 4)


def test_nhwc_variant_matches_nchw(tmp_path):
    conv_net(tmp_path / "a.onnx")
    conv_net(tmp_path / "b.onnx", nhwc=True)
    x = digits_like(1)
    ya = reference_run(tmp_path / "a.onnx", x)
    yb = reference_run(tmp_path / "b.onnx", x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(ya, yb, atol=1e-5)


def digits_conv_net(path, *, seed=0):
    """An NCHW (N,3,8,8) CNN that really classifies sklearn's bundled 8x8 digits.

    Two seeded random conv layers extract features; a logistic-regression head
    fitted on them (sklearn) becomes the Flatten -> Gemm classifier. Returns
    ``(calib, x_eval, y_eval)`` as float32 NCHW arrays.
    """
    import warnings

    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression

    d = datasets.load_digits()
    x = np.repeat((d.images / 16.0).astype(np.float32)[:, None], 3, axis=1)  # (N, 3, 8, 8)
    y = d.target
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (12, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.05, (12,)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 12, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.05, (16,)).astype(np.float32)
    feat_nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1),
    ]
    inits = [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2)]
    xin = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    feat_graph = helper.make_graph(feat_nodes, "feat", [xin],
                                   [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 256])], inits)
    fm = helper.make_model(feat_graph, opset_imports=[helper.make_opsetid("", 17)])
    fm.ir_version = 8
    import onnxruntime as ort

    feats = ort.InferenceSession(fm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=500, C=1.0).fit(feats[:1200], y[:1200])
    head = [helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1)]
    inits += [_init("w3", clf.coef_), _init("b3", clf.intercept_)]
    g = helper.make_graph(feat_nodes + head, "digits_cnn", [xin],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeship-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return x[1200:1400], x[1400:], y[1400:]
