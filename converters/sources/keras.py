"""Safe loading of Keras models (Keras 3, tf_keras, SavedModel, opt-in legacy ``.h5``).

A model file is data, never code. Before anything is deserialised the file is
checked against allow-lists: the config of a ``.keras`` zip or ``.h5`` file by
:mod:`.keras_safety` (every layer, op, function and nested value it names, and
every path), its HDF5 weights by :mod:`.hdf5_safety` (no byte from another
file), a SavedModel's graph, functions and initializers by
:mod:`.savedmodel_safety` (every op type). Anything not on a list raises
:class:`~edgeship.errors.UnsafeModelError` unless the caller opted in with
``allow_unsafe`` / ``--allow-unsafe``. Keras then loads with ``safe_mode=True``
as a second line of defence.

The loader registers itself in :mod:`edgeship.converters.registry` on import.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Sequence

import numpy as np

from edgeship.bundle import sha256_file
from edgeship.errors import ModelFormatError, UnsafeModelError, UnsupportedModelError

from .. import registry
from .hdf5_safety import check_hdf5, check_keras_zip_weights
from .keras_safety import UNSAFE_HINT, check_config
from .savedmodel_safety import check_saved_model

KERAS_EXTENSIONS = (".keras",)
H5_EXTENSIONS = (".h5", ".hdf5")
MAX_CONFIG_BYTES = 64 << 20

__all__ = ["load", "matches", "keras_source", "tree_sha256", "read_keras_zip", "read_h5_config", "check_config",
           "check_saved_model", "check_hdf5", "check_keras_zip_weights", "keras_flavor"]


def keras_flavor(version: str) -> str:
    """``tf_keras`` for a file written by Keras 2 (``2.x``), else ``keras3``."""
    return "tf_keras" if str(version).startswith("2.") else "keras3"


def read_keras_zip(path: str) -> tuple[dict, dict]:
    """``(config, metadata)`` of a ``.keras`` file, read as JSON without deserialising.

    Raises:
        ModelFormatError: not a zip, no ``config.json``, malformed JSON.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelFormatError(f"{path} is a zip but not a Keras model: it has no config.json")
            out = []
            for name in ("config.json", "metadata.json"):
                if name not in names:
                    out.append({})
                    continue
                if z.getinfo(name).file_size > MAX_CONFIG_BYTES:
                    raise ModelFormatError(f"{path}: {name} is larger than {MAX_CONFIG_BYTES >> 20} MB")
                out.append(json.loads(z.read(name).decode("utf-8")))
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, RuntimeError) as exc:
        raise ModelFormatError(f"{path} is not a readable .keras file (a zip with config.json): {exc}") from None
    config, metadata = out
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: config.json is not a JSON object")
    return config, metadata if isinstance(metadata, dict) else {}


def read_h5_config(path: str) -> tuple[dict, str]:
    """``(model_config, keras_version)`` of a legacy ``.h5`` file via h5py.

    Raises:
        ModelFormatError: unreadable HDF5 or no ``model_config`` attribute.
    """
    try:
        import h5py  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover
        from edgeship.errors import MissingDependencyError

        raise MissingDependencyError("h5py", "convert", "to read .h5 models") from exc
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", b"")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not a readable HDF5 file: {exc}") from None
    if raw is None:
        raise ModelFormatError(f"{path} holds weights only (no model_config); save the whole model")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: model_config is not valid JSON: {exc}") from None
    return config, str(version)


# -- loading ---------------------------------------------------------------------------


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import absl.logging  # noqa: PLC0415

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass


def _flavor(model: Any) -> str | None:
    """``keras3``, ``tf_keras`` or None for a non-Keras object (no heavy import)."""
    for cls in type(model).__mro__:
        mod = cls.__module__ or ""
        if cls.__name__ in ("Model", "Functional", "Sequential"):
            if mod == "tf_keras" or mod.startswith("tf_keras."):
                return "tf_keras"
            if mod == "keras" or mod.startswith("keras."):
                return "keras3"
    return None


