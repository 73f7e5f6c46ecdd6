"""Bias correction of an INT8 QDQ ONNX model: each quantized convolution's per-channel mean
output shift, measured on the calibration samples, taken out of its bias.

INT8 rounding of a convolution's weights (and of its input) moves the *mean* of each output
channel: ``E[conv(Q(x), Q(W))] - E[conv(x, W)]`` is not zero, and in a deep net of small
depthwise kernels (MobileNetV2) those shifts add up layer after layer. On DeepLabV3
MobileNetV2 (PASCAL VOC) they move class boundaries: without correction the INT8 model's
masks agree with FP32's at mIoU 0.81 on the held-out photos and frames of
``benchmarks/bench_seg_deeplab.py`` and lose 2.3 points of mIoU against the labelled VOC
fixture images; with it 0.84 and 0.2 points (``python benchmarks/bench_seg_deeplab.py``).

How (the "fast bias correction" of NNCF and of Nagel et al. 2019, done on the QDQ graph
that ``quantize_static`` wrote, after calibration):

1. run the float model (the same prepared graph that was quantized, so node names match)
   on the calibration samples and read each quantized convolution's float input ``x``;
2. for each kernel tap, the mean of ``x`` (and of ``x`` through the input's own
   Quantize/Dequantize) over every output position, zero padding included: the mean of a
   convolution's output is then exactly ``sum(W * tap means)`` per output channel
   (:func:`conv_output_mean`), for any stride, dilation, padding and group count;
3. ``shift = sum(Q(W) * tap means of Q(x)) - sum(W * tap means of x)``; the int32 bias
   becomes ``round((bias - shift) / bias_scale)``. The scales and every other tensor stay
   as calibrated, so ONNX Runtime fuses the same integer kernels (same speed).

Convolutions kept in float, or without a bias, are left as they are (and counted).

Chosen by itself for multi-class maps only (:func:`wants_bias_correction`: an argmax over
class channels, whose boundaries move with each channel's mean). On a one-channel
probability map it was measured worse: PP-OCRv4's text mask vs FP32 (``python
benchmarks/bench_seg.py``) 0.769 -> 0.747 at 640x640 and 0.872 -> 0.800 at each photo's
own size, so it stays off there unless asked.

For TFLite artifacts (onnx2tf, then the TFLite converter's own calibration) the QDQ graph is
not there to edit; :func:`precompensate_weights` moves the float ONNX model's biases by the
shift that TFLite's INT8 weights will cause (TFLite rounds conv weights per output channel,
symmetric, to [-127, 127] with scale max|w|/127: known before conversion), measured the same
way on the calibration samples. Most of the shift is the weights' (ONNX Runtime path, weight
term only: -0.14 points against the VOC labels); DeepLabV3's INT8 TFLite goes from -2.67 to
-0.25 points against the VOC labels, held-out agreement 0.81 -> 0.83.
"""

from __future__ import annotations

import numpy as np

__all__ = ["wants_bias_correction", "bias_correct", "conv_output_mean", "conv_geometry", "precompensate_weights", "tap_means"]

#: at most this many calibration samples are read (the means settle long before).
MAX_SAMPLES = 64


def wants_bias_correction(output_shapes) -> bool:
    """True for a multi-class map: some 4-D output whose channel axis (1, NCHW, or 3, NHWC) is
    more than one channel on both readings (``[1,21,H,W]``, ``[1,H,W,21]``); False for a
    one-channel map (``[1,1,H,W]``, ``[1,H,W,1]``) or anything else."""
    for shape in output_shapes:
        dims = list(shape or ())
        if len(dims) == 4 and dims[1] != 1 and dims[3] != 1:
            return True
    return False


def conv_geometry(node, w_shape, x_shape) -> tuple:
    """``(pads [top, left, bottom, right], strides, dilations, group)`` of an ONNX Conv node."""
    from onnx import helper  # noqa: PLC0415

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    k = list(w_shape[2:])
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        lo, hi = [], []
        for i in range(2):
            out = -(-int(x_shape[2 + i]) // s[i])
            need = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - int(x_shape[2 + i]))
            small, big = need // 2, need - need // 2
            lo.append(small if auto == "SAME_UPPER" else big)
            hi.append(big if auto == "SAME_UPPER" else small)
        pads = [lo[0], lo[1], hi[0], hi[1]]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(a.get("pads", [0, 0, 0, 0]))
    return pads, s, d, int(a.get("group", 1))


