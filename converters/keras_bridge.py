"""Bridge a Keras 3 model to tf_keras (Keras 2), proved numerically.

tensorflow-model-optimization prunes only tf_keras models, and tf_keras cannot
read a Keras 3 ``.keras`` file. :func:`bridge_to_tf_keras` rebuilds a Keras 3
Sequential or Functional model layer by layer in tf_keras from each layer's
config, copies the weights, then runs both models on the same samples and
refuses the result unless the outputs agree (max abs diff <= ``atol``).

API
---
``bridge_to_tf_keras(model, *, samples=None, atol=1e-5, seed=0) -> BridgeResult``
    ``BridgeResult(model, bridged, max_abs_diff, layers)``: ``model`` is a
    tf_keras model; ``bridged`` is False when ``model`` was a tf_keras model
    already (returned unchanged, ``max_abs_diff`` 0.0); ``layers`` names the
    class of every bridged layer.
``is_keras3_model(obj)`` / ``is_tf_keras_model(obj)``
``SUPPORTED_LAYERS``: the layer classes the bridge rebuilds.

Raises :class:`edgeship.errors.UnsupportedModelError` naming the layer (name and
class) that cannot be bridged, a subclassed or nested model, a non-float32 dtype
policy, or a bridge whose outputs differ by more than ``atol``.

Heavy imports (keras, tf_keras, tensorflow) happen inside the functions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import UnsupportedModelError, require

# Layer classes whose config and weights map one to one between Keras 3 and tf_keras.
SUPPORTED_LAYERS = frozenset(
    {
        "InputLayer",
        "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose",
        "Dense",
        "BatchNormalization", "LayerNormalization",
        "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D",
        "Flatten", "Reshape", "Permute",
        "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ActivityRegularization",
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
        "Rescaling", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
    }
)

# Keys some Keras 3 configs carry that have no tf_keras counterpart, with the
# value that makes dropping them harmless (anything else is refused).
_DROPPABLE = {
    "lora_rank": (None,),
    "lora_alpha": (None,),
    "quantization_config": (None,),
    "optional": (False,),
    "build_config": None,  # any value
    "seed": None,  # Dropout seed: only affects training noise
}

# Renamed keys (Keras 3 name -> tf_keras name) per class.
_RENAMES = {"LeakyReLU": {"negative_slope": "alpha"}}


@dataclass(frozen=True)
class BridgeResult:
    """The outcome of :func:`bridge_to_tf_keras`."""

    model: Any  # tf_keras.Model
    bridged: bool
    max_abs_diff: float
    layers: tuple = field(default_factory=tuple)  # ((name, class_name), ...)


def _keras3():
    try:
        import keras  # noqa: PLC0415
    except ImportError:
        return None
    return keras if str(getattr(keras, "__version__", "0")).startswith("3") else None


def _tf_keras():
    return require("tf_keras", "convert", "to bridge Keras 3 models to tf_keras for pruning")


def is_keras3_model(obj) -> bool:
    """True for a Keras 3 ``keras.Model`` (not tf_keras)."""
    keras = _keras3()
    return keras is not None and isinstance(obj, keras.Model)


def is_tf_keras_model(obj) -> bool:
    """True for a tf_keras (Keras 2) model."""
    mod = type(obj).__module__
    if not (mod.startswith("tf_keras") or mod.startswith("keras.src.engine") or mod.startswith("tensorflow.python.keras")):
        return False
    try:
        import tf_keras  # noqa: PLC0415
    except ImportError:
        return False
    return isinstance(obj, tf_keras.Model)


# -- config translation -------------------------------------------------------------


def _strip_serialized(value):
    """Keras 3 serialized objects ({module, class_name, config, registered_name})
    to the Keras 2 form ({class_name, config}), recursively."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return {"class_name": value["class_name"], "config": _strip_serialized(value["config"])}
        return {k: _strip_serialized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_serialized(v) for v in value)
    return value


def _dtype_name(layer_name: str, value) -> str:
    if value is None:
        return "float32"
    if isinstance(value, str):
        name = value
    elif isinstance(value, dict):
        name = value.get("config", {}).get("name") or value.get("name") or "float32"
    else:
        name = getattr(value, "name", "float32")
    if name != "float32":
        raise UnsupportedModelError(
            f"layer {layer_name!r} uses dtype policy {name!r}; the pruning bridge supports float32 models only "
            "(set the policy to 'float32' before pruning)"
        )
    return name