def matches(model: Any) -> bool:
    """True for Keras model objects and Keras/SavedModel paths."""
    if isinstance(model, (str, os.PathLike)):
        p = os.fspath(model)
        low = p.lower()
        if low.endswith(KERAS_EXTENSIONS + H5_EXTENSIONS):
            return True
        return os.path.isdir(p) and os.path.isfile(os.path.join(p, "saved_model.pb"))
    return _flavor(model) is not None


def tree_sha256(folder: str) -> str:
    """The SavedModel folder's tree hash (:func:`edgeship.bundle.sha256_tree`, the one the bundle checks)."""
    from edgeship.bundle import sha256_tree  # noqa: PLC0415

    return sha256_tree(folder, error=ModelFormatError, what="SavedModel folder")


def _fixed_shape(shape: Sequence, input_shape: Sequence | None, origin: str) -> tuple:
    """The model's input shape with the batch fixed (1 unless ``input_shape`` says)."""
    shape = [None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape]
    if input_shape is not None:
        want = [int(d) for d in input_shape]
        if len(want) == len(shape) - 1:
            want = [1] + want
        if len(want) != len(shape):
            raise UnsupportedModelError(
                f"input_shape {tuple(input_shape)} has {len(input_shape)} dimensions but {origin} takes a "
                f"rank-{len(shape)} input shaped {tuple(shape)}"
            )
        for i, (have, w) in enumerate(zip(shape, want)):
            if have is not None and have != w and i > 0:
                raise UnsupportedModelError(
                    f"input_shape {tuple(input_shape)} conflicts with {origin}'s input shape {tuple(shape)} "
                    f"at dimension {i}"
                )
        return tuple(want)
    if shape and shape[0] is None:
        shape[0] = 1
    if any(d is None for d in shape[1:]):
        raise UnsupportedModelError(
            f"{origin} has an input shaped {tuple(shape)} with unknown dimensions; pass input_shape "
            "(--input-shape), e.g. 224,224,3"
        )
    return tuple(shape)


PREDICT_BATCH = 8  # samples per call when the converter runs the source model


def _to_numpy_list(out) -> list:
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def keras_source(model, flavor: str, fmt: str, path: str | None, sha: str | None,
                  input_shape, notes=()) -> registry.Source:
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"the model has {len(inputs)} inputs; edgeship converts single-input models"
        )
    origin = path or "the model"
    fixed = _fixed_shape(tuple(inputs[0].shape), input_shape, origin)
    dtype = getattr(inputs[0], "dtype", "float32")
    dtype = getattr(dtype, "name", str(dtype))
    outs = list(model.outputs or [])
    out_specs = []
    for i, o in enumerate(outs):
        shp = [None if d is None else int(d) for d in tuple(o.shape)]
        if shp and shp[0] is None:
            shp[0] = fixed[0]
        out_specs.append({"name": _tensor_name(o, f"output_{i}"), "shape": shp, "dtype": "float32", "quantization": None})

    graph: list = []  # the model's call traced once into a graph (see predict)

    def predict(x: np.ndarray, batch: int = PREDICT_BATCH) -> list:
        # A traced graph, not eager calls: eager TensorFlow keeps every intermediate of a
        # batch alive and its allocator keeps the peak (MobileNetV2-224, batch 32: +2.7 GB
        # RSS that stays for the rest of the conversion; the graph: +0.2 GB at batch 8).
        x = np.asarray(x, np.float32)
        if not graph:
            import tensorflow as tf  # noqa: PLC0415

            graph.append(tf.function(lambda a: model(a, training=False), reduce_retracing=True))
        parts: list = []
        for s in range(0, x.shape[0], batch):
            parts.append([np.asarray(o, np.float32) for o in _to_numpy_list(graph[0](x[s : s + batch]))])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    layout = "NHWC" if len(fixed) == 4 else "other"
    versions = {}
    if flavor == "keras3":
        import keras  # noqa: PLC0415

        versions["keras"] = keras.__version__
    else:
        import tf_keras  # noqa: PLC0415

        versions["tf_keras"] = tf_keras.__version__
    import tensorflow as tf  # noqa: PLC0415

    versions["tensorflow"] = tf.__version__
    return registry.Source(
        kind="keras", format=fmt, path=path, sha256=sha, layout=layout,
        inputs=[{"name": _tensor_name(inputs[0], "input"), "shape": list(fixed), "dtype": dtype, "quantization": None}],
        outputs=out_specs, handle=model, predict=predict, framework_versions=versions, notes=list(notes),
    )