def tap_means(x: np.ndarray, node, w_shape) -> np.ndarray:
    """``(C_in, kh, kw)``: for each kernel tap, the mean of ``x`` (``N, C, H, W``) over all the
    output positions of the Conv ``node`` (zeros where the tap falls in the padding)."""
    pads, s, d, _ = conv_geometry(node, w_shape, x.shape)
    kh, kw = int(w_shape[2]), int(w_shape[3])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))) if any(pads) else x
    h, w = xp.shape[2:]
    oh = (h - (kh - 1) * d[0] - 1) // s[0] + 1
    ow = (w - (kw - 1) * d[1] - 1) // s[1] + 1
    out = np.empty((x.shape[1], kh, kw), np.float64)
    for i in range(kh):
        for j in range(kw):
            r, c = i * d[0], j * d[1]
            sl = xp[:, :, r:r + (oh - 1) * s[0] + 1:s[0], c:c + (ow - 1) * s[1] + 1:s[1]]
            out[:, i, j] = sl.sum(axis=(0, 2, 3)) / float(sl.shape[0] * oh * ow)  # pairwise float32 sums
    return out


def conv_output_mean(w: np.ndarray, taps: np.ndarray, group: int) -> np.ndarray:
    """Per output channel mean of ``conv(x, w)`` (no bias) from ``x``'s :func:`tap_means`."""
    cout, cin_g = w.shape[0], w.shape[1]
    out_g = cout // group
    res = np.empty(cout, np.float64)
    for g in range(group):
        res[g * out_g:(g + 1) * out_g] = np.einsum(
            "oikl,ikl->o", w[g * out_g:(g + 1) * out_g].astype(np.float64), taps[g * cin_g:(g + 1) * cin_g])
    return res


def _fake_quant(x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127) if zp.dtype == np.int8 else (-32768, 32767)
    z = zp.astype(np.float32)
    return (np.clip(np.round(x / scale) + z, lo, hi) - z) * scale


def _dequant(q: np.ndarray, scale: np.ndarray, zp, axis: int) -> np.ndarray:
    q = q.astype(np.float64)
    scale = np.asarray(scale, np.float64)
    zp = np.zeros_like(scale) if zp is None else np.asarray(zp, np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def bias_correct(qdq_path: str, float_path: str, calib: np.ndarray, out_path: str | None = None) -> dict:
    """Correct the biases of the QDQ model at ``qdq_path`` (written back, or to ``out_path``).

    ``float_path``: the float graph that was quantized (its Conv node names are the QDQ
    model's). ``calib``: ``(N, ...)`` float32 samples in the model's input layout.

    Returns the manifest record ``{"method", "convs_corrected", "convs_skipped", "samples",
    "max_abs_shift", "mean_abs_shift"}``.
    """
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415
    from onnx import numpy_helper as nh  # noqa: PLC0415

    q = onnx.load(qdq_path)
    f = onnx.load(float_path)
    qinit = {i.name: i for i in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    finit = {i.name: nh.to_array(i) for i in f.graph.initializer}
    fconv = {n.name: n for n in f.graph.node if n.op_type == "Conv" and n.name}

    def const(name):
        return nh.to_array(qinit[name]) if name in qinit else None

    def dq(tensor):
        n = producer.get(tensor)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    def axis_of(node):
        return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), 1)

    jobs, skipped = [], 0
    for n in q.graph.node:
        if n.op_type != "Conv":
            continue
        fn = fconv.get(n.name)
        dx, dw = dq(n.input[0]), dq(n.input[1])
        if fn is None or dx is None or dw is None or const(dw.input[0]) is None or fn.input[1] not in finit \
                or const(dx.input[1]) is None:
            continue  # a float convolution: nothing was rounded
        if finit[fn.input[1]].ndim != 4:
            skipped += 1  # tap_means reads 2-D convolutions only
            continue
        if len(n.input) < 3 or not n.input[2]:
            skipped += 1  # no bias to move
            continue
        db = dq(n.input[2])
        if db is None and n.input[2] not in qinit:
            skipped += 1
            continue
        jobs.append((n, fn, dx, dw, db))
    samples = np.asarray(calib, dtype=np.float32)[:MAX_SAMPLES]
    record = {"method": "per-channel mean output shift of each INT8 convolution (Q(W), Q(x) vs W, x) on the "
                        "calibration samples, subtracted from its bias",
              "convs_corrected": 0, "convs_skipped": skipped, "samples": int(len(samples)),
              "max_abs_shift": 0.0, "mean_abs_shift": 0.0}
    if not jobs or not len(samples):
        return record
    acc: dict = {}
    for got in _float_inputs(f, sorted({fn.input[0] for _, fn, *_ in jobs}), samples):
        for n, fn, dx, _, _ in jobs:
            a = got[fn.input[0]]
            zp = const(dx.input[2]) if len(dx.input) > 2 and dx.input[2] else np.zeros((), np.uint8)
            shape = finit[fn.input[1]].shape
            m, mq = tap_means(a, fn, shape), tap_means(_fake_quant(a, const(dx.input[1]), zp), fn, shape)
            if n.name in acc:
                acc[n.name][0] += m
                acc[n.name][1] += mq
            else:
                acc[n.name] = [m, mq]
    shifts = []
    for n, fn, _, dw, db in jobs:
        m, mq = (v / len(samples) for v in acc[n.name])
        w = finit[fn.input[1]]
        wq = _dequant(const(dw.input[0]), const(dw.input[1]),
                      const(dw.input[2]) if len(dw.input) > 2 and dw.input[2] else None, axis_of(dw))
        group = conv_geometry(fn, w.shape, (1, w.shape[1], 8, 8))[3]
        shift = conv_output_mean(wq, mq, group) - conv_output_mean(w, m, group)
        if db is None:  # a float bias
            b = nh.to_array(qinit[n.input[2]]).astype(np.float64)
            qinit[n.input[2]].CopyFrom(nh.from_array((b - shift).astype(np.float32), n.input[2]))
        else:
            bq, bs = const(db.input[0]), const(db.input[1])
            if bq is None or bs is None:
                continue
            bs = np.broadcast_to(np.asarray(bs, np.float64), bq.shape)
            new = np.round((bq.astype(np.float64) * bs - shift) / bs)
            info = np.iinfo(bq.dtype)
            qinit[db.input[0]].CopyFrom(nh.from_array(np.clip(new, info.min, info.max).astype(bq.dtype), db.input[0]))
        shifts.append(np.abs(shift))
    if shifts:
        allv = np.concatenate(shifts)
        record.update(convs_corrected=len(shifts), max_abs_shift=float(allv.max()), mean_abs_shift=float(allv.mean()))
    onnx.save(q, out_path or qdq_path)
    return record


