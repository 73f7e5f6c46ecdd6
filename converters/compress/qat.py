"""Quantization-aware training with tensorflow-model-optimization (``quantize_apply``).

tfmot quantizes tf_keras models only; Keras 3 models go through the verified tf_keras
bridge (:mod:`edgeship.converters.keras_bridge`) first. The fake-quantized model is
fine-tuned on the training data, then exported by the usual TFLite INT8 path (the
converter takes the ranges the fake-quant nodes learned). A pruned model is quantized
with tfmot's prune-preserving scheme, so QAT keeps its zeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgeship.errors import UnsupportedModelError, require

from ..keras_bridge import bridge_to_tf_keras
from .training import fit

__all__ = ["QatResult", "qat_keras", "tfmot_module", "dense_activation_config"]


@dataclass(frozen=True)
class QatResult:
    model: Any  # the fake-quantized tf_keras model
    record: dict
    history: list = field(default_factory=list)


def tfmot_module():
    """tfmot, with ``TF_USE_LEGACY_KERAS`` left as it was (importing tfmot sets it)."""
    tf = require("tensorflow", "convert", "for quantization-aware training")
    require("tf_keras", "convert", "for quantization-aware training")
    prev = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        getattr(tf.keras, "version", None)
        return require("tensorflow_model_optimization", "convert", "for quantization-aware training")
    finally:
        if prev is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = prev


def _calibrate_ranges(qmodel, float_model, x) -> None:
    """Start the activation fake-quant ranges at the float model's observed min/max on ``x``.

    tfmot's moving-average ranges start at [-6, 6] and move with decay 0.999: a short
    fine-tuning never reaches an activation range of hundreds, which clips it (measured:
    a Dense unit scaled 300x collapses a digits MLP to 10% after QAT without this).
    """
    import numpy as np  # noqa: PLC0415
    import tf_keras  # noqa: PLC0415

    wanted = {}
    for layer in qmodel.layers:
        names = {w.name.split("/")[-1].split(":")[0]: w for w in layer.non_trainable_weights}
        if "post_activation_min" in names and getattr(layer, "layer", None) is not None:
            wanted[layer.layer.name] = (names["post_activation_min"], names["post_activation_max"])
        elif "quantize_layer_min" in names:
            lo, hi = float(np.min(x)), float(np.max(x))
            names["quantize_layer_min"].assign(min(lo, 0.0))
            names["quantize_layer_max"].assign(max(hi, 0.0))
    have = [n for n in wanted if n in {layer.name for layer in float_model.layers}]
    if not have:
        return
    x = np.asarray(x, np.float32)
    try:
        probe = tf_keras.Model(float_model.inputs, [float_model.get_layer(n).output for n in have])
        outs = probe.predict(x, verbose=0, batch_size=256)
        outs = outs if isinstance(outs, list) else [outs]
    except ValueError:  # layer outputs not reachable from model.inputs (a stripped pruned Sequential)
        if not isinstance(float_model, tf_keras.Sequential):
            return
        got, h = {}, x
        for layer in float_model.layers:
            h = layer(h, training=False)
            got[layer.name] = np.asarray(h)
        outs = [got[n] for n in have]
    for n, out in zip(have, outs):
        lo_v, hi_v = wanted[n]
        lo_v.assign(min(float(np.min(out)), 0.0))
        hi_v.assign(max(float(np.max(out)), 0.0))


def dense_activation_config(tfmot):
    """A tfmot ``QuantizeConfig`` for Dense layers: the output fake-quantized, the kernel not.

    tfmot's default quantizes Dense kernels per tensor, TFLite's post-training path per
    output channel; a Dense layer with one large column then loses every other column
    under QAT (measured, ``benchmarks/bench_compress.py``: an fc1 unit scaled 200x, INT8
    accuracy 21.66% after QAT vs 94.21% post-training). Per-axis fake-quant on a Dense
    kernel is refused by the TFLite converter ("tfl.transpose op has mismatched quantized
    axes"), so the kernel is left to the converter, which quantizes it per channel.
    """
    q = tfmot.quantization.keras

    class DenseActivationQuantizeConfig(q.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return [(layer.activation, q.quantizers.MovingAverageQuantizer(
                num_bits=8, symmetric=False, narrow_range=False, per_axis=False))]

        def set_quantize_weights(self, layer, quantize_weights):
            return None

        def set_quantize_activations(self, layer, quantize_activations):
            layer.activation = quantize_activations[0]

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return DenseActivationQuantizeConfig()


def _annotate_dense(model, q, config):
    """A copy of the tf_keras ``model`` (same weights) with its Dense layers annotated with ``config``."""
    import tf_keras  # noqa: PLC0415

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        return q.quantize_annotate_layer(fresh, config) if isinstance(layer, tf_keras.layers.Dense) else fresh

    out = tf_keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    return out


def _equalized(model):
    """A copy of the tf_keras ``model`` with its layer pairs cross-layer equalized; ``(copy, pairs)``."""
    import tf_keras  # noqa: PLC0415

    from .equalize import equalize_pairs  # noqa: PLC0415

    out = tf_keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    return out, equalize_pairs(out)


def qat_keras(model, train, *, epochs: int, lr: float, seed: int = 0, preserve_sparsity: bool = False,
              equalize: bool = True, cosine: bool = True) -> QatResult:
    """Fake-quantize ``model`` (not modified) and fine-tune it on ``train`` = ``(x, y)``.

    ``equalize``: cross-layer equalization (:mod:`.equalize`, the same function) before the
    fake-quant nodes go in, so that one outlier channel does not swamp a per-tensor range;
    ``cosine``: the learning rate decays from ``lr`` to 0 over the fine-tuning.

    Raises:
        UnsupportedModelError: the bridge cannot rebuild the model, or tfmot has no
            quantization for one of its layers (named in the message).
    """
    tfmot = tfmot_module()
    x, y = train
    bridge = bridge_to_tf_keras(model, samples=x[:16], seed=seed)
    q = tfmot.quantization.keras
    float_model, pairs = _equalized(bridge.model) if equalize else (bridge.model, [])
    try:
        config = dense_activation_config(tfmot)
        annotated = q.quantize_annotate_model(_annotate_dense(float_model, q, config))
        with q.quantize_scope({type(config).__name__: type(config)}):
            if preserve_sparsity:
                qmodel = q.quantize_apply(annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
            else:
                qmodel = q.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UnsupportedModelError(f"quantization-aware training: tfmot cannot quantize this model: {exc}") from None
    _calibrate_ranges(qmodel, float_model, x[:512])
    history = fit(qmodel, x, y, epochs=epochs, desc="quantization-aware training", lr=lr, seed=seed, cosine=cosine)
    record = {"method": "tensorflow-model-optimization quantize_apply (8-bit; convolution weights per channel, "
                        "Dense weights left to the converter's per-channel INT8, activations fake-quantized with "
                        "ranges started at the float model's min/max)"
                        + (", prune-preserving scheme" if preserve_sparsity else "")
                        + (", after cross-layer equalization" if pairs else ""),
              "epochs": int(epochs), "learning_rate": float(lr), "schedule": "cosine" if cosine else "constant",
              "equalized_pairs": pairs, "train_count": int(len(x)),
              "bridged": bool(bridge.bridged), "bridge_max_abs_diff": float(bridge.max_abs_diff)}
    return QatResult(model=qmodel, record=record, history=history)
