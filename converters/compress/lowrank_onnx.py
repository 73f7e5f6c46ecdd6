"""Low-rank factorization of ONNX ``Gemm``/``MatMul`` weight initializers, in the graph.

``MatMul(X, W)`` with a 2-D initializer ``W`` (m x n) becomes ``MatMul(MatMul(X, A), B)``
with ``A`` (m x r) and ``B`` (r x n) from the truncated SVD of ``W`` (see
:mod:`.lowrank`). ``Gemm(X, W, C)`` (``alpha = 1``, ``transA = 0``; ``transB`` is
folded into ``W``) becomes ``Gemm(MatMul(X, A), B, C)`` with the same ``beta``. No
fine-tuning: the accuracy cost is measured on the validation data by the caller.
Convolutions are left as they are.
"""

from __future__ import annotations

import os

import numpy as np

from edgeship.errors import ModelFormatError, UnsupportedModelError

from .lowrank import MIN_WEIGHTS, choose_rank, svd_factors

__all__ = ["factorize_onnx"]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.f if a.type == a.FLOAT else a.i
    return default


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
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        label = node.name or node.output[0]
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
        if m * n < MIN_WEIGHTS or r * (m + n) >= m * n:
            skipped.append({"name": label, "reason": f"rank {r} saves nothing for {m}x{n}" if m * n >= MIN_WEIGHTS
                            else f"{m * n} weights (< {MIN_WEIGHTS})"})
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
        raise UnsupportedModelError("low-rank: no Gemm/MatMul weight of this ONNX model saves weights at this rank ("
                                    + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped)[:400] + ")")
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return {"layers": layers, "skipped": skipped, "factorized_params_before": int(before),
            "factorized_params_after": int(after), "fine_tuned": False}
