"""Keras pruning: the Keras 3 -> tf_keras bridge, tfmot pruning with fine-tuning,
2:4 structure, achieved sparsity, training-data loading, INT8 gzip gains.

One small Keras 3 CNN is trained here on scikit-learn's digits (8x8 upsampled to
16x16) and shared by the tests; every pruning run fine-tunes for 2 epochs on
1,400 samples (a few seconds each on 2 CPU cores).
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")
pytest.importorskip("sklearn")

from edgeship.converters.keras_bridge import bridge_to_tf_keras, is_tf_keras_model  # noqa: E402
from edgeship.converters.prune import (  # noqa: E402
    PruneOptionError,
    TrainData,
    check_blocks,
    check_n_m,
    load_train_data,
    parse_structure,
    prune_keras,
)
from edgeship.errors import CalibrationError, UnsupportedModelError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(digits16):
    return (*digits16["train"], *digits16["eval"])


@pytest.fixture(scope="module")
def dense_model(pruning_cnn_file):
    """The session's pruning CNN (tests/conftest.py), saved as .keras and loaded back (what users have)."""
    return keras.saving.load_model(pruning_cnn_file)


def _acc(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model(x, training=False)), -1) == y))


def _int8_gzip(model, calib) -> int:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(100))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return len(gzip.compress(conv.convert(), compresslevel=9, mtime=0))


# -- bridge -------------------------------------------------------------------------


