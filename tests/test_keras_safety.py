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


# -- allow-lists (the policy of SECURITY.md; the hostile sweeps are in tests/hardening/) -------------


def test_every_allow_list_name_resolves_to_a_real_object():
    pytest.importorskip("tf_keras")
    from edgeship.converters.sources import keras_allowlist as A
    from edgeship.converters.sources.keras_safety import Resolver

    k3, tfk = Resolver("keras3"), Resolver("tf_keras")
    missing_layers = [n for n in A.LAYERS
                      if k3.symbol(f"keras.layers.{n}") is None and tfk.symbol(f"keras.layers.{n}") is None]
    assert missing_layers == []
    assert [n for n in A.TF_FUNCTIONS if tfk.symbol(n) is None] == []
    assert [n for n in A.ACTIVATIONS if k3.symbol(f"keras.activations.{n}") is None
            and tfk.symbol(f"keras.activations.{n}") is None] == []
    import importlib

    for mod, names in A.KERAS_OPS.items():
        m = importlib.import_module(mod)
        assert [n for n in names.split() if not hasattr(m, n)] == [], mod
    assert "Lambda" not in A.LAYERS and "TFSMLayer" not in A.LAYERS


def _tfk_config(fn, const=None, module="tf_keras.src.layers.core.tf_op_layer", cls="TFOpLambda"):
    node = [["input_1", 0, 0, {"y": 1.0}]] if const is None else [["_CONSTANT_VALUE", -1, const, {}]]
    return {"module": "tf_keras.src.engine.functional", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": "m", "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                 "config": {"name": "input_1", "batch_input_shape": [None, 4], "dtype": "float32"}, "name": "input_1",
                 "inbound_nodes": []},
                {"module": module, "class_name": cls, "registered_name": cls if "." not in cls else None,
                 "config": {"name": "op", "trainable": True, "dtype": "float32", "function": fn}, "name": "op",
                 "inbound_nodes": node}]}}


@pytest.mark.parametrize("fn, allowed", [
    ("math.add", True), ("add", True), ("compat.v1.add", True), ("__operators__.add", True), ("nn.relu", True),
    ("io.write_file", False), ("compat.v1.io.write_file", False), ("raw_ops.AddV2", False),
    ("keras.utils.get_file", False), ("print", False), ("py_function", False), ("no.such.symbol", False),
])
def test_tf_op_layer_functions_resolved_like_tf_keras(fn, allowed):
    pytest.importorskip("tf_keras")
    from edgeship.converters.sources.keras_safety import iter_unsafe

    problems = list(iter_unsafe(_tfk_config(fn), "tf_keras"))
    assert (problems == []) is allowed, problems


def test_split_names_and_constants_resolved_like_the_loader():
    pytest.importorskip("tf_keras")
    from edgeship.converters.sources.keras_safety import iter_unsafe

    # qualname form tf_keras follows: module + "outer.inner"
    split = _tfk_config("io.write_file", module="tf_keras.src.layers.core", cls="tf_op_layer.TFOpLambda")
    assert any("tf.io.write_file" in p for p in iter_unsafe(split, "tf_keras"))
    assert list(iter_unsafe(_tfk_config("math.add", const=[1.0, 2.0]), "tf_keras")) == []
    assert any("constant" in p for p in iter_unsafe(_tfk_config("math.add", const="/etc/passwd"), "tf_keras"))
    lam = {"module": "keras", "class_name": "layers.Lambda", "registered_name": None, "config": {"name": "l"}}
    assert any("keras.layers.Lambda" in p for p in iter_unsafe(lam, "keras3"))
    reg = {"module": "keras.layers", "class_name": "Dense", "registered_name": "Custom>Dense", "config": {"name": "d"}}
    assert any("Custom>Dense" in p for p in iter_unsafe(reg, "keras3"))
    ok = {"module": "keras.src.ops.numpy", "class_name": "Add", "registered_name": "Add", "config": {"name": "a"}}
    assert list(iter_unsafe(ok, "keras3")) == []
    loop = {"module": "keras.src.ops.core", "class_name": "WhileLoop", "registered_name": "WhileLoop", "config": {}}
    assert list(iter_unsafe(loop, "keras3"))


