"""INT8 for dense-map models (segmentation, text/probability maps): what to rewrite and
what to keep in float, read from the ONNX graph.

Measured on the real PP-OCRv4 text detector (DBNet, PP-LCNetV3 backbone; fixture
photos, mIoU of the 0.5-thresholded map against FP32; ``benchmarks/bench_seg.py``):
plain ``quantize_static`` gives mIoU 0.51 (the map is gone: cosine 0.03). The head is
not the cause (keeping it float changes nothing); the backbone's *decomposed* blocks
are. paddle2onnx writes every hard-swish as ``x * Clip(x + 3, 0, 6) / 6`` and every
"learnable affine block" as ``Mul(scale) -> Add(bias)`` on a convolution's output, so
INT8 requantizes each step: the product ``x * Clip(...)`` spans 0..257 for
activations of 0..43, one uint8 scale of ~1.0 for it, and every small activation
rounds away. Quantizing only those Mul/Add/Div (the rest float) already loses the map.

:func:`rewrite_for_int8` therefore rewrites the graph exactly (same function, FP32 outputs
equal to 1e-4) before calibration:

- ``Conv -> Mul(c) -> Add(d)`` with scalar or per-output-channel constants folds into
  the convolution's weights and bias (``W * c``, ``b * c + d``);
- ``x * Clip(x + 3, 0, 6) / 6`` becomes ``HardSwish(x)`` (opset 14), one op with one
  output range.

:func:`head_nodes` walks back from the map output through the head's float-friendly
ops (ConvTranspose, BatchNormalization, Sigmoid, Resize, Add ...) to the last
convolution before the head, like :mod:`.detection_head` does for detectors: the
upsampling head (two ConvTranspose at 1/4 and full resolution and the sigmoid) stays
float so the map keeps its resolution near the 0.5 threshold.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HEAD_OPS", "head_nodes", "rewrite_for_int8", "describe"]

#: op types of a segmentation head after the last learned conv: upsampling, norms, activations.
HEAD_OPS = frozenset({
    "ConvTranspose", "BatchNormalization", "Sigmoid", "Softmax", "Relu", "Resize", "Add", "Mul", "Upsample",
    "Identity", "Reshape", "Transpose", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "ArgMax", "Cast",
})


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def head_nodes(model, *, max_fraction: float = 0.1) -> list:
    """Names of a dense-map head's nodes, from the output back to (not including) the last
    ``Conv`` (``ConvTranspose`` counts as head: it is the upsampling). Empty when the
    walk would cover more than ``max_fraction`` of the graph or finds no upsampling or
    activation (then there is no head to keep)."""
    graph = model.graph
    producer = _producers(graph)
    inits = {i.name for i in graph.initializer}
    seen, head = set(), []
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in HEAD_OPS:
            continue  # the last learned conv (or anything else): stays INT8
        head.append(node)
        for name in node.input:
            if name and name not in inits and name in producer:
                stack.append(producer[name])
    ops = {n.op_type for n in head}
    if not head or len(head) > max_fraction * max(1, len(graph.node)) or not ops & {
            "ConvTranspose", "Resize", "Upsample", "Sigmoid", "Softmax"}:
        return []
    wanted = {id(n) for n in head}
    return [n.name for n in graph.node if id(n) in wanted and n.name]


def describe(model, names) -> str:
    """One line for the report (the detection head's wording, for a map head)."""
    from .detection_head import describe as describe_head  # noqa: PLC0415

    return describe_head(model, names, what="head")


def _scalar(arr) -> float | None:
    return float(arr.reshape(-1)[0]) if arr is not None and arr.size == 1 else None


def rewrite_for_int8(model) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto``, changed in place) as described in the module
    doc. Returns ``{"folded_affine": n, "hardswish": n}`` (0 and 0: nothing to rewrite)."""
    from onnx import helper  # noqa: PLC0415
    from onnx import numpy_helper as nh  # noqa: PLC0415

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}

    def const(name):
        return nh.to_array(inits[name]) if name in inits else None

    def consumers():
        out: dict = {}
        for n in graph.node:
            for i in n.input:
                out.setdefault(i, []).append(n)
        return out

    outputs = {o.name for o in graph.output}
    cons = consumers()

    def only_consumer(t):
        c = cons.get(t, [])
        return c[0] if len(c) == 1 and t not in outputs else None

    def const_input(node):
        names = [i for i in node.input if i in inits]
        others = [i for i in node.input if i not in inits]
        return (names[0], others[0]) if len(names) == 1 and len(others) == 1 else (None, None)

    drop: set = set()
    folded = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        w = const(conv.input[1]).astype(np.float32)
        cout = w.shape[0]
        b = const(conv.input[2]).astype(np.float32) if len(conv.input) > 2 and conv.input[2] in inits else \
            np.zeros(cout, np.float32)
        cur, chain = conv.output[0], []
        while True:
            nxt = only_consumer(cur)
            if nxt is None or nxt.op_type not in ("Mul", "Add"):
                break
            cname, data = const_input(nxt)
            if cname is None or data != cur:
                break
            c = const(cname).astype(np.float32)
            if c.size == 1:
                c = np.full(cout, float(c.reshape(-1)[0]), np.float32)
            elif c.size == cout and c.ndim >= 3 and c.shape[-1] == 1 and c.shape[-2] == 1:
                c = c.reshape(-1)
            else:
                break
            if nxt.op_type == "Mul":
                w, b = w * c.reshape((-1,) + (1,) * (w.ndim - 1)), b * c
            else:
                b = b + c
            chain.append(nxt)
            cur = nxt.output[0]
        if not chain:
            continue
        wn, bn = f"{conv.name or conv.output[0]}_w_folded", f"{conv.name or conv.output[0]}_b_folded"
        graph.initializer.extend([nh.from_array(w.astype(np.float32), wn), nh.from_array(b.astype(np.float32), bn)])
        data_in = conv.input[0]
        del conv.input[:]
        conv.input.extend([data_in, wn, bn])
        conv.output[0] = cur
        drop.update(id(n) for n in chain)
        folded += len(chain)

    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)

    # x * Clip(x + 3, 0, 6) / 6  ->  HardSwish(x)
    cons = consumers()
    producer = _producers(graph)
    drop, new_nodes, hs = set(), {}, 0

    def clip_bounds(node):
        if len(node.input) >= 3:
            return _scalar(const(node.input[1])), _scalar(const(node.input[2]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return attrs.get("min"), attrs.get("max")

    for div in graph.node:
        if div.op_type != "Div" or len(div.input) != 2 or _scalar(const(div.input[1])) != 6.0:
            continue
        mul = producer.get(div.input[0])
        if mul is None or mul.op_type != "Mul" or only_consumer(mul.output[0]) is not div:
            continue
        for x, other in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            clip = producer.get(other)
            if clip is None or clip.op_type != "Clip" or only_consumer(clip.output[0]) is not mul:
                continue
            if clip_bounds(clip) != (0.0, 6.0):
                continue
            add = producer.get(clip.input[0])
            if add is None or add.op_type != "Add" or only_consumer(add.output[0]) is not clip:
                continue
            cname, data = const_input(add)
            if data != x or _scalar(const(cname)) != 3.0:
                continue
            drop.update({id(add), id(clip), id(mul)})
            new_nodes[id(div)] = helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.name}_hardswish")
            hs += 1
            break
    if hs:
        nodes = [new_nodes.get(id(n), n) for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(nodes)
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 14:
                op.version = 14  # HardSwish is opset 14; nothing else in these graphs changed between 13 and 14
    used = {i for n in graph.node for i in n.input}
    dead = [i for i in graph.initializer if i.name not in used and i.name not in {v.name for v in graph.input}]
    for i in dead:
        graph.initializer.remove(i)
    return {"folded_affine": folded, "hardswish": hs}


def elementwise_const_nodes(model) -> list:
    """``Mul``/``Add``/``Sub``/``Div`` nodes with a constant operand (what is left of affine blocks
    after :func:`rewrite_for_int8`: the scale/shift after an activation, before a padded conv)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in ("Mul", "Add", "Sub", "Div") and n.name and any(i in inits for i in n.input)]


