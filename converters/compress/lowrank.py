"""Low-rank factorization of Keras weight matrices by truncated SVD.

A ``Dense`` kernel ``W`` (in x out) becomes two Dense layers: ``name_lr`` (in x r, no
bias, linear) then ``name`` (r x out, the original bias and activation). A ``Conv2D``
kernel (kh, kw, cin, cout), seen as a (kh*kw*cin) x cout matrix, becomes a kh x kw
convolution with r filters (``name_lr``: the original strides, padding and dilation, no
bias) then a 1 x 1 convolution to cout (``name``: the original bias and activation). With
``W = U S V^T``, the first factor is ``U_r sqrt(S_r)``, the second ``sqrt(S_r) V_r^T``:
the product is the best rank-r approximation of ``W`` (Eckart-Young).

The layers producing the model's outputs stay dense (the class scores; small, and
sensitive). A layer is factorized only where it saves weights: ``r (m + n) < m n`` for an m x n
matrix. ``rank="auto"`` picks, per layer, the smallest r whose singular values keep
``energy`` of the sum of squared singular values (the relative Frobenius error of the
factorized kernel is then at most ``sqrt(1 - energy)``).

The model is rebuilt from its own config (Sequential or Functional, Keras 3 or tf_keras):
the new ``name_lr`` entry takes the original layer's inbound nodes and the original
name now reads ``name_lr``'s output, so nothing downstream is rewired. Every other
layer keeps its weights.

ONNX: :mod:`.lowrank_onnx` factorizes ``Gemm``/``MatMul`` initializers directly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import UnsupportedModelError

from .macs import count_macs, count_params
from .options import AUTO
from .training import is_tf_keras, keras_module

__all__ = ["LowRankResult", "factorize_keras", "choose_rank", "svd_factors", "MIN_WEIGHTS", "SUFFIX"]

SUFFIX = "_lr"
MIN_WEIGHTS = 1024  # smaller kernels are left dense: the saving does not pay for an extra op


@dataclass(frozen=True)
class LowRankResult:
    model: Any
    layers: list  # {name, class, shape, rank, full_rank, energy, params_before, params_after}
    skipped: list  # {name, reason}
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    history: list = field(default_factory=list)

    def to_manifest(self) -> dict:
        return {"layers": [dict(r) for r in self.layers], "skipped": [dict(s) for s in self.skipped],
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after}


def choose_rank(s: np.ndarray, rank, energy: float) -> int:
    """The rank kept from singular values ``s`` (descending): ``rank`` capped, or by ``energy``."""
    if rank != AUTO:
        return int(min(int(rank), len(s)))
    e = np.cumsum(np.asarray(s, np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(len(s), np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def svd_factors(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(A (m x r), B (r x n), kept energy)`` of a 2-D matrix ``w``."""
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    root = np.sqrt(s[:r])
    kept = float(np.sum(s[:r] ** 2) / max(np.sum(s ** 2), 1e-30))
    return (u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32), kept


def _entries(cfg: dict) -> list:
    return cfg["layers"]


def _entry_name(entry: dict) -> str:
    return entry.get("name") or entry["config"]["name"]


def _link(entry: dict, new_name: str, shape: list, tf_keras_cfg: bool) -> None:
    """Point ``entry``'s single inbound node at ``new_name``'s output (functional configs)."""
    if tf_keras_cfg:
        entry["inbound_nodes"] = [[[new_name, 0, 0, {}]]]
    else:
        entry["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
            "shape": shape, "dtype": "float32", "keras_history": [new_name, 0, 0]}}], "kwargs": {}}]


def _output_names(cfg: dict) -> set:
    """Names of the layers that produce a functional config's outputs."""
    outs = cfg.get("output_layers") or []
    if isinstance(outs, list) and outs and isinstance(outs[0], str):  # a single [name, node, tensor]
        outs = [outs]
    return {o[0] for o in outs if isinstance(o, (list, tuple)) and o}


def _plan_layer(layer, rank, energy: float):
    """``(factors, first config, second config, row)`` for one layer, or ``(None, reason)``."""
    cls = type(layer).__name__
    if cls not in ("Dense", "Conv2D"):
        return None, None
    cfg = layer.get_config()
    kernel = np.asarray(layer.kernel)
    if cls == "Conv2D":
        if int(cfg.get("groups", 1) or 1) != 1:
            return None, "grouped convolution"
        if cfg.get("data_format") not in (None, "channels_last"):
            return None, "channels_first convolution"
    m, n = int(np.prod(kernel.shape[:-1])), int(kernel.shape[-1])
    if m * n < MIN_WEIGHTS:
        return None, f"{m * n} weights (< {MIN_WEIGHTS})"
    w2 = kernel.reshape(m, n)
    s = np.linalg.svd(np.asarray(w2, np.float64), compute_uv=False)
    r = choose_rank(s, rank, energy)
    if r * (m + n) >= m * n:
        return None, f"rank {r} saves nothing for a {m}x{n} matrix (needs r < {m * n // (m + n)})"
    a, b, kept = svd_factors(w2, r)
    first = copy.deepcopy(cfg)
    second = copy.deepcopy(cfg)
    first.update(name=cfg["name"] + SUFFIX, use_bias=False, activation="linear")
    for k in ("kernel_regularizer", "activity_regularizer", "bias_regularizer"):
        first[k] = None
    if cls == "Dense":
        first["units"] = r
        fa = [a]
        fb_kernel = b
    else:
        first["filters"] = r
        second.update(kernel_size=[1, 1], strides=[1, 1], padding="valid", dilation_rate=[1, 1])
        fa = [a.reshape(*kernel.shape[:-1], r)]
        fb_kernel = b.reshape(1, 1, r, n)
    fb = [fb_kernel] + ([np.asarray(layer.bias)] if cfg.get("use_bias") else [])
    row = {"name": layer.name, "class": cls, "shape": [int(d) for d in kernel.shape], "rank": int(r),
           "full_rank": int(min(m, n)), "energy": round(kept, 5), "params_before": int(m * n),
           "params_after": int(r * (m + n))}
    return (fa, fb, first, second, row), None