def _accepted_keys(cls) -> set | None:
    """Keyword arguments the tf_keras class accepts (None: anything)."""
    keys: set = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        keys.update(p for p in params if p not in ("self", "args", "kwargs"))
    # tf_keras.layers.Layer pops these from **kwargs.
    keys.update({"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                 "batch_size", "weights", "activity_regularizer", "autocast", "implementation"})
    return keys


def _translate_config(class_name: str, layer_name: str, config: dict, tk_cls) -> dict:
    cfg = dict(config)
    cfg["dtype"] = _dtype_name(layer_name, cfg.get("dtype"))
    for old, new in _RENAMES.get(class_name, {}).items():
        if old in cfg:
            cfg[new] = cfg.pop(old)
    accepted = _accepted_keys(tk_cls)
    out = {}
    for key, value in cfg.items():
        if key.endswith("_initializer"):
            continue  # weights are copied; Keras 3 initializer configs differ from tf_keras'
        if key in accepted:
            out[key] = _strip_serialized(value)
            continue
        allowed = _DROPPABLE.get(key, ())
        if key in _DROPPABLE and (allowed is None or value in allowed):
            continue
        raise UnsupportedModelError(
            f"layer {layer_name!r} ({class_name}) sets {key}={value!r}, which tf_keras' {class_name} does not "
            "support; this layer cannot be bridged for pruning"
        )
    return out


def _make_layer(tk, class_name: str, layer_name: str, config: dict):
    tk_cls = getattr(tk.layers, class_name, None)
    if class_name not in SUPPORTED_LAYERS or tk_cls is None:
        raise UnsupportedModelError(
            f"layer {layer_name!r} of class {class_name} cannot be bridged from Keras 3 to tf_keras for pruning; "
            f"supported layers: {', '.join(sorted(SUPPORTED_LAYERS))}"
        )
    cfg = _translate_config(class_name, layer_name, config, tk_cls)
    try:
        return tk_cls.from_config(cfg)
    except Exception as exc:  # a config tf_keras refuses
        raise UnsupportedModelError(
            f"layer {layer_name!r} ({class_name}) cannot be rebuilt in tf_keras: {exc}"
        ) from None


def _copy_weights(src_layer, dst_layer) -> None:
    weights = src_layer.get_weights()
    if not weights and not dst_layer.weights:
        return
    try:
        dst_layer.set_weights(weights)
    except Exception as exc:
        shapes = [tuple(w.shape) for w in weights]
        raise UnsupportedModelError(
            f"layer {src_layer.name!r} ({type(src_layer).__name__}): its weights {shapes} do not fit the "
            f"tf_keras layer ({exc})"
        ) from None


# -- graph rebuilding ---------------------------------------------------------------


def _check_layer_module(entry: dict) -> None:
    module = entry.get("module") or ""
    if module and not (module.startswith("keras.layers") or module.startswith("keras.src.layers")):
        what = entry.get("class_name")
        name = entry.get("name") or entry.get("config", {}).get("name")
        if what in ("Functional", "Sequential", "Model") or module.startswith("keras.src.models") or module == "keras":
            raise UnsupportedModelError(
                f"layer {name!r} is a nested model ({what}); the pruning bridge needs a flat model "
                "(rebuild it without nesting models)"
            )
        raise UnsupportedModelError(
            f"layer {name!r} ({module}.{what}) cannot be bridged to tf_keras for pruning: only built-in "
            "keras.layers are supported (keras.ops calls and custom layers are not)"
        )


def _rebuild_sequential(model, tk):
    cfg = model.get_config()
    entries = cfg["layers"]
    layers = {layer.name: layer for layer in model.layers}
    if not model.inputs:
        raise UnsupportedModelError(
            f"Sequential model {model.name!r} is not built (no input shape); build or call it once before pruning"
        )
    batch_shape = tuple(model.inputs[0].shape)
    inp = tk.Input(batch_shape=batch_shape, name=_input_name(entries, model))
    x = inp
    bridged = []
    for entry in entries:
        if entry["class_name"] == "InputLayer":
            continue
        _check_layer_module(entry)
        name = entry["config"]["name"]
        new = _make_layer(tk, entry["class_name"], name, entry["config"])
        x = new(x)
        _copy_weights(layers[name], new)
        bridged.append((name, entry["class_name"]))
    return tk.Model(inp, x, name=model.name), bridged


def _input_name(entries, model):
    for e in entries:
        if e["class_name"] == "InputLayer":
            return e["config"].get("name")
    return None


def _resolve(arg, tensors, layer_name):
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        src, node, idx = arg["config"]["keras_history"]
        return tensors[(src, node)][idx]
    if isinstance(arg, (list, tuple)):
        return [_resolve(a, tensors, layer_name) for a in arg]
    if isinstance(arg, dict):
        return {k: _resolve(v, tensors, layer_name) for k, v in arg.items()}
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return arg
    raise UnsupportedModelError(f"layer {layer_name!r} is called with an argument the bridge cannot rebuild: {arg!r}")


def _rebuild_functional(model, tk):
    cfg = model.get_config()
    tensors: dict = {}
    live = {layer.name: layer for layer in model.layers}
    bridged = []
    for entry in cfg["layers"]:
        cls = entry["class_name"]
        name = entry.get("name") or entry["config"]["name"]
        _check_layer_module(entry)
        if cls == "InputLayer":
            c = entry["config"]
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            _dtype_name(name, c.get("dtype"))
            tensors[(name, 0)] = [tk.Input(batch_shape=tuple(shape), name=name)]
            continue
        new = _make_layer(tk, cls, name, entry["config"])
        for node_index, node in enumerate(entry.get("inbound_nodes", [])):
            args = _resolve(node.get("args", []), tensors, name)
            kwargs = _resolve(node.get("kwargs", {}), tensors, name)
            out = new(*args, **kwargs)
            tensors[(name, node_index)] = list(out) if isinstance(out, (list, tuple)) else [out]
        _copy_weights(live[name], new)
        bridged.append((name, cls))

    def outs(spec):
        # [name, node, idx] or a list of them (nested one level for multiple outputs)
        if spec and isinstance(spec[0], str):
            return tensors[(spec[0], spec[1])][spec[2]]
        return [outs(s) for s in spec]

    inputs = outs(cfg["input_layers"])
    outputs = outs(cfg["output_layers"])
    return tk.Model(inputs, outputs, name=model.name), bridged


def _as_list(y):
    if isinstance(y, dict):
        return [np.asarray(v) for _, v in sorted(y.items())]
    if isinstance(y, (list, tuple)):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def _probe_inputs(model, samples, seed: int):
    if samples is not None:
        xs = samples if isinstance(samples, (list, tuple)) else [samples]
        return [np.asarray(x, np.float32)[:16] for x in xs]
    rng = np.random.default_rng(seed)
    probes = []
    for t in model.inputs:
        shape = [4] + [d if d is not None else 8 for d in tuple(t.shape)[1:]]
        probes.append(rng.uniform(0.0, 1.0, size=shape).astype(np.float32))
    return probes


def bridge_to_tf_keras(model, *, samples=None, atol: float = 1e-5, seed: int = 0) -> BridgeResult:
    """Rebuild a Keras 3 model in tf_keras, copy its weights and prove they agree.

    Args:
        model: a built Keras 3 Sequential or Functional model, or a tf_keras model
            (returned unchanged).
        samples: input batch(es) to compare the two models on; the first 16 rows are
            used. Default: 4 seeded uniform [0, 1) samples per input.
        atol: the largest max-abs difference accepted between the outputs.
        seed: seed of the default probe samples.

    Returns:
        BridgeResult(model, bridged, max_abs_diff, layers).

    Raises:
        UnsupportedModelError: a layer that cannot be bridged (named), a subclassed or
            nested model, or outputs that differ by more than ``atol``.
    """
    if is_tf_keras_model(model):
        return BridgeResult(model=model, bridged=False, max_abs_diff=0.0, layers=())
    if not is_keras3_model(model):
        raise UnsupportedModelError(
            f"expected a Keras 3 or tf_keras model, got {type(model).__module__}.{type(model).__name__}"
        )
    keras = _keras3()
    tk = _tf_keras()
    if isinstance(model, keras.Sequential):
        new, bridged = _rebuild_sequential(model, tk)
    elif type(model).__name__ == "Functional" or (
        hasattr(model, "_operations") and type(model).__module__.startswith("keras.src.models.functional")
    ):
        new, bridged = _rebuild_functional(model, tk)
    else:
        raise UnsupportedModelError(
            f"model {model.name!r} is a subclassed Keras model ({type(model).__name__}); the pruning bridge "
            "rebuilds Sequential and Functional models only"
        )

    probes = _probe_inputs(model, samples, seed)
    ref = _as_list(model(probes if len(probes) > 1 else probes[0], training=False))
    got = _as_list(new(probes if len(probes) > 1 else probes[0], training=False))
    if len(ref) != len(got):
        raise UnsupportedModelError(f"bridged model has {len(got)} outputs, the source has {len(ref)}")
    diff = 0.0
    for a, b in zip(ref, got):
        if a.shape != b.shape:
            raise UnsupportedModelError(f"bridged model output shape {b.shape} differs from the source's {a.shape}")
        diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
    if not np.isfinite(diff) or diff > atol:
        raise UnsupportedModelError(
            f"the tf_keras bridge of {model.name!r} does not reproduce the Keras 3 model: max abs diff "
            f"{diff:.3g} > {atol:g}; it cannot be pruned safely"
        )
    return BridgeResult(model=new, bridged=True, max_abs_diff=diff, layers=tuple(bridged))