def test_bridge_reproduces_a_functional_model_with_many_layer_kinds():
    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(inp)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.ReLU(6.0)(y)
    y = keras.layers.SeparableConv2D(8, 3, padding="same")(y)
    z = keras.layers.Add()([x, y])
    z = keras.layers.Concatenate()([z, x])
    z = keras.layers.LeakyReLU(negative_slope=0.2)(z)
    z = keras.layers.AveragePooling2D(2)(z)
    g = keras.layers.GlobalAveragePooling2D()(z)
    f = keras.layers.Flatten()(keras.layers.MaxPooling2D()(z))
    f = keras.layers.Dropout(0.3)(f)
    f = keras.layers.Dense(16, activation="relu")(f)
    o = keras.layers.Concatenate()([f, g])
    o = keras.layers.Reshape((4, 8))(o)
    o = keras.layers.Flatten()(o)
    o = keras.layers.Dense(5, activation="softmax")(o)
    m = keras.Model(inp, o)
    bn = next(layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization))
    w = bn.get_weights()
    bn.set_weights([w[0] * 1.5, w[1] + 0.1, w[2] + 0.3, w[3] * 2.0])  # non-trivial statistics

    res = bridge_to_tf_keras(m)
    assert res.bridged and is_tf_keras_model(res.model)
    assert res.max_abs_diff <= 1e-5
    x = np.random.default_rng(3).uniform(0, 255, (6, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(res.model(x, training=False).numpy(), np.asarray(m(x, training=False)), atol=1e-5)
    assert {"BatchNormalization", "SeparableConv2D", "DepthwiseConv2D", "LeakyReLU"} <= {c for _n, c in res.layers}
    # a tf_keras model passes through untouched
    again = bridge_to_tf_keras(res.model)
    assert again.model is res.model and not again.bridged


def test_bridge_names_the_layer_it_cannot_bridge():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.RandomFlip(name="flip_aug")(inp)
    m = keras.Model(inp, keras.layers.Conv2D(2, 3)(x))
    with pytest.raises(UnsupportedModelError, match="flip_aug.*RandomFlip"):
        bridge_to_tf_keras(m)

    inp = keras.Input((4,))
    m = keras.Model(inp, keras.layers.Dense(2)(keras.ops.sin(inp)))
    with pytest.raises(UnsupportedModelError, match="sin"):
        bridge_to_tf_keras(m)

    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    c = Custom()
    c(np.zeros((1, 4), np.float32))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        bridge_to_tf_keras(c)


# -- pruning ------------------------------------------------------------------------


def test_prune_50_with_fine_tuning_keeps_accuracy_and_shrinks_int8_gzip(dense_model, digits):
    xtr, ytr, xte, yte = digits
    before = [w.copy() for w in dense_model.get_weights()]
    dense_acc = _acc(dense_model, xte, yte)
    assert dense_acc > 0.9

    res = prune_keras(dense_model, sparsity=0.5, train_data=(xtr, ytr), epochs=2, progress=False)

    assert res.bridged and res.bridge_max_abs_diff is not None and res.bridge_max_abs_diff <= 1e-5
    assert res.fine_tuned and "loss" in res.history and len(res.history["loss"]) == 2
    assert is_tf_keras_model(res.model)
    assert [r["name"] for r in res.layers] == ["c1", "c2", "fc1", "logits"]
    for r in res.layers:
        assert r["target"] == 0.5
        assert abs(r["achieved"] - 0.5) < 0.02, r
        assert r["params"] > 0
    assert abs(res.achieved_total - 0.5) < 0.01
    # no wrapper left, the caller's model unchanged
    assert not any("prune_low_magnitude" in layer.name for layer in res.model.layers)
    for a, b in zip(before, dense_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    pruned_acc = _acc(res.model, xte, yte)
    assert pruned_acc >= dense_acc - 0.03, (dense_acc, pruned_acc)
    # the default granularity: Dense kernels in 1x4 blocks (contiguous in TFLite), convs elementwise
    assert res.structure is None
    assert {r["name"]: r["structure"] for r in res.layers} == {
        "c1": "elementwise", "c2": "elementwise", "fc1": "1x4", "logits": "1x4"}
    layers = {layer.name: layer for layer in res.model.layers}
    assert check_blocks(layers["fc1"].kernel.numpy(), 4, axis=0)
    assert "1x4" in res.granularity and "elementwise" in res.granularity
    man = res.to_manifest()
    assert man["granularity"] == res.granularity and man["layers"][2]["structure"] == "1x4"
    assert man["layers"][0]["achieved"] == res.layers[0]["achieved"] and man["bridge"]["bridged"]

    dense_tk = bridge_to_tf_keras(dense_model).model
    g_dense = _int8_gzip(dense_tk, xtr)
    g_pruned = _int8_gzip(res.model, xtr)
    assert g_pruned < 0.85 * g_dense, (g_pruned, g_dense)


def test_prune_2_4_structure_holds_along_input_channels(dense_model, digits):
    xtr, ytr, xte, yte = digits
    res = prune_keras(dense_model, sparsity=None, structure="2:4", train_data=(xtr, ytr), epochs=1,
                      progress=False)
    assert res.structure == "2:4" and res.target == 0.5
    # the first conv has 1 input channel: left dense and said so
    assert [s["name"] for s in res.skipped] == ["c1"]
    layers = {layer.name: layer for layer in res.model.layers}
    for r in res.layers:
        kernel = layers[r["name"]].kernel.numpy()
        axis = 2 if kernel.ndim == 4 else 0
        assert check_n_m(kernel, 2, 4, axis), r["name"]
        assert abs(r["achieved"] - 0.5) < 1e-6
    assert not any("2:4" in w for w in res.warnings)
    assert _acc(res.model, xte, yte) >= _acc(dense_model, xte, yte) - 0.05


def test_prune_1x4_blocks_on_dense_layers(dense_model, digits):
    xtr, ytr, _xte, _yte = digits
    res = prune_keras(dense_model, sparsity=0.5, structure="1x4", train_data=(xtr, ytr), epochs=1, progress=False)
    assert res.structure == "1x4"
    kinds = {r["name"]: r["structure"] for r in res.layers}
    assert kinds == {"c1": "elementwise", "c2": "elementwise", "fc1": "1x4", "logits": "1x4"}
    layers = {layer.name: layer for layer in res.model.layers}
    for name in ("fc1", "logits"):
        kernel = layers[name].kernel.numpy()
        assert check_blocks(kernel, 4, axis=0), name
        assert not check_blocks(kernel, 4, axis=1)  # the blocks run along the input rows only
    assert all(abs(r["achieved"] - 0.5) < 0.02 for r in res.layers)


def test_prune_elementwise_structure_prunes_every_layer_elementwise(dense_model, digits):
    xtr, ytr, _xte, _yte = digits
    res = prune_keras(dense_model, sparsity=0.5, structure="elementwise", train_data=(xtr, ytr), epochs=1,
                      progress=False)
    assert res.structure == "elementwise" and res.target == 0.5
    assert all(r["structure"] == "elementwise" for r in res.layers)
    assert "elementwise" in res.to_manifest()["granularity"]
    fc1 = {layer.name: layer for layer in res.model.layers}["fc1"].kernel.numpy()
    assert not check_blocks(fc1, 4, axis=0)  # isolated zeros, not blocks
    assert all(abs(r["achieved"] - 0.5) < 0.02 for r in res.layers)


def test_prune_without_training_data_warns(dense_model, digits):
    res = prune_keras(dense_model, sparsity=0.5, progress=False)
    assert not res.fine_tuned and res.history == {}
    assert any("without fine-tuning" in w for w in res.warnings)
    assert all(abs(r["achieved"] - 0.5) < 0.01 for r in res.layers)


def test_prune_options_and_data_errors(dense_model, digits):
    xtr, ytr, _xte, _yte = digits
    with pytest.raises(PruneOptionError):
        prune_keras(dense_model, sparsity=1.5)
    with pytest.raises(PruneOptionError):
        prune_keras(dense_model, sparsity=0.5, structure="two:four")
    with pytest.raises(PruneOptionError):
        prune_keras(dense_model, sparsity=0.5, train_data=(xtr, ytr), epochs=0)
    with pytest.raises(CalibrationError, match="shaped"):
        prune_keras(dense_model, sparsity=0.5, train_data=(xtr[:, :8, :8], ytr), progress=False)
    with pytest.raises(CalibrationError, match="labels"):
        prune_keras(dense_model, sparsity=0.5, train_data=(xtr, ytr[:10]), progress=False)


# -- training data ------------------------------------------------------------------


def test_load_train_data_npz_and_errors(tmp_path):
    x = np.random.default_rng(0).random((10, 4, 4, 1)).astype(np.float32)
    y = np.arange(10) % 2
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=y)
    d = load_train_data(str(good))
    assert isinstance(d, TrainData) and d.x.shape == (10, 4, 4, 1) and d.y.tolist() == y.tolist()
    assert len(load_train_data(str(good), limit=3).x) == 3

    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, x=x)
    with pytest.raises(CalibrationError, match="'y'"):
        load_train_data(str(nokey))
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([object()], dtype=object), y=y[:1])
    with pytest.raises(CalibrationError, match="pickle"):
        load_train_data(str(pickled))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"nope")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_train_data(str(junk))
    with pytest.raises(CalibrationError, match="does not exist"):
        load_train_data(str(tmp_path / "missing.npz"))
    other = tmp_path / "data.csv"
    other.write_text("1,2")
    with pytest.raises(CalibrationError, match="neither"):
        load_train_data(str(other))