def _tensor_name(t, fallback: str) -> str:
    name = getattr(t, "name", None)
    return name if isinstance(name, str) and name else fallback


def _load_keras_file(path: str, *, input_shape, allow_unsafe: bool) -> registry.Source:
    config, metadata = read_keras_zip(path)
    version = str(metadata.get("keras_version", ""))
    if not version:
        raise ModelFormatError(f"{path} has no keras_version in metadata.json; cannot tell Keras 3 from tf_keras")
    flavor = keras_flavor(version)
    if not allow_unsafe:
        check_config(config, path, flavor)
        check_keras_zip_weights(path)
    _quiet_tf()
    try:
        if flavor == "keras3":
            import keras  # noqa: PLC0415

            model = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe)
        else:
            import tf_keras  # noqa: PLC0415

            model = tf_keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe)
    except (ValueError, TypeError, KeyError, OSError, AttributeError, zipfile.BadZipFile) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "unsafe" in text.lower() or "lambda" in text.lower():
            raise UnsafeModelError(f"Keras refused to load {path} in safe mode: {text}; {UNSAFE_HINT}") from None
        raise ModelFormatError(f"cannot load {path} with {flavor} {version}: {text}") from None
    return keras_source(model, flavor, flavor, path, sha256_file(path), input_shape)


def _load_h5(path: str, *, input_shape, allow_unsafe: bool) -> registry.Source:
    if not allow_unsafe:
        check_hdf5(path)
    config, version = read_h5_config(path)
    flavor = "keras3" if version.startswith("3.") else "tf_keras"
    if not allow_unsafe:
        check_config(config, path, flavor, legacy=True)
    _quiet_tf()
    try:
        if flavor == "keras3":
            import keras  # noqa: PLC0415

            model = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe)
        else:
            import tf_keras  # noqa: PLC0415

            model = tf_keras.models.load_model(path, compile=False)
    except (ValueError, TypeError, KeyError, OSError, AttributeError) as exc:
        raise ModelFormatError(f"cannot load legacy .h5 model {path}: {str(exc).strip()[:300]}") from None
    return keras_source(model, flavor, "h5", path, sha256_file(path), input_shape,
                         notes=["loaded from a legacy .h5 file (opted in with allow_legacy_h5)"])


