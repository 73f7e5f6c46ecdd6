"""Keras configs against the allow-lists: op layers, split names, aliases, registered names, vocabulary paths.

Every hostile file is crafted here and run through ``edgeship convert`` (in
this process, so Keras' loaders are the real ones). The payloads write a
canary file (``tf.io.write_file``, its aliases and ``raw_ops`` forms,
``tf.print`` to a file), fetch or copy a secret file (``keras.utils.get_file``
with a ``file://`` origin, ``io.gfile.copy``, vocabulary files) or run code
(Lambda bytecode behind a split ``module``/``class_name``). Each must be
refused with exit 2 and one line on stderr; the canary must not exist; the
secret files are watched with inotify (every open or read, C-level included)
and must see 0 events. A control run with ``allow_unsafe=True`` shows that
the files are live: the same payloads do run when the checks are skipped.
"""

from __future__ import annotations

import os
import time

import pytest

from _hostile_keras_util import FileWatch, one_line, rewrite_keras, run_convert
from _hutil import record

pytestmark = pytest.mark.hardening

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

from edgeship import cli  # noqa: E402
from edgeship.converters.sources import keras as loader  # noqa: E402
from edgeship.errors import UnsafeModelError  # noqa: E402

AREA = "(b2) Keras allow-lists"
OP_MODULE = "tf_keras.src.layers.core.tf_op_layer"


def _op_layer(fn, const, kwargs, *, module=OP_MODULE, cls="TFOpLambda", name="evil_op"):
    return {"module": module, "class_name": cls, "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": "float32", "function": fn},
            "name": name, "inbound_nodes": [["_CONSTANT_VALUE", -1, const, kwargs]]}


def _insert(layer):
    return lambda c: c["config"]["layers"].insert(1, layer)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bases")
    x = tf_keras.Input((4,))
    tf_keras.Model(x, tf_keras.layers.Dense(2, name="d")(x)).save(d / "tfk.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")]).save(d / "k3.keras")
    return d


