"""Safe Keras loading: files that carry code are refused before anything is deserialised."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeship.converters import convert  # noqa: E402
from edgeship.converters.sources import keras as keras_loader  # noqa: E402
from edgeship.errors import (  # noqa: E402
    EdgeshipError,
    ModelFormatError,
    UnsafeModelError,
    UnsupportedModelError,
)

keras = pytest.importorskip("keras")


def _plain_model():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])


@pytest.fixture(scope="module")
def plain_keras(tmp_path_factory):
    p = tmp_path_factory.mktemp("plain") / "plain.keras"
    _plain_model().save(p)
    return p


def _rewrite_config(src, dst, mutate):
    """Copy a .keras zip, changing config.json with ``mutate(config)`` (a crafted hostile file)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                mutate(cfg)
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    return dst


def test_lambda_layer_refused_and_its_code_never_runs(tmp_path):
    canary = tmp_path / "canary.txt"
    path = str(canary)
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Lambda(lambda t: (open(path, "w").write("pwned"), t)[1], name="evil_lambda"),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    model_path = tmp_path / "lambda.keras"
    m.save(model_path)
    canary.unlink(missing_ok=True)  # building the model above ran the lambda once
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    with pytest.raises(UnsafeModelError) as ei:
        convert(str(model_path), tmp_path / "out", calib=x)
    msg = str(ei.value)
    assert "evil_lambda" in msg and "--allow-unsafe" in msg
    assert isinstance(ei.value, PermissionError) and isinstance(ei.value, EdgeshipError)
    assert not canary.exists()
    assert not (tmp_path / "out").exists()


def test_tf_keras_lambda_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    m = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Lambda(lambda t: t * 2, name="tfk_lambda"),
                             tf_keras.layers.Dense(2)])
    p = tmp_path / "tfk_lambda.keras"
    m.save(p)
    with pytest.raises(UnsafeModelError, match="tfk_lambda"):
        keras_loader.load(str(p))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["config"]["layers"][-1].__setitem__("module", "os"), "'os'"),
        (lambda c: c["config"]["layers"][-1]["config"].__setitem__(
            "activation", {"module": "builtins", "class_name": "function", "config": "eval", "registered_name": None}),
         "eval"),
        (lambda c: c["config"]["layers"][-1]["config"].__setitem__(
            "activation", {"module": "keras.activations", "class_name": "function", "config": "not_an_activation",
                           "registered_name": None}),
         "not_an_activation"),
        (lambda c: c["config"]["layers"].insert(1, {
            "module": "keras.layers", "class_name": "TFSMLayer",
            "config": {"name": "external_sm", "filepath": "/tmp/elsewhere", "call_endpoint": "serve"}}),
         "TFSMLayer"),
        (lambda c: c["config"].__setitem__("note", "keras.config.enable_unsafe_deserialization()"),
         "enable_unsafe_deserialization"),
    ],
    ids=["foreign-module", "builtin-function", "unknown-function", "tfsmlayer", "unsafe-switch"],
)
def test_crafted_configs_refused_before_loading(tmp_path, plain_keras, mutate, needle):
    p = _rewrite_config(plain_keras, tmp_path / "crafted.keras", mutate)
    with pytest.raises(UnsafeModelError) as ei:
        keras_loader.load(str(p))
    assert needle in str(ei.value) and "--allow-unsafe" in str(ei.value)


def test_known_activation_functions_are_accepted(tmp_path, plain_keras):
    p = _rewrite_config(plain_keras, tmp_path / "gelu.keras", lambda c: c["config"]["layers"][-1]["config"].__setitem__(
        "activation", {"module": "keras.activations", "class_name": "function", "config": "gelu",
                       "registered_name": None}))
    src = keras_loader.load(str(p))
    assert src.format == "keras3" and src.inputs[0]["shape"] == [1, 8, 8, 1]


def test_h5_needs_the_flag_and_is_scanned(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    p = tmp_path / "legacy.h5"
    tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save(p)
    with pytest.raises(UnsupportedModelError, match="--allow-legacy-h5"):
        keras_loader.load(str(p))
    src = keras_loader.load(str(p), allow_legacy_h5=True)
    assert src.format == "h5" and src.inputs[0]["shape"] == [1, 4]
    bad = tmp_path / "legacy_lambda.h5"
    tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Lambda(lambda t: t + 1, name="h5_lambda")]).save(bad)
    with pytest.raises(UnsafeModelError, match="h5_lambda"):
        keras_loader.load(str(bad), allow_legacy_h5=True)


def test_corrupt_files(tmp_path, plain_keras):
    junk = tmp_path / "junk.keras"
    junk.write_bytes(os.urandom(512))
    with pytest.raises(ModelFormatError):
        convert(str(junk), tmp_path / "out", calib="random")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(plain_keras.read_bytes()[:200])
    with pytest.raises(ModelFormatError):
        keras_loader.load(str(truncated))
    nometa = tmp_path / "nometa.keras"
    with zipfile.ZipFile(plain_keras) as zin, zipfile.ZipFile(nometa, "w") as zout:
        for item in zin.infolist():
            if item.filename != "metadata.json":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(ModelFormatError, match="keras_version"):
        keras_loader.load(str(nometa))
    with pytest.raises(ModelFormatError, match="does not exist"):
        keras_loader.load(str(tmp_path / "missing.keras"))
    assert not (tmp_path / "out").exists()


def test_saved_model_with_python_op_refused(tmp_path):
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
        def serve(self, x):
            return {"y": tf.py_function(lambda t: t * 2, [x], tf.float32)}

    m = M()
    p = tmp_path / "pyfunc_sm"
    tf.saved_model.save(m, str(p), signatures={"serving_default": m.serve})
    with pytest.raises(UnsafeModelError, match="EagerPyFunc"):
        keras_loader.load(str(p))


def test_unknown_input_dimensions_need_input_shape():
    m = keras.Sequential([keras.Input((None, None, 1)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    with pytest.raises(UnsupportedModelError, match="input_shape"):
        keras_loader.load(m)
    src = keras_loader.load(m, input_shape=(12, 12, 1))
    assert src.inputs[0]["shape"] == [1, 12, 12, 1] and src.format == "in_memory"