def factorize_keras(model, *, rank, energy: float = 0.9, train_data=None, epochs: int = 2, lr: float = 1e-3,
                    seed: int = 0) -> LowRankResult:
    """A new model with the Dense/Conv2D kernels factorized (``model`` is not modified).

    Args:
        model: a built Keras 3 or tf_keras Sequential/Functional model.
        rank: an int (the same cap for every layer) or ``"auto"`` (by ``energy``).
        energy: share of the squared singular values kept by ``"auto"``.
        train_data: ``(x, y)`` to fine-tune on (``epochs`` at ``lr``); None: no fine-tuning.

    Raises:
        UnsupportedModelError: a subclassed model, or no layer could be factorized.
    """
    km = keras_module(model)
    try:
        cfg = model.get_config()
    except NotImplementedError:
        raise UnsupportedModelError("low-rank factorization rebuilds Sequential and Functional Keras models; "
                                    f"{type(model).__name__} is subclassed") from None
    if not isinstance(cfg, dict) or "layers" not in cfg:
        raise UnsupportedModelError(f"{type(model).__name__}: no layer config to rebuild")
    sequential = isinstance(model, km.Sequential)
    tfk = is_tf_keras(model)
    plans, skipped = {}, []
    shared = {_entry_name(e) for e in _entries(cfg) if len(e.get("inbound_nodes") or []) > 1}
    outputs = {model.layers[-1].name} if sequential else {_entry_name(e) for e in _entries(cfg)
                                                          if _entry_name(e) in _output_names(cfg)}
    for layer in model.layers:
        if layer.name in shared:
            skipped.append({"name": layer.name, "reason": "shared layer (called more than once)"})
            continue
        if layer.name in outputs and type(layer).__name__ in ("Dense", "Conv2D"):
            skipped.append({"name": layer.name, "reason": "output layer (kept dense: the class scores)"})
            continue
        got, reason = _plan_layer(layer, rank, energy)
        if got is not None:
            plans[layer.name] = got
        elif reason is not None:
            skipped.append({"name": layer.name, "reason": reason})
    if not plans:
        raise UnsupportedModelError(
            "low-rank: no Dense or Conv2D layer saves weights at this rank ("
            + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped)[:400] + ")")
    new_layers = []
    for entry in _entries(cfg):
        name = _entry_name(entry)
        if name not in plans:
            new_layers.append(entry)
            continue
        _fa, _fb, first, second, _row = plans[name]
        e1 = copy.deepcopy(entry)
        e2 = copy.deepcopy(entry)
        e1["config"] = first
        e2["config"] = second
        for e in (e1, e2):
            e.pop("build_config", None)
        if "name" in e1:
            e1["name"] = first["name"]
        if not sequential:
            out_shape = [None if d is None else int(d) for d in tuple(model.get_layer(name).output.shape)]
            _link(e2, first["name"], out_shape[:-1] + [_row["rank"]], tfk)
        new_layers += [e1, e2]
    cfg = {**cfg, "layers": new_layers}
    cfg.pop("build_input_shape", None) if not sequential else None
    new = (km.Sequential if sequential else km.Model).from_config(cfg)
    if not new.built:
        new.build(tuple(model.inputs[0].shape))
    for layer in new.layers:
        base = layer.name[: -len(SUFFIX)] if layer.name.endswith(SUFFIX) and layer.name[: -len(SUFFIX)] in plans \
            else None
        if base is not None:
            layer.set_weights(plans[base][0])
        elif layer.name in plans:
            layer.set_weights(plans[layer.name][1])
        else:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    history = []
    if train_data is not None:
        from .training import fit  # noqa: PLC0415

        history = fit(new, train_data[0], train_data[1], epochs=epochs, desc="low-rank fine-tune", lr=lr, seed=seed)
    rows = [p[4] for p in plans.values()]
    return LowRankResult(model=new, layers=rows, skipped=skipped, params_before=count_params(model),
                         params_after=count_params(new), macs_before=count_macs(model), macs_after=count_macs(new),
                         history=history)