def _cases(tmp, bases, canary, secret):
    tfk, k3 = bases / "tfk.keras", bases / "k3.keras"
    cache = tmp / "cache"
    c = {}

    def add(name, base, mutate, needle):
        c[name] = (rewrite_keras(base, tmp / f"{len(c)}.keras", mutate), needle)

    # tf_keras op layers: functions outside the allow-list, fed constants
    wf = (str(canary), {"contents": "pwned"})
    add("TFOpLambda io.write_file", tfk, _insert(_op_layer("io.write_file", *wf)), "tf.io.write_file")
    add("TFOpLambda compat.v1.io.write_file (alias)", tfk, _insert(_op_layer("compat.v1.io.write_file", *wf)),
        "compat.v1.io.write_file")
    add("TFOpLambda raw_ops.WriteFile", tfk,
        _insert(_op_layer("raw_ops.WriteFile", None, {"filename": str(canary), "contents": "pwned"})), "WriteFile")
    add("TFOpLambda compat.v1.raw_ops.WriteFile", tfk,
        _insert(_op_layer("compat.v1.raw_ops.WriteFile", None, {"filename": str(canary), "contents": "x"})),
        "WriteFile")
    add("TFOpLambda keras.utils.get_file file://", tfk, _insert(_op_layer(
        "keras.utils.get_file", "stolen.txt", {"origin": "file://" + str(secret), "cache_dir": str(cache)})),
        "get_file")
    add("TFOpLambda keras.models.load_model", tfk, _insert(_op_layer("keras.models.load_model", str(secret), {})),
        "load_model")
    add("TFOpLambda io.gfile.copy", tfk, _insert(_op_layer("io.gfile.copy", str(secret), {"dst": str(canary)})),
        "io.gfile.copy")
    add("TFOpLambda print to file", tfk,
        _insert(_op_layer("print", "pwned", {"output_stream": "file://" + str(canary)})), "tf.print")
    add("TFOpLambda via split class_name tf_op_layer.TFOpLambda", tfk, _insert(_op_layer(
        "io.write_file", *wf, module="tf_keras.src.layers.core", cls="tf_op_layer.TFOpLambda")), "write_file")
    add("SlicingOpLambda io.write_file", tfk, _insert(_op_layer("io.write_file", *wf, cls="SlicingOpLambda")),
        "write_file")
    add("ClassMethod io.gfile.GFile", tfk, _insert({
        "module": OP_MODULE, "class_name": "ClassMethod", "registered_name": None,
        "config": {"name": "cm", "cls_symbol": "io.gfile.GFile", "method_name": "__init__"},
        "name": "cm", "inbound_nodes": [["_CONSTANT_VALUE", -1, str(canary), {"mode": "w"}]]}), "ClassMethod")
    add("tf_keras module=os class=system", tfk, _insert({
        "module": "os", "class_name": "system", "registered_name": None, "config": {"command": f"touch {canary}"},
        "name": "s", "inbound_nodes": []}), "'os.system'")
    # Keras 3: names resolved as Keras joins module and class_name
    lam_cfg = {"name": "evil_lambda", "function": {"class_name": "__lambda__", "config": {
        "code": "", "defaults": None, "closure": None}}, "output_shape": None, "arguments": {}}
    add("Keras 3 module=keras class_name=layers.Lambda", k3, _insert({
        "module": "keras", "class_name": "layers.Lambda", "registered_name": None, "config": lam_cfg}),
        "keras.layers.Lambda")
    add("Keras 3 module=keras.src.layers.core.lambda_layer", k3, _insert({
        "module": "keras.src.layers.core.lambda_layer", "class_name": "Lambda", "registered_name": None,
        "config": lam_cfg}), "Lambda")
    add("Keras 3 module=keras class_name=layers.TFSMLayer", k3, _insert({
        "module": "keras", "class_name": "layers.TFSMLayer", "registered_name": None,
        "config": {"name": "sm", "filepath": str(tmp), "call_endpoint": "serve"}}), "TFSMLayer")
    add("Keras 3 module=keras class_name=utils.get_file", k3, _insert({
        "module": "keras", "class_name": "utils.get_file", "registered_name": None,
        "config": {"fname": str(canary), "origin": "file://" + str(secret)}}), "get_file")
    add("Keras 3 registered_name Custom>Dense", k3,
        lambda cfg: cfg["config"]["layers"][-1].__setitem__("registered_name", "Custom>Dense"), "Custom>Dense")
    add("Keras 3 op not on the list (core.WhileLoop)", k3, _insert({
        "module": "keras.src.ops.core", "class_name": "WhileLoop", "registered_name": "WhileLoop",
        "config": {"name": "loop"}}), "WhileLoop")
    add("Keras 3 JaxLayer", k3, _insert({"module": "keras.layers", "class_name": "JaxLayer",
                                          "registered_name": None, "config": {"name": "j"}}), "JaxLayer")
    add("activation function utils.get_file", k3, lambda cfg: cfg["config"]["layers"][-1]["config"].__setitem__(
        "activation", {"module": "keras", "class_name": "function", "config": "utils.get_file",
                       "registered_name": None}), "get_file")
    add("activation string 'deserialize'", k3, lambda cfg: cfg["config"]["layers"][-1]["config"].__setitem__(
        "activation", "deserialize"), "deserialize")
    # vocabulary / asset paths
    for label, value in [("absolute", str(secret)), ("..", "../" + secret.name), ("file:// URL", f"file://{secret}"),
                         ("https URL", "https://example.invalid/vocab.txt"), ("relative in a .keras", secret.name)]:
        for cls in ("StringLookup", "IntegerLookup", "TextVectorization"):
            add(f"{cls} vocabulary {label}", tfk, _insert({
                "module": "keras.layers", "class_name": cls, "registered_name": None,
                "config": {"name": "lk", "vocabulary": value}, "name": "lk", "inbound_nodes": []}), "vocabulary")
    add("Hashing salt file", k3, _insert({"module": "keras.layers", "class_name": "Hashing", "registered_name": None,
                                          "config": {"name": "h", "num_bins": 4, "salt_file": str(secret)}}),
        "salt_file")
    return c


def test_allow_lists_refuse_every_variant_and_nothing_runs_or_is_read(tmp_path, bases, capsys):
    canary = tmp_path / "canary.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("alpha\nbeta\n")
    cases = _cases(tmp_path, bases, canary, secret)
    watch = FileWatch(secret)
    watch.events()
    rows = {}
    slowest = 0.0
    for name, (path, needle) in cases.items():
        out = tmp_path / f"out{len(rows)}"
        t0 = time.perf_counter()
        rc, err = run_convert(cli, capsys, path, out)
        slowest = max(slowest, time.perf_counter() - t0)
        rows[name] = dict(rc=rc, one=one_line(err), named=needle in err, ran=canary.exists(), read=watch.events(),
                          out=out.exists(), err=err.strip())
    watch.close()
    refused = sum(r["rc"] == 2 for r in rows.values())
    record(AREA, **{"tried": len(rows), "host crashes": 0, "rejected (typed)": refused, "accepted": len(rows) - refused,
                    "slowest (s)": slowest,
                    "notes": (f"Keras configs: payloads run {sum(r['ran'] for r in rows.values())}, opens/reads of "
                              f"the secret (inotify) {sum(r['read'] for r in rows.values())}, partial bundles "
                              f"{sum(r['out'] for r in rows.values())}")})
    for name, r in rows.items():
        assert r["rc"] == 2 and r["one"], (name, r)
        assert r["named"], (name, r["err"])
        assert "--allow-unsafe" in r["err"], (name, r["err"])
        assert not r["ran"] and r["read"] == 0 and not r["out"], (name, r)


