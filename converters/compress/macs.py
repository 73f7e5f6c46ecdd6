"""Parameters and multiply-accumulates (MACs) of a Keras 3 or tf_keras model.

MACs per inference (batch 1) of the layers that hold the compute: ``Conv2D``
(``out_h * out_w * kh * kw * cin / groups * cout``), ``DepthwiseConv2D``
(``out_h * out_w * kh * kw * cin * depth_multiplier``), ``SeparableConv2D``
(depthwise + pointwise), ``Conv1D`` and ``Dense`` (``units * in`` per input
row). Other layers (pooling, activations, adds, normalization) are left out: their cost
is a few operations per activation, small beside these on the models edgeship converts.
"""

from __future__ import annotations

import math

__all__ = ["count_macs", "count_params", "layer_macs"]


def _shape(layer, attr: str):
    try:
        t = getattr(layer, attr)
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(t, (list, tuple)):
        t = t[0] if t else None
    shp = getattr(t, "shape", None)
    return None if shp is None else tuple(None if d is None else int(d) for d in tuple(shp))


def _spatial(shape) -> int:
    return int(math.prod(d or 1 for d in shape[1:-1])) if shape else 1


def layer_macs(layer) -> int:
    """MACs of one layer at batch 1 (0 for the layers not counted)."""
    out = _shape(layer, "output")
    inp = _shape(layer, "input")
    if out is None or inp is None:
        return 0
    layer = getattr(layer, "layer", None) or layer  # tfmot's QuantizeWrapper / PruneLowMagnitude: the wrapped layer
    cls = type(layer).__name__
    if cls in ("Conv2D", "Conv1D"):
        k = [int(v) for v in layer.kernel.shape]  # (kh, kw, cin/groups, cout) or (k, cin/groups, cout)
        return _spatial(out) * int(math.prod(k))
    if cls == "DepthwiseConv2D":
        k = [int(v) for v in layer.depthwise_kernel.shape]  # (kh, kw, cin, mult)
        return _spatial(out) * int(math.prod(k))
    if cls == "SeparableConv2D":
        dk = [int(v) for v in layer.depthwise_kernel.shape]
        pk = [int(v) for v in layer.pointwise_kernel.shape]
        dw_spatial = _spatial(out)
        return dw_spatial * int(math.prod(dk)) + _spatial(out) * int(math.prod(pk))
    if cls == "Dense":
        rows = int(math.prod(d or 1 for d in inp[1:-1]))
        return rows * int(inp[-1]) * int(layer.units)
    return 0


def count_macs(model) -> int:
    """Total MACs of the counted layers (nested models included)."""
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "kernel"):
            total += count_macs(layer)
        else:
            total += layer_macs(layer)
    return int(total)


def count_params(model) -> int:
    """All weights (trainable and not) of the model."""
    return int(sum(int(math.prod(w.shape)) for w in model.weights))
