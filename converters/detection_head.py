"""Find a detector's decode head in an ONNX graph, so INT8 keeps it in float.

A YOLO/SSD export ends in a *decode*: the last convolutions give box
regressions and class logits as separate tensors, then a chain of
reshape/transpose/concat/sigmoid/softmax (and for YOLOv8 the DFL softmax +
1x1 conv, grid offsets, stride multiply) turns them into one output
``[1, 4+C, N]`` where box coordinates (hundreds of pixels) and class scores
(0..1) share a tensor. Quantizing that chain per-tensor gives boxes and scores
one INT8 scale, so either every score rounds to 0 or the boxes lose all
resolution: the "INT8 YOLO finds nothing" failure.

:func:`head_nodes` walks back from every graph output through the decode op
types and stops at the last convolutions (which stay INT8: each has its own
output scale). The DFL 1x1 conv fed by a softmax is part of the decode, not
a learned last conv. The walk is purely structural (op types and edges), so it
is the same on every conversion and is recorded by node name in the manifest.
A walk bounded by learned layers is a head whatever its share of the graph (a small
detector's decode can be most of it); a last conv whose output is sliced into box and
score channels (one ``5+C`` conv) stays float with the decode, as in :mod:`.tflite_head`.
"""

from __future__ import annotations

__all__ = ["DECODE_OPS", "STOP_OPS", "head_nodes", "describe"]

#: op types that make up a decode chain (shape plumbing, activations, arithmetic).
DECODE_OPS = frozenset({
    "Concat", "Reshape", "Transpose", "Split", "Slice", "Sigmoid", "Softmax", "Mul", "Add", "Sub", "Div",
    "Gather", "Unsqueeze", "Squeeze", "Flatten", "Exp", "Pow", "Cast", "Identity", "Expand", "Tile",
    "ReduceMax", "ArgMax", "TopK", "NonMaxSuppression", "GatherElements", "GatherND", "Clip", "Where",
    "Shape", "ConstantOfShape", "Range",
})
#: learned layers: the walk stops here (they stay INT8) unless fed by the decode itself (YOLOv8's DFL).
STOP_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def head_nodes(model, *, max_fraction: float = 0.25) -> list:
    """Names of the nodes of the decode head (empty when the graph has none).

    ``model`` is an ``onnx.ModelProto``. Returns the names in graph order. When
    the walk would cover more than ``max_fraction`` of the graph (no learned
    layer near the outputs: not a detection head), nothing is returned.
    """
    graph = model.graph
    producer = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
    inits = {i.name for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - inits
    seen: set = set()
    head: set = set()
    learned: list = []  # the learned layers that bound the walk
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        key = id(node)
        if key in seen:
            continue
        seen.add(key)
        if node.op_type in STOP_OPS:
            src = producer.get(node.input[0]) if node.input else None
            # a conv whose data comes from a softmax (DFL: expectation over bins) is decode
            if src is None or src.op_type not in ("Softmax", "Transpose"):
                learned.append(node)
                continue
            if src.op_type == "Transpose":
                up = producer.get(src.input[0])
                if up is None or up.op_type != "Softmax":
                    learned.append(node)
                    continue
        elif node.op_type not in DECODE_OPS:
            learned.append(node)
            continue
        if any(i in graph_inputs for i in node.input):
            return []  # decode ops all the way from the input: not a head
        head.add(key)
        for name in node.input:
            if name and name not in inits and name in producer:
                stack.append(producer[name])
    # a small detector's decode can be most of its graph: the fraction applies only to a walk
    # that no learned layer bounded
    if not head or (not learned and len(head) > max_fraction * max(1, len(graph.node))):
        return []
    # a head that is only reshapes/identity carries no mixing: nothing to keep in float
    ops = {n.op_type for n in graph.node if id(n) in head}
    if not ops & {"Concat", "Sigmoid", "Softmax", "Mul", "Add", "Sub", "Div", "Exp"}:
        return []
    # a last conv whose output channels are sliced apart into boxes and scores (one 5+C conv)
    # gives both one INT8 output scale: it is part of the mixed-range failure, kept float too
    users: dict = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for n in learned:
        if n.op_type != "Conv":
            continue
        outs = [u for o in n.output for u in users.get(o, [])]
        if outs and all(id(u) in head for u in outs) and (
                sum(u.op_type == "Slice" for u in outs) >= 2 or any(u.op_type == "Split" for u in outs)):
            head.add(id(n))
    return [n.name for n in graph.node if id(n) in head and n.name]


def describe(model, names, what: str = "decode-head") -> str:
    """One line for the report: how many nodes, which op types (``what``: whose head)."""
    wanted = set(names)
    ops: dict = {}
    for n in model.graph.node:
        if n.name in wanted:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    inner = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
    return f"{len(wanted)} {what} nodes kept in float ({inner})"
