"""Low-rank factorization of ONNX ``Gemm``/``MatMul``/``Conv`` weight initializers, in the graph.

``MatMul(X, W)`` with a 2-D initializer ``W`` (m x n) becomes ``MatMul(MatMul(X, A), B)``
with ``A`` (m x r) and ``B`` (r x n) from the truncated SVD of ``W`` (see
:mod:`.lowrank`). ``Gemm(X, W, C)`` (``alpha = 1``, ``transA = 0``; ``transB`` is
folded into ``W``) becomes ``Gemm(MatMul(X, A), B, C)`` with the same ``beta``. No
fine-tuning: the accuracy cost is measured on the validation data by the caller.
``Conv(X, W, B)`` (``group = 1``, ``W``: cout x cin x kh x kw, seen as a cout x (cin kh kw)
matrix) becomes ``Conv(Conv(X, A), B', B)``: a kh x kw convolution with r filters (the
original strides, pads, dilations), then a 1 x 1 convolution to cout. ``rank="auto"``
applies the Keras rule (:mod:`.lowrank`): at most half the layer's MACs, and at least
``AUTO_MIN_SAVED_MACS_PER_POSITION`` MACs saved per output position.
"""

from __future__ import annotations

import os

import numpy as np

from edgeship.errors import ModelFormatError, UnsupportedModelError

from .lowrank import AUTO_MAX_MACS_SHARE, AUTO_MIN_SAVED_MACS_PER_POSITION, MIN_WEIGHTS, choose_rank, svd_factors
from .options import AUTO

__all__ = ["factorize_onnx"]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.f if a.type == a.FLOAT else a.i
    return default


def _why_not(m: int, n: int, r: int, rank) -> str | None:
    """Why an m x n weight is left dense at rank ``r`` (None: factorize it)."""
    if m * n < MIN_WEIGHTS:
        return f"{m * n} weights (< {MIN_WEIGHTS})"
    if r * (m + n) >= m * n:
        return f"rank {r} saves nothing for {m}x{n}"
    if rank == AUTO and r * (m + n) > AUTO_MAX_MACS_SHARE * m * n:
        return f"rank {r} keeps {r * (m + n) / (m * n):.2f}x of the MACs (auto factorizes at <= {AUTO_MAX_MACS_SHARE}x)"
    if rank == AUTO and m * n - r * (m + n) < AUTO_MIN_SAVED_MACS_PER_POSITION:
        return (f"rank {r} saves {m * n - r * (m + n):,} MACs per output position (auto needs "
                f"{AUTO_MIN_SAVED_MACS_PER_POSITION:,} for the extra op)")
    return None


def _conv_nodes(node, w, r, helper, numpy_helper, graph, inits, label):
    """The two Conv nodes replacing ``node`` at rank ``r``; ``(nodes, kept energy)``."""
    cout = w.shape[0]
    a, b, kept = svd_factors(w.reshape(cout, -1).T, r)  # (cin kh kw) x r, r x cout
    first_w = a.T.reshape(r, *w.shape[1:])
    second_w = b.T.reshape(cout, r, 1, 1)
    base = node.input[1]
    a_name, b_name, mid = f"{base}_lr_a", f"{base}_lr_b", f"{node.output[0]}_lr"
    graph.initializer.remove(inits[base])
    graph.initializer.extend([numpy_helper.from_array(first_w, a_name), numpy_helper.from_array(second_w, b_name)])
    first = helper.make_node("Conv", [node.input[0], a_name], [mid], name=f"{label}_lr")
    first.attribute.extend(node.attribute)
    second = helper.make_node("Conv", [mid, b_name, *node.input[2:]], list(node.output), name=node.name,
                              kernel_shape=[1, 1])
    return [first, second], kept


def factorize_onnx(src: str, dst: str, *, rank, energy: float) -> dict:
    """Write ``dst`` with the weight matrices of ``src`` factorized; the manifest section.

    Raises:
        ModelFormatError: ``src`` is not a readable ONNX file.
        UnsupportedModelError: nothing could be factorized.
    """
    import onnx  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    try:
        from ..onnx_safety import load_checked  # noqa: PLC0415

        model = load_checked(os.fspath(src))
    except ModelFormatError:
        raise
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict = {}
    for node in graph.node:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    layers, skipped, new_nodes = [], [], []
    before = after = 0
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        label = node.name or node.output[0]
        if node.op_type == "Conv":
            if w.ndim != 4 or int(_attr(node, "group", 1)) != 1 or users.get(node.input[1], 0) != 1:
                skipped.append({"name": label, "reason": "not a 2-D convolution with group 1 and its own weight"})
                new_nodes.append(node)
                continue
            n, m = int(w.shape[0]), int(np.prod(w.shape[1:]))
            s = np.linalg.svd(w.reshape(n, m).astype(np.float64), compute_uv=False)
            r = choose_rank(s, rank, energy)
            why = _why_not(m, n, r, rank)
            if why is not None:
                skipped.append({"name": label, "reason": why})
                new_nodes.append(node)
                continue
            nodes, kept = _conv_nodes(node, w, r, helper, numpy_helper, graph, inits, label)
            new_nodes += nodes
            layers.append({"name": label, "class": "Conv", "shape": [int(d) for d in w.shape], "rank": int(r),
                           "full_rank": int(min(m, n)), "energy": round(kept, 5), "params_before": int(m * n),
                           "params_after": int(r * (m + n))})
            before += m * n
            after += r * (m + n)
            continue
        if w.ndim != 2 or users.get(node.input[1], 0) != 1:
            skipped.append({"name": label, "reason": "weight is not a 2-D initializer used once"})
            new_nodes.append(node)
            continue
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0) or float(_attr(node, "alpha", 1.0)) != 1.0:
                skipped.append({"name": label, "reason": "Gemm with transA or alpha != 1"})
                new_nodes.append(node)
                continue
            if _attr(node, "transB", 0):
                w = w.T
        m, n = w.shape
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        r = choose_rank(s, rank, energy)
        why = _why_not(m, n, r, rank)
        if why is not None:
            skipped.append({"name": label, "reason": why})
            new_nodes.append(node)
            continue
        a, b, kept = svd_factors(w, r)
        base = node.input[1]
        a_name, b_name, mid = f"{base}_lr_a", f"{base}_lr_b", f"{node.output[0]}_lr"
        graph.initializer.remove(inits[base])
        graph.initializer.extend([numpy_helper.from_array(a, a_name), numpy_helper.from_array(b, b_name)])
        new_nodes.append(helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{label}_lr"))
        if node.op_type == "Gemm":
            beta = float(_attr(node, "beta", 1.0))
            new_nodes.append(helper.make_node("Gemm", [mid, b_name, *node.input[2:]], list(node.output),
                                              name=node.name, beta=beta))
        else:
            new_nodes.append(helper.make_node("MatMul", [mid, b_name], list(node.output), name=node.name))
        layers.append({"name": label, "class": node.op_type, "shape": [int(m), int(n)], "rank": int(r),
                       "full_rank": int(min(m, n)), "energy": round(kept, 5), "params_before": int(m * n),
                       "params_after": int(r * (m + n))})
        before += m * n
        after += r * (m + n)
    if not layers:
        raise UnsupportedModelError("low-rank: no Gemm/MatMul/Conv weight of this ONNX model is worth factorizing at this rank ("
                                    + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped)[:400] + ")")
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return {"layers": layers, "skipped": skipped, "factorized_params_before": int(before),
            "factorized_params_after": int(after), "fine_tuned": False}