def test_the_hostile_files_are_live_when_checks_are_skipped(tmp_path, bases):
    """Control: with allow_unsafe the same files do write the canary and read the secret."""
    canary = tmp_path / "canary.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("alpha\nbeta\n")
    wf = rewrite_keras(bases / "tfk.keras", tmp_path / "wf.keras",
                       _insert(_op_layer("io.write_file", str(canary), {"contents": "pwned"})))
    with pytest.raises(UnsafeModelError, match="tf.io.write_file"):
        loader.load(wf)
    assert not canary.exists()
    with pytest.raises(Exception):  # noqa: B017 - the payload runs, then the rebuilt model is broken
        loader.load(wf, allow_unsafe=True)
    assert canary.read_text() == "pwned"
    x = tf_keras.Input((1,), dtype="string")
    voc = tmp_path / "voc.keras"
    tf_keras.Model(x, tf_keras.layers.StringLookup(vocabulary=str(secret), name="lk")(x)).save(voc)
    watch = FileWatch(secret)
    watch.events()
    with pytest.raises(UnsafeModelError, match="vocabulary"):
        loader.load(str(voc))
    refused_reads = watch.events()
    try:
        loader.load(str(voc), allow_unsafe=True)
    except Exception:  # noqa: BLE001 - a string-input model is not convertible; the read happened at load
        pass
    unsafe_reads = watch.events()
    watch.close()
    record(AREA, notes=f"control with allow_unsafe: canary written 1/1, vocabulary file reads {unsafe_reads} "
                       f"(refused run: {refused_reads})")
    assert refused_reads == 0 and unsafe_reads > 0


def test_benign_mobilenet_v2_passes_the_allow_lists(tmp_path):
    """keras.applications MobileNetV2 as Keras 3 .keras, tf_keras .keras and both SavedModels load."""
    paths = {}
    k3 = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    paths["keras3 .keras"] = tmp_path / "k3.keras"
    k3.save(paths["keras3 .keras"])
    paths["keras3 export SavedModel"] = tmp_path / "k3_sm"
    k3.export(str(paths["keras3 export SavedModel"]), verbose=False)
    tk = tf_keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    paths["tf_keras .keras"] = tmp_path / "tfk.keras"
    tk.save(paths["tf_keras .keras"])
    paths["tf_keras SavedModel"] = tmp_path / "tfk_sm"
    tk.save(str(paths["tf_keras SavedModel"]), save_format="tf")
    ok = 0
    for name, p in paths.items():
        src = loader.load(str(p))
        assert src.inputs[0]["shape"] == [1, 96, 96, 3], name
        assert [o["shape"] for o in src.outputs] == [[1, 1000]], name
        ok += 1
    record(AREA, notes=f"benign MobileNetV2 files accepted: {ok}/{len(paths)} ({', '.join(paths)})")


def test_benign_training_layers_pass_in_every_format(tmp_path):
    """RNNs (cuDNN and fallback graphs), dropout, random flip, batch norm, resizing, a compiled model with
    metrics: tf_keras SavedModels keep the training functions too, which must pass the op allow-list."""
    ok = []
    for mod, name in ((tf_keras, "tf_keras"), (keras, "keras3")):
        L = mod.layers
        x = mod.Input((16, 16, 3))
        y = L.RandomFlip()(L.Resizing(8, 8)(L.Rescaling(1 / 255.0)(x)))
        y = L.Dropout(0.2)(L.BatchNormalization()(L.Conv2D(4, 3, activation="swish")(y)))
        y = L.GRU(4)(L.LSTM(8, return_sequences=True)(L.Reshape((36, 4))(y)))
        m = mod.Model(x, L.Dense(3, activation="softmax")(L.LayerNormalization()(y)))
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        m.save(tmp_path / f"{name}.keras")
        sm = tmp_path / f"{name}_sm"
        if name == "tf_keras":
            m.save(str(sm), save_format="tf")
        else:
            m.export(str(sm), verbose=False)
        for p in (tmp_path / f"{name}.keras", sm):
            assert loader.load(str(p)).outputs[0]["shape"] == [1, 3], p
            ok.append(p.name)
    record(AREA, notes=f"benign training-layer models accepted: {len(ok)}/4")


def test_real_cli_process_refuses_with_exit_2_and_one_line(tmp_path, bases):
    """The installed entry point, in its own process: exit 2, one line on stderr, no canary, no bundle."""
    import subprocess
    import sys

    canary = tmp_path / "canary.txt"
    bad = rewrite_keras(bases / "tfk.keras", tmp_path / "bad.keras",
                        _insert(_op_layer("io.write_file", str(canary), {"contents": "pwned"})))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, "-m", "edgeship", "convert", bad, "-o", str(tmp_path / "out"),
                        "--calib", "random", "--calib-count", "4"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    record(AREA, notes=f"real CLI process: exit {p.returncode}, stderr lines {len(lines)}")
    assert p.returncode == 2 and len(lines) == 1 and "tf.io.write_file" in lines[0], p.stderr
    assert not canary.exists() and not (tmp_path / "out").exists()
