"""Low-rank factorization of Keras weight matrices by truncated SVD.

A ``Dense`` kernel ``W`` (in x out) becomes two Dense layers: ``name_lr`` (in x r, no
bias, linear) then ``name`` (r x out, the original bias and activation). A ``Conv2D``
kernel (kh, kw, cin, cout), seen as a (kh*kw*cin) x cout matrix, becomes a kh x kw
convolution with r filters (``name_lr``: the original strides, padding and dilation, no
bias) then a 1 x 1 convolution to cout (``name``: the original bias and activation). With
``W = U S V^T``, the first factor is ``U_r sqrt(S_r)``, the second ``sqrt(S_r) V_r^T``:
the product is the best rank-r approximation of ``W`` (Eckart-Young).

The layers producing the model's outputs stay dense (the class scores; small, and
sensitive). With an int rank, a layer is factorized wherever it saves weights:
``r (m + n) < m n`` for an m x n matrix. ``rank="auto"`` picks, per layer, the smallest r
whose singular values keep ``energy`` of the sum of squared singular values (the relative
Frobenius error of the factorized kernel is then at most ``sqrt(1 - energy)``), and
factorizes the layer only where that pays at run time: at most ``AUTO_MAX_MACS_SHARE`` of
its MACs, and at least ``AUTO_MIN_SAVED_MACS_PER_POSITION`` MACs saved per output position
for each extra op (an extra INT8 op costs about that much; measured, see the constants). A
k x k convolution is then factorized by SVD (a k x k conv with r filters, then a 1 x 1) or
by Tucker-2 (1 x 1 to r_in, k x k r_in -> r_out, 1 x 1 to cout; ranks by the same energy
budget on each channel mode), whichever needs fewer MACs.

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

__all__ = ["LowRankResult", "factorize_keras", "choose_rank", "svd_factors", "tucker2_factors", "MIN_WEIGHTS",
           "SUFFIX", "AUTO_MAX_MACS_SHARE", "AUTO_MIN_SAVED_MACS_PER_POSITION"]

SUFFIX = "_lr"
MIN_WEIGHTS = 1024  # smaller kernels are left dense: the saving does not pay for an extra op
AUTO_MAX_MACS_SHARE = 0.5  # "auto": a layer is factorized only where it then needs at most this share of its MACs
# "auto": and only where each extra op saves this many MACs per output position (a Dense layer: one position).
# Measured through the runtime (INT8 TFLite, XNNPack, the bench machine): an extra op costs about 28k MACs' time
# per output position; 3x3 convs cut to 0.28x / 0.15x of their MACs (saving 27k / 16k per position) ran 1.07x /
# 1.27x slower, one cut to 0.14x saving 127k per position ran 0.83x; the Fashion-MNIST CNN's fc1 (90k saved) 0.95x.
AUTO_MIN_SAVED_MACS_PER_POSITION = 32768

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


def _hw(layer, attr: str) -> int:
    shp = tuple(getattr(layer, attr).shape)
    return int(np.prod([d or 1 for d in shp[1:-1]]))


def tucker2_factors(kernel: np.ndarray, r_in: int, r_out: int):
    """``(U_in (cin x r_in), core (kh, kw, r_in, r_out), U_out (cout x r_out), kept energy)`` of a conv kernel.

    Tucker-2 by HOSVD on the input- and output-channel modes: ``W ~= core x3 U_in x4 U_out``;
    exact at ``r_in = cin, r_out = cout``.
    """
    w = np.asarray(kernel, np.float64)
    kh, kw, cin, cout = w.shape
    u_in = np.linalg.svd(w.transpose(2, 0, 1, 3).reshape(cin, -1), full_matrices=False)[0][:, :r_in]
    u_out = np.linalg.svd(w.reshape(-1, cout).T, full_matrices=False)[0][:, :r_out]
    core = np.einsum("hwio,ia,ob->hwab", w, u_in, u_out)
    kept = float(np.sum(core ** 2) / max(np.sum(w ** 2), 1e-30))
    return u_in.astype(np.float32), core.astype(np.float32), u_out.astype(np.float32), kept


def _mode_ranks(kernel: np.ndarray, energy: float) -> tuple[int, int]:
    """Tucker-2 ranks keeping ``1 - (1 - energy) / 2`` of each channel mode's energy (total error as SVD's)."""
    w = np.asarray(kernel, np.float64)
    cin, cout = w.shape[2], w.shape[3]
    e = 1.0 - (1.0 - energy) / 2.0
    s_in = np.linalg.svd(w.transpose(2, 0, 1, 3).reshape(cin, -1), compute_uv=False)
    s_out = np.linalg.svd(w.reshape(-1, cout).T, compute_uv=False)
    return choose_rank(s_in, AUTO, e), choose_rank(s_out, AUTO, e)


def _clean(cfg: dict, name: str) -> dict:
    out = copy.deepcopy(cfg)
    out.update(name=name, use_bias=False, activation="linear")
    for k in ("kernel_regularizer", "activity_regularizer", "bias_regularizer", "bias_initializer", "bias_constraint"):
        out.pop(k, None) if k.startswith("bias_") else out.__setitem__(k, None)
    return out


def _pointwise(cfg: dict) -> dict:
    return {**cfg, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid", "dilation_rate": [1, 1]}


def _svd_parts(layer, cfg, kernel, m, n, r):
    a, b, kept = svd_factors(kernel.reshape(m, n), r)
    first, second = _clean(cfg, cfg["name"] + SUFFIX), copy.deepcopy(cfg)
    if type(layer).__name__ == "Dense":
        first["units"] = r
        fa, fb = a, b
    else:
        first["filters"] = r
        second = _pointwise(second)
        fa, fb = a.reshape(*kernel.shape[:-1], r), b.reshape(1, 1, r, n)
    bias = [np.asarray(layer.bias)] if cfg.get("use_bias") else []
    return [(first, [fa], "out", r), (second, [fb] + bias, "out", n)], kept


def _tucker_parts(layer, cfg, kernel, r_in, r_out):
    u_in, core, u_out, kept = tucker2_factors(kernel, r_in, r_out)
    first = _pointwise({**_clean(cfg, cfg["name"] + SUFFIX + "_in"), "filters": r_in})
    mid = {**_clean(cfg, cfg["name"] + SUFFIX), "filters": r_out}
    last = _pointwise(copy.deepcopy(cfg))
    bias = [np.asarray(layer.bias)] if cfg.get("use_bias") else []
    return [(first, [u_in[None, None]], "in", r_in), (mid, [core], "out", r_out),
            (last, [u_out.T[None, None].copy()] + bias, "out", int(kernel.shape[-1]))], kept


def _plan_layer(layer, rank, energy: float, conv_method: str = "auto"):
    """``(parts, row)`` for one layer, or ``(None, reason)``; ``parts``: ``[(config, weights, "in"|"out", channels)]``
    in order, the last keeping the layer's name ("in"/"out": the part's output has the layer's input or
    output resolution)."""
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
    s = np.linalg.svd(np.asarray(kernel.reshape(m, n), np.float64), compute_uv=False)
    r = choose_rank(s, rank, energy)
    tucker_ok = cls == "Conv2D" and kernel.shape[0] * kernel.shape[1] > 1 and conv_method != "svd"
    if rank != AUTO and tucker_ok and conv_method == "tucker2":  # an explicit Tucker-2 rank: as asked
        ranks = [min(int(rank), int(kernel.shape[2])), min(int(rank), n)]
        parts, kept = _tucker_parts(layer, cfg, kernel, *ranks)
        method, macs_after = "tucker2", None
    elif rank != AUTO:  # an explicit rank: wherever it saves weights
        if r * (m + n) >= m * n:
            return None, f"rank {r} saves nothing for a {m}x{n} matrix (needs r < {m * n // (m + n)})"
        parts, kept = _svd_parts(layer, cfg, kernel, m, n, r)
        method, ranks, macs_after = "svd", r, None
    else:
        out_hw = _hw(layer, "output") if cls == "Conv2D" else 1
        macs = out_hw * m * n
        cands = [("svd", r, out_hw * r * (m + n))] if conv_method != "tucker2" or not tucker_ok else []
        if tucker_ok:
            r_in, r_out = _mode_ranks(kernel, energy)
            k2 = kernel.shape[0] * kernel.shape[1]
            cands.append(("tucker2", [r_in, r_out],
                          _hw(layer, "input") * kernel.shape[2] * r_in + out_hw * (k2 * r_in * r_out + r_out * n)))
        method, ranks, macs_after = min(cands, key=lambda c: c[2])
        extra_ops = 1 if method == "svd" else 2
        if macs_after > AUTO_MAX_MACS_SHARE * macs:
            return None, (f"{method} rank {ranks} keeps {macs_after / macs:.2f}x of the layer's {macs:,} MACs "
                          f"(auto factorizes at <= {AUTO_MAX_MACS_SHARE}x)")
        per_position = (macs - macs_after) // out_hw
        if per_position < extra_ops * AUTO_MIN_SAVED_MACS_PER_POSITION:
            return None, (f"{method} rank {ranks} saves {per_position:,} MACs per output position, less than its "
                          f"{extra_ops} extra op(s) cost (auto needs {AUTO_MIN_SAVED_MACS_PER_POSITION:,} per op)")
        if method == "svd":
            parts, kept = _svd_parts(layer, cfg, kernel, m, n, r)
        else:
            parts, kept = _tucker_parts(layer, cfg, kernel, *ranks)
    params_after = sum(int(np.prod(w[0].shape)) for _c, w, _io, _ch in parts)
    row = {"name": layer.name, "class": cls, "method": method, "shape": [int(d) for d in kernel.shape],
           "rank": ranks, "full_rank": int(min(m, n)) if method == "svd" else [int(kernel.shape[2]), n],
           "energy": round(kept, 5), "params_before": int(m * n), "params_after": int(params_after)}
    if macs_after is not None:
        row.update(macs_before=int(macs), macs_after=int(macs_after))
    return (parts, row), None


def factorize_keras(model, *, rank, energy: float = 0.9, train_data=None, epochs: int = 2, lr: float = 1e-3,
                    seed: int = 0, conv_method: str = "auto") -> LowRankResult:
    """A new model with the Dense/Conv2D kernels factorized (``model`` is not modified).

    Args:
        model: a built Keras 3 or tf_keras Sequential/Functional model.
        rank: an int (the same cap for every layer) or ``"auto"`` (by ``energy``).
        energy: share of the squared singular values kept by ``"auto"``.
        train_data: ``(x, y)`` to fine-tune on (``epochs`` at ``lr``); None: no fine-tuning.
        conv_method: how a k x k convolution (k > 1) is factorized: ``"auto"`` (with ``rank="auto"``,
            the fewer MACs of SVD and Tucker-2; with an int rank, SVD), ``"svd"`` (a k x k conv with
            r filters, then a 1 x 1) or ``"tucker2"`` (1 x 1 to r, k x k r -> r, 1 x 1 out; with an
            int rank every such convolution is factorized at ``(min(r, cin), min(r, cout))``).

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
        got, reason = _plan_layer(layer, rank, energy, conv_method)
        if got is not None:
            plans[layer.name] = got
        elif reason is not None:
            skipped.append({"name": layer.name, "reason": reason})
    if not plans:
        raise UnsupportedModelError(
            "low-rank: no Dense or Conv2D layer is worth factorizing at this rank ("
            + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped)[:400] + ")")
    new_layers, weights = [], {}
    for entry in _entries(cfg):
        name = _entry_name(entry)
        if name not in plans:
            new_layers.append(entry)
            continue
        parts, _row = plans[name]
        layer = model.get_layer(name)
        shapes = {io: [None if d is None else int(d) for d in tuple(getattr(layer, io + "put").shape)][:-1]
                  for io in ("in", "out")}
        prev = None
        for conf, ws, io, channels in parts:
            e = copy.deepcopy(entry)
            e["config"] = conf
            e.pop("build_config", None)
            if "name" in e:
                e["name"] = conf["name"]
            if prev is not None and not sequential:
                _link(e, prev[0], shapes[prev[1]] + [prev[2]], tfk)
            prev = (conf["name"], io, channels)
            weights[conf["name"]] = ws
            new_layers.append(e)
    cfg = {**cfg, "layers": new_layers}
    cfg.pop("build_input_shape", None) if not sequential else None
    new = (km.Sequential if sequential else km.Model).from_config(cfg)
    if not new.built:
        new.build(tuple(model.inputs[0].shape))
    for layer in new.layers:
        layer.set_weights(weights[layer.name] if layer.name in weights else model.get_layer(layer.name).get_weights())
    history = []
    if train_data is not None:
        from .training import fit  # noqa: PLC0415

        history = fit(new, train_data[0], train_data[1], epochs=epochs, desc="low-rank fine-tune", lr=lr, seed=seed)
    rows = [p[1] for p in plans.values()]
    return LowRankResult(model=new, layers=rows, skipped=skipped, params_before=count_params(model),
                         params_after=count_params(new), macs_before=count_macs(model), macs_after=count_macs(new),
                         history=history)
