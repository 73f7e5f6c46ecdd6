"""Full-INT8 TFLite that keeps a detector's decode head in float.

The same failure as in ONNX (:mod:`.detection_head`): the YOLO head concatenates boxes
(hundreds of pixels) and scores (0..1) into one tensor, and one INT8 scale rounds every
score to zero. Here the model is calibrated once (TFLite's calibrate-only conversion),
the decode ops are found in the calibrated graph by walking back from the outputs to the
last convolutions (:func:`head_tensors`), and the MLIR quantizer quantizes everything
else (``denylisted_nodes`` = the decode ops' output tensors).
"""

from __future__ import annotations

__all__ = ["DECODE_OPS", "head_tensors", "quantize_keep_head"]

DECODE_OPS = frozenset({
    "CONCATENATION", "RESHAPE", "TRANSPOSE", "LOGISTIC", "SOFTMAX", "MUL", "ADD", "SUB", "DIV", "STRIDED_SLICE",
    "SLICE", "SPLIT", "SPLIT_V", "GATHER", "PACK", "UNPACK", "EXP", "POW", "CAST", "SQUEEZE", "EXPAND_DIMS",
    "TILE", "BROADCAST_TO", "QUANTIZE", "DEQUANTIZE", "MAXIMUM", "MINIMUM",
})
STOP_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"})


def head_tensors(model_content: bytes, *, max_fraction: float = 0.25) -> list:
    """Output tensor names of the decode ops of a (float or calibrated) TFLite model."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        from tensorflow.lite import Interpreter  # noqa: PLC0415

    it = Interpreter(model_content=model_content)
    ops = it._get_ops_details()  # noqa: SLF001 - the op graph has no public accessor
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    producer = {}
    for op in ops:
        for o in op["outputs"]:
            producer[int(o)] = op
    seen, head = set(), []
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
                continue
        elif name not in DECODE_OPS:
            continue
        head.append(op)
        stack.extend(producer[int(i)] for i in op["inputs"] if int(i) >= 0 and int(i) in producer)
    if not head or len(head) > max_fraction * max(1, len(ops)):
        return []
    if not {op["op_name"] for op in head} & {"CONCATENATION", "LOGISTIC", "SOFTMAX", "MUL", "ADD", "SUB", "DIV"}:
        return []
    return [names[int(o)] for op in sorted(head, key=lambda o: o["index"]) for o in op["outputs"]]


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
