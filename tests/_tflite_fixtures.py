"""Small real TFLite models and hand-written bundles for runtime tests (no conftest).

``models()`` builds, once per test session, a tiny digits CNN (input
``image`` 8x8x1, output ``probs`` 10, trained for a few epochs on sklearn
digits so outputs are not uniform) converted with ``tf.lite.TFLiteConverter``
to fp32, fp16, dynamic-range and full INT8 with int8 and with uint8 I/O, a
fixed-batch (batch 1, not resizable) INT8 variant, and a two-input /
two-output float model. The representative dataset is real digits data, used
only to build fixtures (not to judge calibration quality).

``make_manifest()`` and ``write_bundle()`` write valid bundles by hand with
:class:`edgeship.bundle.BundleWriter`; other tests may reuse them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from datetime import datetime, timezone

import numpy as np

DIGIT_LABELS = [f"digit_{i}" for i in range(10)]


def digits(n: int | None = None):
    """(x float32 (N, 8, 8, 1) in [0, 1], y int64) from sklearn's digits."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    return (x, y) if n is None else (x[:n], y[:n])


def tensor_entries(path: str) -> tuple[list, list]:
    """Manifest tensor dicts (inputs, outputs) read from a .tflite file with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_path=path)

    def entry(d):
        qp = d["quantization_parameters"]
        q = None
        if len(qp["scales"]):
            q = {"scale": [float(s) for s in qp["scales"]], "zero_point": [int(z) for z in qp["zero_points"]],
                 "axis": int(qp["quantized_dimension"])}
        sig = d.get("shape_signature", d["shape"])
        return {"name": d["name"], "shape": [None if int(s) < 0 else int(s) for s in sig],
                "dtype": np.dtype(d["dtype"]).name, "quantization": q}

    return [entry(d) for d in it.get_input_details()], [entry(d) for d in it.get_output_details()]


def make_manifest(artifacts: list, *, name: str = "test", source_inputs=None, source_outputs=None,
                  source_layout: str = "NHWC", labels=None, preprocessing=None, task: str = "classification") -> dict:
    """A schema-valid manifest dict. ``artifacts`` are full artifact entries (see ``artifact_entry``)."""
    source = {"path": None, "sha256": None, "format": "in_memory", "layout": source_layout,
              "framework_versions": {}}
    if source_inputs is not None:
        source["inputs"] = source_inputs
    if source_outputs is not None:
        source["outputs"] = source_outputs
    return {
        "schema_version": 1,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "source": source,
        "artifacts": artifacts,
        "preprocessing": preprocessing,
        "labels": list(labels) if labels is not None else None,
        "calibration": None,
        "validation": {"artifacts": {}},
        "tools": {"edgeship": "test"},
    }


def artifact_entry(writer, file: str, *, precision: str, io: str = "float", layout: str = "NHWC",
                   fmt: str = "tflite", targets=("cpu",)) -> dict:
    """The manifest entry of a file already written at ``writer.path(file)``."""
    path = writer.path(file)
    ins, outs = tensor_entries(path) if fmt == "tflite" else ([], [])
    return {"file": file, "format": fmt, "precision": precision, "io": io, "layout": layout,
            "targets": list(targets), **writer.file_info(file), "inputs": ins, "outputs": outs, "notes": []}


def write_bundle(target: str, files: dict, *, force: bool = True, **manifest_kwargs) -> str:
    """Write a bundle: ``files`` maps file name -> (model path, precision, io[, layout]).

    ``manifest_kwargs`` go to :func:`make_manifest`. Returns the bundle path.
    """
    from edgeship.bundle import BundleWriter  # noqa: PLC0415

    with BundleWriter(target, force=force) as w:
        arts = []
        for fname, spec in files.items():
            src, precision, io, *rest = spec
            shutil.copyfile(src, w.path(fname))
            arts.append(artifact_entry(w, fname, precision=precision, io=io, layout=rest[0] if rest else "NHWC"))
        return w.commit(make_manifest(arts, **manifest_kwargs))


DIGITS_SOURCE_INPUTS = [{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32", "quantization": None}]
DIGITS_SOURCE_OUTPUTS = [{"name": "probs", "shape": [None, 10], "dtype": "float32", "quantization": None}]
DIGITS_PREPROCESSING = {"size": [8, 8], "resize": "stretch", "color": "gray", "layout": "NHWC",
                        "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0], "dtype": "float32"}


class Fixtures:
    """Paths of the built .tflite files and the Keras models they came from."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict = {}
        self.keras: dict = {}

    def path(self, key: str) -> str:
        return self.files[key]


