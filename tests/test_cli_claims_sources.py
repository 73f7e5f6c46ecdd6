"""README claims about model sources, on the CLI: old ONNX opsets upgraded, legacy ``.h5`` with
``--allow-legacy-h5``, SavedModels with file ops refused, Lambda layers only with ``--allow-unsafe``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from test_cli_claims_common import artifact, cli_capture, cli_json, manifest, one_error_line, write_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, digits):
    root = str(tmp_path_factory.mktemp("claims-src"))
    x, y = digits
    return {"root": root, "x": x, "y": y, **write_data(root, x, y)}


# ------------------------------------------------------------------------------- ONNX opset < 12


def _opset11_model(path, digits_cnn):
    """The session digits CNN rebuilt by hand as an opset-11 NCHW ONNX graph: Conv -> Relu -> Flatten -> Gemm -> Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv_w, conv_b = digits_cnn.layers[0].get_weights()
    dense_w, dense_b = (np.asarray(w) for w in digits_cnn.layers[2].get_weights())
    conv_w = np.transpose(conv_w, (3, 2, 0, 1))  # HWIO -> OIHW
    # Keras flattens NHWC (h, w, c); the NCHW graph flattens (c, h, w): reorder the Dense rows
    dense_w = dense_w.reshape(8, 8, 8, 10).transpose(2, 0, 1, 3).reshape(512, 10)
    inits = [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n) for a, n in
             ((conv_w, "cw"), (conv_b, "cb"), (dense_w, "dw"), (dense_b, "db"))]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "dw", "db"], ["g"], name="dense"),
        helper.make_node("Softmax", ["g"], ["y"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "digits11", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_opset_11_is_upgraded_for_per_channel_int8(data, digits_cnn, tmp_path, capfd):
    import onnx
    from onnx import numpy_helper

    src = _opset11_model(str(tmp_path / "digits11.onnx"), digits_cnn)
    x = np.transpose(data["x"], (0, 3, 1, 2))  # NCHW
    np.savez(tmp_path / "calib.npz", x=x[:300], y=data["y"][:300])
    np.savez(tmp_path / "test.npz", x=x[1400:], y=data["y"][1400:])
    out = tmp_path / "b"
    rc, _, err = cli_capture(capfd, "convert", src, "-o", out, "--calib", tmp_path / "calib.npz", "--eval",
                             tmp_path / "test.npz", "--formats", "onnx")
    assert rc == 0, err[-3000:]
    art = artifact(manifest(out), fmt="onnx")
    q = onnx.load(str(out / art["file"]))
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    assert inits[dq.input[1]].shape == (8,)  # one scale per output channel: needs opset 13
    val = manifest(out)["validation"]["artifacts"][art["file"]]
    assert val["top1_agreement"] >= 0.95 and val["accuracy"] >= 0.8  # the hand-built graph is the same model


# ------------------------------------------------------------------------------- legacy .h5


def test_legacy_h5_end_to_end_only_with_the_flag(data, digits_cnn, tmp_path, capfd):
    h5 = tmp_path / "digits.h5"
    digits_cnn.save(h5)
    out = tmp_path / "b"
    rc, _, err = cli_capture(capfd, "convert", h5, "-o", out, "--calib", data["calib"])
    assert rc == 2
    assert "--allow-legacy-h5" in one_error_line(err)
    assert not out.exists()
    rc, _, err = cli_capture(capfd, "convert", h5, "-o", out, "--calib", data["calib"], "--eval", data["test"],
                             "--allow-legacy-h5")
    assert rc == 0, err[-3000:]
    man = manifest(out)
    assert man["settings"]["allow_legacy_h5"] is True
    val = man["validation"]["artifacts"]["model.int8.tflite"]
    assert val["top1_agreement"] >= 0.97 and val["accuracy"] >= 0.8
    res = cli_json(capfd, "run", out, data["batch"], "--top-k", "1")
    want = digits_cnn.predict(np.load(data["batch"]), verbose=0).argmax(1)
    assert [r["classes"][0]["id"] for r in res["results"]] == list(want)


def test_h5_with_a_lambda_is_refused_even_with_allow_legacy_h5(data, tmp_path, capfd):
    """'its config is still scanned': --allow-legacy-h5 is not --allow-unsafe."""
    import keras

    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Flatten(),
                          keras.layers.Dense(10)])
    h5 = tmp_path / "lambda.h5"
    m.save(h5)
    rc, _, err = cli_capture(capfd, "convert", h5, "-o", tmp_path / "b", "--calib", data["calib"],
                             "--allow-legacy-h5")
    assert rc == 2
    assert "Lambda" in one_error_line(err)


# ------------------------------------------------------------------------------- --allow-unsafe


def test_lambda_layer_needs_allow_unsafe(data, tmp_path, capfd):
    import keras

    keras.utils.set_random_seed(0)
    x, y = data["x"], data["y"]
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="shift"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x[:1200], y[:1200], epochs=2, verbose=0)
    path = tmp_path / "lambda.keras"
    m.save(path)
    out = tmp_path / "b"
    rc, _, err = cli_capture(capfd, "convert", path, "-o", out, "--calib", data["calib"])
    assert rc == 2
    line = one_error_line(err)
    assert "Lambda" in line and "--allow-unsafe" in line
    assert not out.exists()
    rc, _, err = cli_capture(capfd, "convert", path, "-o", out, "--calib", data["calib"], "--eval", data["test"],
                             "--allow-unsafe")
    assert rc == 0, err[-3000:]
    man = manifest(out)
    assert man["settings"]["allow_unsafe"] is True
    assert man["validation"]["artifacts"]["model.int8.tflite"]["top1_agreement"] >= 0.95  # the Lambda ran


# ------------------------------------------------------------------------------- SavedModel file ops


def _saved_model_with(op: str, folder: str, side_file: str) -> str:
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            if op == "ReadFile":
                n = tf.strings.length(tf.io.read_file(side_file))
            elif op == "WriteFile":
                with tf.control_dependencies([tf.io.write_file(side_file, "payload ran")]):
                    n = tf.constant(0)
            else:
                n = tf.size(tf.io.matching_files(os.path.join(os.path.dirname(side_file), "*")))
            return {"y": tf.reshape(x, [1, 64])[:, :10] + tf.cast(n, tf.float32) * 0.0}

    m = M()
    tf.saved_model.save(m, folder, signatures={"serving_default": m.__call__})
    return folder


@pytest.mark.parametrize("op", ["ReadFile", "WriteFile", "MatchingFiles"])
def test_saved_model_file_ops_are_refused(data, tmp_path, capfd, op):
    side = str(tmp_path / "side.txt")
    if op != "WriteFile":
        with open(side, "w") as fh:
            fh.write("secret")
    folder = _saved_model_with(op, str(tmp_path / "sm"), side)
    out = tmp_path / "b"
    rc, _, err = cli_capture(capfd, "convert", folder, "-o", out, "--calib", data["calib"])
    assert rc == 2
    line = one_error_line(err)
    assert op in line and "--allow-unsafe" in line
    assert not out.exists()
    if op == "WriteFile":
        assert not os.path.exists(side)  # refused before anything ran