def test_load_train_data_image_folder(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "imgs" / cls / f"{i}.png"), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    d = load_train_data(str(tmp_path / "imgs"), input_shape=(None, 16, 16, 1))
    assert d.x.shape == (6, 16, 16, 1) and d.x.dtype == np.float32 and d.x.max() <= 1.0
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1] and d.classes == ("cat", "dog")

    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(CalibrationError, match="one subfolder per class"):
        load_train_data(str(tmp_path / "flat"), input_shape=(None, 4, 4, 1))
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(CalibrationError, match="has no images"):
        load_train_data(str(tmp_path / "imgs"), input_shape=(None, 16, 16, 1))
    (tmp_path / "imgs" / "empty" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="bad.png"):
        load_train_data(str(tmp_path / "imgs"), input_shape=(None, 16, 16, 1))


def test_parse_structure_accepts_blocks_and_elementwise_for_convert():
    # convert() validates --prune-structure with parse_structure: non-N:M granularities pass through
    assert parse_structure("2:4") == (2, 4)
    assert parse_structure("1x4") is None and parse_structure("elementwise") is None
    assert parse_structure("unstructured") is None and parse_structure(None) is None
    with pytest.raises(PruneOptionError):
        parse_structure("1x99")
    with pytest.raises(PruneOptionError):
        parse_structure("2x4")