_CACHE: dict = {}


def models() -> Fixtures:
    """Build (once per process) every fixture model; about 10 s with TensorFlow."""
    if "fx" in _CACHE:
        return _CACHE["fx"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    root = tempfile.mkdtemp(prefix="edgeship-tflite-fx-")
    atexit.register(shutil.rmtree, root, True)
    fx = Fixtures(root)
    keras.utils.set_random_seed(0)
    x, y = digits()

    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    cnn = keras.Model(inp, out)
    cnn.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    cnn.fit(x, y, epochs=3, batch_size=64, verbose=0)
    fx.keras["cnn"] = cnn

    rep_data = x[:64]

    def rep():
        for i in range(len(rep_data)):
            yield [rep_data[i:i + 1]]

    def convert(converter, key, *, precision=None, io=None):
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = rep
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
            converter.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
        data = converter.convert()
        path = os.path.join(root, f"{key}.tflite")
        with open(path, "wb") as fh:
            fh.write(data)
        fx.files[key] = path

    convert(tf.lite.TFLiteConverter.from_keras_model(cnn), "fp32")
    convert(tf.lite.TFLiteConverter.from_keras_model(cnn), "fp16", precision="fp16")
    convert(tf.lite.TFLiteConverter.from_keras_model(cnn), "dynamic", precision="dynamic")
    convert(tf.lite.TFLiteConverter.from_keras_model(cnn), "int8", precision="int8", io="int8")
    convert(tf.lite.TFLiteConverter.from_keras_model(cnn), "uint8", precision="int8", io="uint8")

    # Fixed batch of 1 (shape_signature without -1): run() must loop sample by sample.
    fin = keras.Input((8, 8, 1), batch_size=1, name="image")
    fh = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(fin)
    fh = keras.layers.Flatten()(keras.layers.MaxPooling2D()(fh))
    fixed = keras.Model(fin, keras.layers.Dense(10, activation="softmax", name="probs")(fh))
    fixed.set_weights(cnn.get_weights())
    convert(tf.lite.TFLiteConverter.from_keras_model(fixed), "fixed_int8", precision="int8", io="int8")

    # Two inputs, two outputs (float).
    a = keras.Input((8, 8, 1), name="image")
    b = keras.Input((4,), name="meta")
    f = keras.layers.Flatten()(a)
    j = keras.layers.Concatenate()([f, b])
    logits = keras.layers.Dense(3, name="logits")(j)
    value = keras.layers.Dense(1, name="value")(keras.layers.Dense(5, activation="relu")(b))
    two = keras.Model([a, b], [logits, value])
    fx.keras["two"] = two
    convert(tf.lite.TFLiteConverter.from_keras_model(two), "two_fp32")
    _CACHE["fx"] = fx
    return fx


def bare_int_run(path: str, x: np.ndarray) -> np.ndarray:
    """Reference: quantize ``x`` by hand, run a bare LiteRT interpreter sample by sample, dequantize."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    di, do = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = di["quantization"], do["quantization"]
    info = np.iinfo(di["dtype"])
    outs = []
    for i in range(len(x)):
        q = np.clip(np.round(x[i:i + 1] / si) + zi, info.min, info.max).astype(di["dtype"])
        it.set_tensor(di["index"], q)
        it.invoke()
        outs.append((it.get_tensor(do["index"]).astype(np.float32) - zo) * so)
    return np.concatenate(outs)