def _symmetric_int8(w: np.ndarray, qmax: int = 127) -> np.ndarray:
    """``w`` rounded as TFLite rounds conv weights: per output channel (axis 0 here), symmetric."""
    s = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / qmax
    s = np.where(s == 0, 1.0, s).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w / s), -qmax, qmax) * s


def _float_inputs(model, names, samples):
    """The float ``model``'s tensors ``names``, one dict per sample (ONNX Runtime, no graph
    optimization, so every tensor keeps its name)."""
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names if t not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    for x in samples:
        yield dict(zip(names, sess.run(names, {feed: x[None]})))


def precompensate_weights(src_path: str, dst_path: str, calib: np.ndarray, *, qmax: int = 127) -> dict:
    """Copy of the float ONNX model at ``src_path`` to ``dst_path`` whose Conv biases are moved
    by ``-E[conv(x, Q(W) - W)]`` (``Q``: per-output-channel symmetric rounding to ``qmax``), so
    that an INT8 converter which rounds the weights that way (TFLite) gets unbiased outputs.
    Returns the manifest record."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper as nh  # noqa: PLC0415

    m = onnx.load(src_path)
    init = {i.name: i for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in init
             and len(init[n.input[1]].dims) == 4  # 2-D convolutions (tap_means)
             and (len(n.input) < 3 or not n.input[2] or n.input[2] in init)]
    samples = np.asarray(calib, dtype=np.float32)[:MAX_SAMPLES]
    record = {"method": f"float biases moved by the mean output shift of per-channel symmetric INT8 weights "
                        f"([-{qmax}, {qmax}], as TFLite rounds them) on the calibration samples, before conversion",
              "convs_corrected": 0, "samples": int(len(samples)), "max_abs_shift": 0.0, "mean_abs_shift": 0.0}
    if not convs or not len(samples):
        onnx.save(m, dst_path)
        return record
    acc: dict = {}
    for got in _float_inputs(onnx.load(src_path), sorted({n.input[0] for n in convs}), samples):
        for n in convs:
            t = tap_means(got[n.input[0]], n, init[n.input[1]].dims)
            acc[n.name or n.output[0]] = acc.get(n.name or n.output[0], 0) + t
    shifts = []
    for n in convs:
        w = nh.to_array(init[n.input[1]]).astype(np.float64)
        group = conv_geometry(n, w.shape, (1, w.shape[1], 8, 8))[3]
        shift = conv_output_mean(_symmetric_int8(w, qmax) - w, acc[n.name or n.output[0]] / len(samples), group)
        if len(n.input) > 2 and n.input[2]:
            b = nh.to_array(init[n.input[2]]).astype(np.float64)
            init[n.input[2]].CopyFrom(nh.from_array((b - shift).astype(np.float32), n.input[2]))
        else:  # a conv without bias gets one
            name = f"{n.name or n.output[0]}_bias_corrected"
            m.graph.initializer.append(nh.from_array((-shift).astype(np.float32), name))
            while len(n.input) < 3:
                n.input.append("")
            n.input[2] = name
        shifts.append(np.abs(shift))
    allv = np.concatenate(shifts)
    record.update(convs_corrected=len(shifts), max_abs_shift=float(allv.max()), mean_abs_shift=float(allv.mean()))
    onnx.save(m, dst_path)
    return record