def _load_saved_model(path: str, *, input_shape, allow_unsafe: bool) -> registry.Source:
    _quiet_tf()
    if not allow_unsafe:
        check_saved_model(path)
    import tensorflow as tf  # noqa: PLC0415

    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:  # TF raises many types for corrupt SavedModels
        raise ModelFormatError(f"cannot load SavedModel {path}: {str(exc).strip().splitlines()[0][:300]}") from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise UnsupportedModelError(
            f"SavedModel {path} has no 'serving_default' signature (has {sorted(sigs)}); export it with one"
        )
    fn = sigs["serving_default"]
    _args, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise UnsupportedModelError(f"SavedModel {path} takes {len(kwargs)} inputs; edgeship converts single-input models")
    in_name, in_spec = next(iter(kwargs.items()))
    fixed = _fixed_shape(tuple(in_spec.shape.as_list()), input_shape, path)
    if input_shape is not None and tuple(d for d in in_spec.shape.as_list()[1:]) != tuple(fixed[1:]) and \
            any(d is None for d in in_spec.shape.as_list()[1:]):
        raise UnsupportedModelError(
            f"SavedModel {path} has dynamic non-batch input dimensions {tuple(in_spec.shape.as_list())}; "
            "re-export it with a fixed input shape"
        )
    out_keys = sorted(fn.structured_outputs)
    out_specs = []
    for k in out_keys:
        shp = fn.structured_outputs[k].shape.as_list()
        if shp and shp[0] is None:
            shp[0] = fixed[0]
        out_specs.append({"name": k, "shape": shp, "dtype": "float32", "quantization": None})

    def predict(x: np.ndarray, batch: int = 32) -> list:
        x = np.asarray(x, np.float32)
        parts = []
        for s in range(0, x.shape[0], batch):
            chunk = x[s : s + batch]
            if in_spec.shape.as_list()[0] is not None:  # fixed batch: run one at a time
                res = [fn(**{in_name: tf.constant(chunk[i : i + 1])}) for i in range(chunk.shape[0])]
                parts.append([np.concatenate([r[k].numpy() for r in res]) for k in out_keys])
            else:
                res = fn(**{in_name: tf.constant(chunk)})
                parts.append([res[k].numpy() for k in out_keys])
        return [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(len(out_keys))]

    return registry.Source(
        kind="keras", format="saved_model", path=path, sha256=tree_sha256(path),
        layout="NHWC" if len(fixed) == 4 else "other",
        inputs=[{"name": in_name, "shape": list(fixed), "dtype": in_spec.dtype.name, "quantization": None}],
        outputs=out_specs, handle=path, predict=predict,
        framework_versions={"tensorflow": tf.__version__},
        notes=["converted through the SavedModel's serving_default signature"],
    )


def load(model: Any, *, input_shape=None, allow_legacy_h5: bool = False, allow_unsafe: bool = False) -> registry.Source:
    """Load a Keras model safely and describe it as a :class:`~edgeship.converters.registry.Source`.

    Args:
        model: a ``.keras`` / ``.h5`` path, a SavedModel folder, or an in-memory
            Keras 3 or tf_keras model.
        input_shape: the input shape to fix (with or without the batch axis);
            needed when the model has unknown non-batch dimensions.
        allow_legacy_h5: accept legacy ``.h5`` files.
        allow_unsafe: skip the safety scan and load with ``safe_mode=False``.

    Returns:
        The loaded source model.

    Raises:
        UnsupportedModelError: an ``.h5`` without ``allow_legacy_h5``, several
            inputs, unknown input dimensions, or not a Keras model.
        UnsafeModelError: the file holds code (Lambda, foreign modules, Python ops).
        ModelFormatError: the file is missing, corrupt or truncated.
    """
    if not isinstance(model, (str, os.PathLike)):
        flavor = _flavor(model)
        if flavor is None:
            raise UnsupportedModelError(f"{type(model).__name__} is not a Keras model")
        return keras_source(model, flavor, "in_memory", None, None, input_shape)
    path = os.fspath(model)
    low = path.lower()
    if low.endswith(H5_EXTENSIONS):
        if not allow_legacy_h5:
            raise UnsupportedModelError(
                f"{path} is a legacy .h5 model; its loader is not covered by Keras' safe mode. Re-save it as "
                ".keras, or pass --allow-legacy-h5 (allow_legacy_h5=True) if you trust it"
            )
        if not os.path.isfile(path):
            raise ModelFormatError(f"model file {path} does not exist")
        return _load_h5(path, input_shape=input_shape, allow_unsafe=allow_unsafe)
    if low.endswith(KERAS_EXTENSIONS):
        if not os.path.isfile(path):
            raise ModelFormatError(f"model file {path} does not exist")
        return _load_keras_file(path, input_shape=input_shape, allow_unsafe=allow_unsafe)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _load_saved_model(path, input_shape=input_shape, allow_unsafe=allow_unsafe)
    raise UnsupportedModelError(f"{path} is not a .keras/.h5 file or a SavedModel folder")


registry.register_loader("keras", matches, load, priority=10)


