"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019) of Keras layer pairs.

For a layer ``A`` (``Dense``/``Conv2D``, activation ``relu``/``linear``) whose output feeds
only a layer ``B`` (``Dense``/``Conv2D``), directly or through positively homogeneous layers
(``MaxPooling2D``, ``ReLU``, ``Dropout``, and ``Flatten`` before a ``Dense``), output channel
``c`` of ``A`` can be divided by any ``s_c > 0`` and the matching input rows of ``B``
multiplied by it without changing the function (``relu(x / s) = relu(x) / s``). With
``s_c = sqrt(r1_c / r2_c)`` (``r1_c``: the largest |weight| of ``A``'s channel ``c``, ``r2_c``:
of ``B``'s rows for ``c``) both ranges become ``sqrt(r1_c r2_c)``: one channel that is
hundreds of times larger than the others (an outlier unit) no longer swamps a per-tensor
activation range or ``B``'s per-output-channel weight range. Sweeps over the pairs until
the scales settle. Used by quantization-aware training before the fake-quant ranges are
calibrated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["equalize_pairs", "equalizable_pairs"]

_PASS = ("MaxPooling2D", "MaxPool2D", "ReLU", "Dropout")
_HOMOGENEOUS = ("relu", "linear")


def _activation(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act))


def _consumers(model) -> dict:
    """layer name -> list of consumer layer names (from the model's inbound nodes)."""
    out: dict = {layer.name: [] for layer in model.layers}
    layers = list(model.layers)
    if type(model).__name__ == "Sequential":
        for a, b in zip(layers, layers[1:]):
            out[a.name].append(b.name)
        return out
    for layer in layers:
        for node in getattr(layer, "_inbound_nodes", []) or []:
            srcs = getattr(node, "inbound_layers", None)  # tf_keras
            if srcs is None:  # Keras 3
                srcs = [p.operation for p in getattr(node, "parent_nodes", None) or []]
            srcs = list(srcs) if isinstance(srcs, (list, tuple)) else [srcs]
            for src in srcs:
                if getattr(src, "name", None) in out:
                    out[src.name].append(layer.name)
    return out


def equalizable_pairs(model) -> list:
    """``[(A, B, flatten_channels or None)]`` of the model's layers that can be equalized."""
    by_name = {layer.name: layer for layer in model.layers}
    consumers = _consumers(model)
    outputs = set(getattr(model, "output_names", None) or [model.layers[-1].name])
    pairs = []
    for a in model.layers:
        if type(a).__name__ not in ("Dense", "Conv2D") or _activation(a) not in _HOMOGENEOUS or a.name in outputs:
            continue
        if type(a).__name__ == "Conv2D" and int(getattr(a, "groups", 1) or 1) != 1:
            continue
        name, flatten = a.name, None
        while True:
            nxt = consumers.get(name, [])
            if len(nxt) != 1:
                break
            layer = by_name[nxt[0]]
            cls = type(layer).__name__
            if cls == "ReLU" and (getattr(layer, "max_value", None) is not None or float(getattr(layer, "threshold", 0) or 0)):
                break
            if cls in _PASS or (cls == "Flatten" and type(a).__name__ == "Conv2D" and flatten is None):
                if layer.name in outputs:
                    nxt = []
                    break
                flatten = int(a.kernel.shape[-1]) if cls == "Flatten" else flatten
                name = layer.name
                continue
            break
        if len(nxt) != 1:
            continue
        b = by_name[nxt[0]]
        if type(b).__name__ not in ("Dense", "Conv2D") or (type(b).__name__ == "Conv2D" and flatten is not None):
            continue
        if type(b).__name__ == "Conv2D" and int(getattr(b, "groups", 1) or 1) != 1:
            continue
        pairs.append((a, b, flatten))
    return pairs


def _rows(wb: np.ndarray, channels: int, flatten: int | None, b_is_conv: bool) -> np.ndarray:
    """|B weight| max per input channel of B's kernel, as a length-``channels`` vector."""
    if b_is_conv:
        return np.max(np.abs(wb), axis=(0, 1, 3))
    if flatten:
        return np.max(np.abs(wb.reshape(-1, flatten, wb.shape[-1])), axis=(0, 2))
    return np.max(np.abs(wb), axis=1)


def _scale_rows(wb: np.ndarray, s: np.ndarray, flatten: int | None, b_is_conv: bool) -> np.ndarray:
    if b_is_conv:
        return wb * s[None, None, :, None]
    if flatten:
        return (wb.reshape(-1, flatten, wb.shape[-1]) * s[None, :, None]).reshape(wb.shape)
    return wb * s[:, None]


def equalize_pairs(model, *, sweeps: int = 20, tol: float = 1e-3) -> list:
    """Equalize the model's layer pairs in place; ``[{a, b, max_scale, min_scale}]`` (total per pair)."""
    pairs = equalizable_pairs(model)
    totals = {(a.name, b.name): None for a, b, _ in pairs}
    for _ in range(int(sweeps)):
        moved = 0.0
        for a, b, flatten in pairs:
            wa = a.get_weights()
            wb = b.get_weights()
            ka, kb = np.asarray(wa[0], np.float64), np.asarray(wb[0], np.float64)
            r1 = np.max(np.abs(ka.reshape(-1, ka.shape[-1])), axis=0)
            r2 = _rows(kb, ka.shape[-1], flatten, type(b).__name__ == "Conv2D")
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            wa[0] = (ka / s).astype(np.float32)
            if len(wa) > 1:
                wa[1] = (np.asarray(wa[1], np.float64) / s).astype(np.float32)
            wb[0] = _scale_rows(kb, s, flatten, type(b).__name__ == "Conv2D").astype(np.float32)
            a.set_weights(wa)
            b.set_weights(wb)
            key = (a.name, b.name)
            totals[key] = s if totals[key] is None else totals[key] * s
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
        if moved < tol:
            break
    return [{"a": a, "b": b, "max_scale": round(float(np.max(s)), 4), "min_scale": round(float(np.min(s)), 4)}
            for (a, b), s in totals.items() if s is not None]