def plan_int8(model) -> dict:
    """Rewrite ``model`` in place (:func:`rewrite_for_int8`) and choose what stays float: the map
    head (:func:`head_nodes`) and the constant-operand elementwise ops
    (:func:`elementwise_const_nodes`). Returns the manifest record:
    ``{"rewrites", "head_nodes", "elementwise_float", "float_nodes", "summary"}``."""
    rewrites = rewrite_for_int8(model)
    head = head_nodes(model)
    elementwise = [n for n in elementwise_const_nodes(model) if n not in head]
    parts = []
    if rewrites["folded_affine"]:
        parts.append(f"{rewrites['folded_affine']} Mul/Add after convolutions folded into their weights")
    if rewrites["hardswish"]:
        parts.append(f"{rewrites['hardswish']} x*Clip(x+3,0,6)/6 rewritten as HardSwish")
    if head:
        parts.append(describe(model, head))
    if elementwise:
        parts.append(f"{len(elementwise)} Mul/Add with a constant operand kept in float")
    summary = "; ".join(parts) or "nothing to rewrite or keep in float"
    return {"rewrites": rewrites, "head_nodes": head, "elementwise_float": elementwise,
            "float_nodes": head + elementwise, "summary": summary}


def plan_int8_file(model, path: str) -> dict:
    """:func:`plan_int8` on ``model`` (loaded from ``path``), saved back to ``path``."""
    import onnx  # noqa: PLC0415

    record = plan_int8(model)
    onnx.save(model, path)
    return record