def test_models_with_tf_and_keras_ops_load(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    x = tf_keras.Input((4, 4, 3))
    y = tf.reshape(tf.nn.relu(x + 1.0), (-1, 48))[:, 1:5]
    y = tf.concat([tf.math.reduce_mean(y, axis=-1, keepdims=True), y * 2], axis=-1)
    tf_keras.Model(x, y).save(tmp_path / "tfk_ops.keras")
    x = keras.Input((4, 4, 3))
    y = keras.ops.reshape(keras.ops.add(x, 1.0), (-1, 48))[:, 1:5]
    keras.Model(x, keras.ops.concatenate([keras.layers.Dense(2)(y), y], axis=-1)).save(tmp_path / "k3_ops.keras")
    assert keras_loader.load(str(tmp_path / "tfk_ops.keras")).outputs[0]["shape"] == [1, 5]
    assert keras_loader.load(str(tmp_path / "k3_ops.keras")).outputs[0]["shape"] == [1, 6]


@pytest.mark.parametrize("value, ok_in_folder", [
    ("/etc/passwd", False), ("../x.txt", False), ("a/../../x", False), ("file:///etc/passwd", False),
    ("https://example.invalid/v.txt", False), ("~/v.txt", False), ("C:\\v.txt", False), ("assets/v.txt", True),
])
def test_path_policy(value, ok_in_folder):
    from edgeship.converters.sources.keras_safety import path_problem

    assert (path_problem(value, inside_allowed=True) is None) is ok_in_folder
    assert path_problem(value, inside_allowed=False) is not None  # a single-file model has no folder


def test_vocabulary_file_outside_the_model_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    voc = tmp_path / "vocab.txt"
    voc.write_text("a\nb\n")
    x = tf_keras.Input((1,), dtype="string")
    tf_keras.Model(x, tf_keras.layers.StringLookup(vocabulary=str(voc), name="lk")(x)).save(tmp_path / "v.keras")
    with pytest.raises(UnsafeModelError, match="vocabulary.*--allow-unsafe"):
        keras_loader.load(str(tmp_path / "v.keras"))


def test_saved_model_print_to_file_refused_naming_op_and_function(tmp_path):
    import tensorflow as tf

    log = tmp_path / "log.txt"

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
        def serve(self, x):
            tf.print("x", output_stream=f"file://{log}")
            return {"y": x * 2}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    with pytest.raises(UnsafeModelError, match=r"op PrintV2 \(node 'PrintV2' in function '__inference_serve"):
        keras_loader.load(str(tmp_path / "sm"))
    assert not log.exists()


def test_h5_external_dataset_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    import h5py

    secret = tmp_path / "secret.bin"
    np.full((4, 2), 7.0, np.float32).tofile(secret)
    p = tmp_path / "m.h5"
    tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d")]).save(p)
    with h5py.File(p, "r+") as f:
        del f["model_weights/d/d/kernel:0"]
        f["model_weights/d/d"].create_dataset("kernel:0", (4, 2), "float32", external=[(str(secret), 0, 32)])
    with pytest.raises(UnsafeModelError, match="external dataset"):
        keras_loader.load(str(p), allow_legacy_h5=True)
    assert keras_loader.load(str(p), allow_legacy_h5=True, allow_unsafe=True).format == "h5"


def test_op_layer_constants_cannot_ask_for_huge_tensors():
    pytest.importorskip("tf_keras")
    from edgeship.converters.sources.keras_safety import iter_unsafe

    cfg = _tfk_config("ones", const=[1000000, 1000000])
    assert any("elements" in p for p in iter_unsafe(cfg, "tf_keras"))
    assert list(iter_unsafe(_tfk_config("ones", const=[1, 224, 224, 3]), "tf_keras")) == []
    assert list(iter_unsafe(_tfk_config("math.multiply", const=-1e9), "tf_keras")) == []


def test_security_md_lists_the_allow_lists_as_the_code_has_them():
    from pathlib import Path

    from edgeship.converters.sources import keras_allowlist as A
    from edgeship.converters.sources.savedmodel_safety import ALLOWED_OPS

    doc = (Path(__file__).resolve().parent.parent / "SECURITY.md").read_text()
    names = set(A.LAYERS) | set(A.TF_FUNCTIONS) | set(A.ACTIVATIONS) | set(ALLOWED_OPS)
    names |= {n for v in A.KERAS_OPS.values() for n in v.split()}
    assert sorted(n for n in names if f"`{n}`" not in doc) == []
