"""Full-INT8 TFLite that keeps a detector's decode head in float.

The same failure as in ONNX (:mod:`.detection_head`): the YOLO head concatenates boxes
(hundreds of pixels) and scores (0..1) into one tensor, and one INT8 scale rounds every
score to zero. Here the model is calibrated once (TFLite's calibrate-only conversion),
the decode ops are found in the calibrated graph by walking back from the outputs to the
last convolutions (:func:`head_tensors`), and the MLIR quantizer quantizes everything
else (``denylisted_nodes`` = the decode ops' output tensors). A last convolution whose
output is sliced into box and score channels (one ``5+C`` conv) stays float with them.
"""

from __future__ import annotations

__all__ = ["DECODE_OPS", "STOP_OPS", "head_tensors", "describe", "quantize_keep_head"]

DECODE_OPS = frozenset({
    "CONCATENATION", "RESHAPE", "TRANSPOSE", "LOGISTIC", "SOFTMAX", "MUL", "ADD", "SUB", "DIV", "STRIDED_SLICE",
    "SLICE", "SPLIT", "SPLIT_V", "GATHER", "PACK", "UNPACK", "EXP", "POW", "CAST", "SQUEEZE", "EXPAND_DIMS",
    "TILE", "BROADCAST_TO", "QUANTIZE", "DEQUANTIZE", "MAXIMUM", "MINIMUM",
})
STOP_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"})


def head_tensors(model_content: bytes, *, mixed_conv: bool = True) -> list:
    """Output tensor names of the decode-head ops of a (float or calibrated) TFLite model ([] when none).

    The walk goes back from the outputs through :data:`DECODE_OPS` and must end at learned
    layers (:data:`STOP_OPS`): a chain that reaches a graph input without one is not a decode
    head. With ``mixed_conv`` a last convolution whose output channels are sliced apart into
    different decode branches (boxes and scores of one tensor, e.g. a YOLO-style ``5+C`` head
    conv) is kept float as well: one INT8 output scale for box logits and class logits is the
    mixed-range failure one op earlier. (The demo detector: mAP@0.5:0.95 drop 1.34 points with
    everything INT8, 0.72 with the decode float, 0.24 with the sliced head conv float too.)
    """
    return [name for _, outs in _head_ops(model_content, mixed_conv=mixed_conv) for name in outs]


def describe(model_content: bytes, names) -> str:
    """One line for the manifest and the report: how many ops are kept in float, of which types."""
    wanted = set(names)
    counts: dict = {}
    for op_name, outs in _head_ops(model_content):
        if wanted & set(outs):
            counts[op_name] = counts.get(op_name, 0) + 1
    inner = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    return f"{sum(counts.values())} decode-head ops kept in float ({inner})"


def _head_ops(model_content: bytes, *, mixed_conv: bool = True) -> list:
    """[(op type, output tensor names)] of the head, in graph order (see :func:`head_tensors`)."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        from tensorflow.lite import Interpreter  # noqa: PLC0415

    it = Interpreter(model_content=model_content)
    ops = it._get_ops_details()  # noqa: SLF001 - the op graph has no public accessor
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    graph_inputs = {int(d["index"]) for d in it.get_input_details()}
    producer, consumers = {}, {}
    for op in ops:
        for o in op["outputs"]:
            producer[int(o)] = op
        for i in op["inputs"]:
            consumers.setdefault(int(i), []).append(op)
    seen, head, learned = set(), [], []
    stack = [producer[d["index"]] for d in it.get_output_details() if d["index"] in producer]
    while stack:
        op = stack.pop()
        if op["index"] in seen:
            continue
        seen.add(op["index"])
        name = op["op_name"]
        if name in STOP_OPS:
            src = producer.get(int(op["inputs"][0])) if len(op["inputs"]) else None
            if src is not None and src["op_name"] in ("TRANSPOSE", "RESHAPE"):
                src = producer.get(int(src["inputs"][0]))
            if src is None or src["op_name"] != "SOFTMAX":  # only the DFL expectation conv is decode
                learned.append(op)
                continue
        elif name not in DECODE_OPS:
            learned.append(op)  # any other op bounds the head as a learned layer does
            continue
        if any(int(i) in graph_inputs for i in op["inputs"]):
            return []  # decode ops all the way from the input: not a head
        head.append(op)
        stack.extend(producer[int(i)] for i in op["inputs"] if int(i) >= 0 and int(i) in producer)
    if not head or not learned or len(head) >= len(ops):
        return []
    if not {op["op_name"] for op in head} & {"CONCATENATION", "LOGISTIC", "SOFTMAX", "MUL", "ADD", "SUB", "DIV"}:
        return []
    if mixed_conv:
        head_ids = {op["index"] for op in head}
        for op in learned:
            if op["op_name"] in STOP_OPS and _sliced_apart(op, consumers, head_ids):
                head.append(op)
    return [(op["op_name"], [names[int(o)] for o in op["outputs"]]) for op in sorted(head, key=lambda o: o["index"])]


def _sliced_apart(op, consumers, head_ids) -> bool:
    """A learned op's output is split into several decode branches (channel slices / SPLIT)."""
    users = [u for o in op["outputs"] for u in consumers.get(int(o), [])]
    if not users or any(u["index"] not in head_ids for u in users):
        return False
    slices = [u for u in users if u["op_name"] in ("STRIDED_SLICE", "SLICE")]
    return len(slices) >= 2 or any(u["op_name"] in ("SPLIT", "SPLIT_V") for u in users)


def quantize_keep_head(calibrated: bytes, io_type, *, disable_per_channel: bool = False) -> tuple[bytes, list]:
    """(INT8 model bytes, the tensors kept in float) from a calibrate-only TFLite model.

    Inputs keep ``io_type``; outputs are float32 when a head is kept (boxes and scores
    cannot share one int8 scale). Returns the names as an empty list (and a plain INT8
    model) when no decode head is found.
    """
    from tensorflow.lite.python import convert as _convert  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415

    head = head_tensors(calibrated)
    # with a float head the outputs stay float: one int8 scale for boxes and scores is the failure itself
    out_type = tf.float32 if head else io_type
    flat = _convert.mlir_quantize(calibrated, disable_per_channel=disable_per_channel, input_data_type=io_type,
                                  output_data_type=out_type, denylisted_nodes=head or None)
    return flat, head
