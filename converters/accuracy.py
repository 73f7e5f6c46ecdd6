"""Accuracy-aware INT8: per-layer quantization error, and keeping sensitive layers in float.

TFLite's converter quantizes every op it can and has no accuracy loop. This module
adds one for full-INT8 TFLite artifacts:

1. :class:`TfliteLayerErrors` calibrates the model once through
   ``tf.lite.experimental.QuantizationDebugger`` (NumericVerify ops: each
   quantized op is compared with its float twin fed the same dequantized input)
   and measures, per quantized op output tensor, the RMSE, ``rmse/scale`` (the
   TFLite debugger tutorial's metric: about 0.29 for well-behaved uniform
   rounding) and a per-layer SQNR in dB: the RMS of the float activation (from
   the float model, run on the same samples) over that RMSE. Layers are ranked
   by SQNR (lowest first): a tensor whose range is blown up by a few outliers
   has ordinary ``rmse/scale`` but a very low SQNR.
2. :func:`tflite_fallback` keeps the most sensitive layers in float one at a
   time (``denylisted_nodes`` of the MLIR quantizer, applied to the calibrated
   model the debugger already holds, so no re-calibration), re-validating each
   attempt with a caller-supplied function, until the accuracy drop is within
   ``max_drop`` or the attempts run out. A layer kept in float also keeps its
   consumers in float: otherwise the consumer would re-quantize the same tensor
   with the same outlier-dominated scale and nothing would be gained.

For ONNX (INT8 QDQ from :func:`edgeship.converters.onnx_quant.quantize_onnx`):

3. :class:`OnnxNodeErrors` quantizes once and runs the float and QDQ models
   with every intermediate tensor exposed (``onnxruntime.quantization.
   qdq_loss_debug``); per activation tensor, the SQNR of its quantize-dequantize
   (local) and of the QDQ model vs the float model (accumulated). Tensors are
   ranked by the local SQNR, lowest first.
4. :func:`onnx_fallback` adds the producer and the consumers of the worst
   tensor to ``quantize_onnx``'s ``exclude`` (node names kept in float), one
   tensor at a time, re-quantizing and re-validating each attempt until the drop
   is within ``max_drop``. ``convert()`` does not call it yet (its
   ``auto_fallback`` covers TFLite artifacts); it is a library API for now.

Float fallback needs float kernels, so attempts are converted with
``TFLITE_BUILTINS`` alongside ``TFLITE_BUILTINS_INT8``; the requested integer
I/O type is kept.

TensorFlow is imported inside the functions (the ``convert`` extra).
"""

from __future__ import annotations

import csv
import re
import io as _io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeship.errors import UnsupportedModelError

from .registry import ExportRequest, IOType, Precision

# at most this many calibration samples feed the debugger (it runs op by op)
DEBUG_SAMPLES = 64
MAX_ATTEMPTS = 8


def _match_layer(name: str, layer_names) -> str | None:
    for p in (p for seg in name.split(";") for p in seg.split("/")):
        if p in layer_names:
            return p
        base = re.sub(r"_\d+$", "", p)  # Keras 3 export suffixes layer scopes with _1
        if base in layer_names:
            return base
    return None


def _short(names, layer_names=()) -> str:
    """A readable layer name for an op, from its output then its input tensor names
    (``sequential_1/dense_1/MatMul;...`` -> ``dense``)."""
    for n in names:
        hit = _match_layer(n, layer_names)
        if hit:
            return hit
    first = names[0].split(";")[0] if names else "?"
    bits = first.split("/")
    return bits[1] if len(bits) > 2 else first[:60]


@dataclass
class LayerError:
    tensor: str  # op output tensor name (what denylisted_nodes takes)
    layer: str  # readable name (the Keras layer when it can be found)
    op: str
    scale: float
    rmse: float
    rmse_over_scale: float
    sqnr_db: float | None
    consumers: list = field(default_factory=list)  # output tensors of the ops reading this tensor
    producers: list = field(default_factory=list)  # output tensors of the ops feeding this op

    def to_dict(self) -> dict:
        return {"layer": self.layer, "op": self.op, "tensor": self.tensor, "scale": self.scale, "rmse": self.rmse,
                "rmse_over_scale": self.rmse_over_scale, "sqnr_db": self.sqnr_db}


class TfliteLayerErrors:
    """Calibrate once with the QuantizationDebugger; measure per-layer error; requantize with denylists.

    Args:
        source: the Keras source to quantize (``registry.Source`` of kind keras).
        request: the INT8 export request (its ``calib`` samples are used).
        samples: at most this many calibration samples are run through the debugger.

    Raises:
        UnsupportedModelError: the converter or the debugger rejects the model.
    """

    def __init__(self, source, request: ExportRequest, *, samples: int = DEBUG_SAMPLES) -> None:
        from .tflite import _make_converter, quiet  # noqa: PLC0415

        if request.precision is not Precision.INT8:
            raise UnsupportedModelError(f"per-layer fallback applies to int8, not {request.precision.value}")
        calib = np.asarray(request.calib, np.float32)
        self.calib = calib
        dbg_x = calib[: max(1, min(samples, len(calib)))]
        self.io = request.io
        t0 = time.perf_counter()
        with quiet() as captured:
            import tensorflow as tf  # noqa: PLC0415

            self.tf = tf
            try:
                fconv, _ = _make_converter(source, request)
                self.float_model = fconv.convert()
                conv, _ = _make_converter(source, request)
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
                self.disable_per_channel = bool(getattr(conv, "_experimental_disable_per_channel", False))
                self.debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv,
                    debug_dataset=lambda: ([dbg_x[i:i + 1]] for i in range(len(dbg_x))),
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(),
                )
                self.debugger.run()
                buf = _io.StringIO()
                self.debugger.layer_statistics_dump(buf)
            except Exception as exc:  # ConverterError, ValueError from the debugger
                raise UnsupportedModelError(
                    f"the TFLite QuantizationDebugger failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                ) from None
        del captured
        self.calibrated_model = self.debugger.calibrated_model
        layer_names = set()
        handle = getattr(source, "handle", None)
        for lyr in getattr(handle, "layers", []) or []:
            layer_names.add(lyr.name)
        rms = self._float_rms(dbg_x)
        consumers, producers, op_inputs = self._graph()
        rows = list(csv.DictReader(_io.StringIO(buf.getvalue())))
        layers = []
        for r in rows:
            name = r["tensor_name"]
            mse = float(r.get("mean_squared_error") or 0.0)
            scale = float(r.get("scale") or 0.0)
            rmse = math.sqrt(max(mse, 0.0))
            sig = rms.get(name)
            sqnr = None
            if sig is not None and sig > 0:
                sqnr = 99.0 if rmse == 0 else float(20 * math.log10(sig / rmse))
            layers.append(LayerError(
                tensor=name, layer=_short([name, *op_inputs.get(name, [])[1:], *op_inputs.get(name, [])[:1]], layer_names), op=str(r.get("op_name", "")), scale=scale, rmse=rmse,
                rmse_over_scale=(rmse / scale) if scale > 0 else 0.0, sqnr_db=sqnr,
                consumers=consumers.get(name, []), producers=producers.get(name, []),
            ))
        # lowest SQNR first; layers without a float reference go by rmse/scale after them
        layers.sort(key=lambda e: (e.sqnr_db is None, e.sqnr_db if e.sqnr_db is not None else -e.rmse_over_scale))
        self.layers = layers
        self.seconds = time.perf_counter() - t0

    # -- measurements ----------------------------------------------------------------

    def _interpreter(self, content: bytes, **kw):
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
        except ImportError:  # pragma: no cover
            Interpreter = self.tf.lite.Interpreter
        return Interpreter(model_content=content, **kw)

    def _float_rms(self, x: np.ndarray) -> dict:
        """RMS of every float activation tensor over ``x`` (by tensor name)."""
        from .tflite import quiet  # noqa: PLC0415

        with quiet():
            it = self._interpreter(self.float_model, experimental_preserve_all_tensors=True)
            it.allocate_tensors()
            ind = it.get_input_details()[0]
            details = [d for d in it.get_tensor_details() if np.dtype(d["dtype"]) == np.float32]
            sums: dict = {}
            for i in range(len(x)):
                it.set_tensor(ind["index"], x[i:i + 1].astype(np.float32))
                it.invoke()
                for d in details:
                    try:
                        v = it.get_tensor(d["index"])
                    except ValueError:
                        continue
                    s = sums.setdefault(d["name"], [0.0, 0])
                    s[0] += float(np.sum(np.square(v, dtype=np.float64)))
                    s[1] += int(v.size)
        return {k: math.sqrt(s / n) for k, (s, n) in sums.items() if n}

    def _graph(self) -> tuple:
        """From the calibrated model, keyed by op output tensor name: (consumer op outputs,
        producer op outputs, input tensor names)."""
        it = self._interpreter(self.calibrated_model)
        names = {d["index"]: d["name"] for d in it.get_tensor_details()}
        consumers: dict = {}
        producers: dict = {}
        inputs: dict = {}
        try:
            ops = it._get_ops_details()  # noqa: SLF001 - the debugger itself relies on it
        except AttributeError:  # pragma: no cover
            return consumers, producers, inputs
        made_by = {}
        for op in ops:
            outs = [names.get(int(t)) for t in op["outputs"] if int(t) >= 0]
            for o in outs:
                made_by[o] = outs[0]
        for op in ops:
            outs = [n for n in (names.get(int(t)) for t in op["outputs"] if int(t) >= 0) if n]
            ins = [n for n in (names.get(int(t)) for t in op["inputs"] if int(t) >= 0) if n]
            for o in outs:
                inputs[o] = ins
                producers[o] = [made_by[i] for i in ins if i in made_by]
            for i in ins:
                consumers.setdefault(i, []).extend(outs)
        return consumers, producers, inputs

    def quantize(self, denylist=()) -> bytes:
        """The INT8 model with the ``denylist`` op output tensors kept in float."""
        from tensorflow.lite.python import convert as _convert  # noqa: PLC0415

        from .tflite import quiet  # noqa: PLC0415

        tf = self.tf
        io_type = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.FLOAT: tf.float32}[self.io]
        with quiet():
            return _convert.mlir_quantize(
                self.calibrated_model,
                disable_per_channel=self.disable_per_channel,
                input_data_type=io_type,
                output_data_type=io_type,
                denylisted_nodes=list(denylist) or None,
            )

    def top(self, n: int = 10) -> list:
        return [e.to_dict() for e in self.layers[:n]]


@dataclass
class FallbackResult:
    ok: bool
    model: bytes | str | None  # the best attempt's flatbuffer (TFLite) or file path (ONNX)
    metrics: dict | None  # its validation metrics
    kept_float: list  # readable layer names kept in float (best attempt)
    denylist: list  # tensor names passed to the quantizer (best attempt)
    attempts: list  # [{kept_float, drop_points, bytes, gzip_bytes, accuracy, top1_agreement}]
    layer_errors: list  # top-10 LayerError dicts
    seconds: float


def _gzip_len(data: bytes) -> int:
    import gzip  # noqa: PLC0415

    return len(gzip.compress(data, compresslevel=9, mtime=0))


def tflite_fallback(errors: TfliteLayerErrors, evaluate: Callable[[str], dict], *, max_drop: float,
                    baseline: dict, workdir: str, max_attempts: int | None = None) -> FallbackResult:
    """Keep the most sensitive layers in float, one at a time, until the drop is within ``max_drop``.

    Args:
        errors: a measured :class:`TfliteLayerErrors`.
        evaluate: ``evaluate(path) -> metrics`` (``edgeship.metrics.compare`` keys; it may raise
            ``ValidationFailedError`` for a collapsed attempt, counted as a 100-point drop).
        max_drop: allowed accuracy (or agreement) drop in points.
        baseline: ``{"drop_points", "bytes", "gzip_bytes"}`` of the plain INT8 artifact.
        workdir: scratch folder for attempt files.
        max_attempts: at most this many layers are tried (default :data:`MAX_ATTEMPTS`).
    """
    from edgeship import metrics as _metrics  # noqa: PLC0415
    from edgeship.errors import ValidationFailedError  # noqa: PLC0415

    max_attempts = MAX_ATTEMPTS if max_attempts is None else int(max_attempts)
    t0 = time.perf_counter()
    attempts = [{"kept_float": [], "drop_points": baseline.get("drop_points"), "bytes": baseline.get("bytes"),
                 "gzip_bytes": baseline.get("gzip_bytes"), "accuracy": baseline.get("accuracy"),
                 "top1_agreement": baseline.get("top1_agreement")}]
    best = None  # (drop, model, metrics, kept, deny)
    kept: list = []
    deny: list = []
    by_tensor = {e.tensor: e for e in errors.layers}
    queue = list(errors.layers)
    i = 0
    while queue and i < max_attempts:
        cand = queue.pop(0)
        if cand.tensor in deny:
            continue
        i += 1
        kept.append(cand.layer)
        for t in [cand.tensor, *cand.consumers]:
            if t not in deny:
                deny.append(t)
        try:
            flat = errors.quantize(deny)
        except Exception as exc:  # the quantizer rejects this denylist: skip the layer
            attempts.append({"kept_float": list(kept), "drop_points": None, "error": str(exc).splitlines()[0][:200]})
            kept.pop()
            continue
        path = os.path.join(workdir, f"attempt{i}.tflite")
        with open(path, "wb") as fh:
            fh.write(flat)
        try:
            m = evaluate(path)
            drop = float(_metrics.drop_points(m))
        except ValidationFailedError:
            m, drop = None, 100.0
        attempts.append({"kept_float": list(kept), "drop_points": drop, "bytes": len(flat),
                         "gzip_bytes": _gzip_len(flat),
                         "accuracy": (m or {}).get("accuracy"), "top1_agreement": (m or {}).get("top1_agreement")})
        if best is None or drop < best[0]:
            best = (drop, flat, m, list(kept), list(deny))
        if drop <= max_drop:
            break
        # the tensor into a float layer is still quantized by its producer: try that producer next
        front = [by_tensor[p] for p in cand.producers if p in by_tensor and p not in deny]
        queue = front + [q for q in queue if q not in front]
    ok = best is not None and best[0] <= max_drop
    return FallbackResult(
        ok=ok, model=best[1] if best else None, metrics=best[2] if best else None,
        kept_float=best[3] if best else [], denylist=best[4] if best else [], attempts=attempts,
        layer_errors=errors.top(10), seconds=time.perf_counter() - t0 + errors.seconds,
    )


# -- ONNX: per-node error with onnxruntime, nodes kept in float via onnx_quant's exclude -----------


@dataclass
class OnnxNodeError:
    tensor: str  # activation tensor (a node output) that the QDQ model quantizes
    node: str  # the node producing it
    op: str
    qdq_sqnr_db: float | None  # SQNR of the tensor vs its own quantize-dequantize (local rounding/clipping)
    float_sqnr_db: float | None  # SQNR of the QDQ model's tensor vs the float model's (accumulated)
    consumers: list = field(default_factory=list)  # nodes reading the tensor

    def to_dict(self) -> dict:
        return {"layer": self.node, "op": self.op, "tensor": self.tensor, "sqnr_db": self.qdq_sqnr_db,
                "float_sqnr_db": self.float_sqnr_db}


def _channel_sqnr(signal, approx) -> float | None:
    """Median over channels of the per-channel SQNR in dB (channels: axis 1, NCHW/NC).

    A whole-tensor SQNR hides an outlier: one channel at 3000 makes the signal power
    huge while every other channel is rounded to nothing. Per channel, it shows."""
    def rows(arrays):
        out = []
        for v in arrays:
            v = np.asarray(v, np.float64)
            if v.ndim <= 1:  # collect_activations may drop a batch dimension of 1
                v = v.reshape(1, -1)
            v = v.reshape(len(v), -1) if v.ndim <= 2 else np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])
            out.append(v)
        return np.concatenate(out) if out else np.zeros((0, 0))

    a, b = rows(signal), rows(approx)
    if a.shape != b.shape or a.size == 0:
        return None
    sig = np.mean(np.square(a), axis=0)
    noise = np.mean(np.square(a - b), axis=0)
    keep = sig > 0
    if not np.any(keep):
        return None
    db = 10 * np.log10(sig[keep] / np.maximum(noise[keep], 1e-30))
    return float(min(np.median(db), 99.0))


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else (99.0 if f > 0 else None)


class OnnxNodeErrors:
    """Quantize an ONNX model once (``onnx_quant.quantize_onnx``) and measure each quantized
    activation's error with ``onnxruntime.quantization.qdq_loss_debug``.

    Both models are run on at most ``samples`` calibration samples with every
    intermediate tensor exposed; per tensor, ``qdq_sqnr_db`` compares the float value
    the QDQ model computes with its quantize-dequantize (a tensor whose scale a few
    outliers blew up has a very low SQNR), ``float_sqnr_db`` compares it with the
    float model (the error accumulated up to there). Nodes are ranked by
    ``qdq_sqnr_db``, lowest first. Node names are those of the pre-processed model
    that ``quantize_onnx`` quantizes, so they are valid ``exclude`` entries.

    Args:
        fp32_path: the float ONNX model.
        calib: float32 calibration samples in the model's input layout.
        workdir: scratch folder (kept by the caller).
        samples: at most this many samples feed the debugger.
        **quant_kwargs: passed to ``quantize_onnx`` (target, calib_method, per_channel, input_shape).

    Raises:
        the errors of ``quantize_onnx``; ``UnsupportedModelError`` when the debugger fails.
    """

    def __init__(self, fp32_path: str, calib, *, workdir: str, samples: int = DEBUG_SAMPLES, **quant_kwargs) -> None:
        import shutil  # noqa: PLC0415

        import onnx  # noqa: PLC0415

        from .onnx_quant import quantize_onnx  # noqa: PLC0415

        t0 = time.perf_counter()
        self.fp32_path = fp32_path
        self.calib = np.asarray(calib, np.float32)
        self.quant_kwargs = dict(quant_kwargs)
        self.workdir = workdir
        self._n = 0
        base_dir = os.path.join(workdir, "plain")
        os.makedirs(base_dir, exist_ok=True)
        self.plain_path = os.path.join(workdir, "plain_int8.onnx")
        self.plain = quantize_onnx(fp32_path, self.plain_path, self.calib, workdir=base_dir, **self.quant_kwargs)
        self.float_path = os.path.join(workdir, "float_preprocessed.onnx")
        shutil.copyfile(os.path.join(base_dir, "q_preprocessed.onnx"), self.float_path)
        fmodel = onnx.load(self.float_path)
        producer = {o: n for n in fmodel.graph.node for o in n.output}
        consumers: dict = {}
        for n in fmodel.graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n.name)
        self.node_names = [n.name for n in fmodel.graph.node]
        # node -> the nodes producing its activation inputs (initializers have no producer)
        self.producers = {n.name: [producer[i].name for i in n.input if i in producer and producer[i].name]
                          for n in fmodel.graph.node}
        errs = self._measure(self.calib[: max(1, min(int(samples), len(self.calib)))])
        layers = []
        for tensor, e in errs.items():
            node = producer.get(tensor)
            if node is None or not node.name:
                continue  # a graph input or an initializer
            layers.append(OnnxNodeError(tensor=tensor, node=node.name, op=node.op_type,
                                        qdq_sqnr_db=_finite(e.get("qdq_err")),
                                        float_sqnr_db=_finite(e.get("xmodel_err")),
                                        consumers=list(consumers.get(tensor, []))))
        layers.sort(key=lambda e: (e.qdq_sqnr_db is None, e.qdq_sqnr_db if e.qdq_sqnr_db is not None else 0.0,
                                   e.float_sqnr_db if e.float_sqnr_db is not None else 0.0))
        self.layers = layers
        self.seconds = time.perf_counter() - t0

    def _measure(self, x: np.ndarray) -> dict:
        import contextlib  # noqa: PLC0415
        import sys  # noqa: PLC0415

        import onnx  # noqa: PLC0415
        from onnxruntime.quantization import qdq_loss_debug as dbg  # noqa: PLC0415

        from .onnx_quant import _reader, io_tensors  # noqa: PLC0415

        ins, _ = io_tensors(onnx.load(self.float_path))
        batch = ins[0]["shape"][0] or 1
        aug_q = os.path.join(self.workdir, "debug_qdq.onnx")
        aug_f = os.path.join(self.workdir, "debug_float.onnx")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                dbg.modify_model_output_intermediate_tensors(self.plain_path, aug_q)
                dbg.modify_model_output_intermediate_tensors(self.float_path, aug_f)
                providers = ["CPUExecutionProvider"]
                q_acts = dbg.collect_activations(aug_q, _reader([ins[0]["name"]], x, batch), execution_providers=providers)
                f_acts = dbg.collect_activations(aug_f, _reader([ins[0]["name"]], x, batch), execution_providers=providers)
                match = dbg.create_activation_matching(q_acts, f_acts)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(f"onnxruntime's qdq_loss_debug failed: {type(exc).__name__}: {exc}"[:400]) from None
        out = {}
        for tensor, m in match.items():
            pre, post, ref = m.get("pre_qdq"), m.get("post_qdq"), m.get("float")
            out[tensor] = {"qdq_err": _channel_sqnr(pre, post) if pre is not None and post is not None else None,
                           "xmodel_err": _channel_sqnr(ref, pre) if ref is not None and pre is not None else None}
        return out

    def quantize(self, exclude=()) -> str:
        """Quantize again with ``exclude`` (node names) kept in float; the path of the result."""
        from .onnx_quant import quantize_onnx  # noqa: PLC0415

        self._n += 1
        sub = os.path.join(self.workdir, f"attempt{self._n}")
        os.makedirs(sub, exist_ok=True)
        out = os.path.join(self.workdir, f"attempt{self._n}.onnx")
        quantize_onnx(self.fp32_path, out, self.calib, exclude=list(exclude), workdir=sub, **self.quant_kwargs)
        return out

    def top(self, n: int = 10) -> list:
        return [e.to_dict() for e in self.layers[:n]]


def onnx_fallback(errors: OnnxNodeErrors, evaluate: Callable[[str], dict], *, max_drop: float, baseline: dict,
                  max_attempts: int | None = None) -> FallbackResult:
    """Keep the most sensitive ONNX nodes in float, one at a time, until the drop is within ``max_drop``.

    The tensors are taken in :class:`OnnxNodeErrors` order (lowest SQNR first). For
    each, its producer and the nodes reading it are added to ``exclude`` (a float
    consumer would otherwise re-quantize the same outlier-dominated tensor), the
    model is quantized again and ``evaluate(path) -> metrics`` (``edgeship.metrics``
    keys; ``ValidationFailedError`` counts as a 100-point drop) is called. It stops
    at the first attempt within ``max_drop``; else the best attempt is returned
    with ``ok=False``. ``kept_float`` lists node names; ``denylist`` is the
    ``exclude`` list passed to ``quantize_onnx``. After a failed attempt the
    producers of the node's inputs are tried next (ONNX Runtime fuses a Relu into
    the Gemm or Conv before it, which then still quantizes the tensor). ``model`` is the best attempt's file
    path (a ``str``, in ``errors.workdir``; :func:`tflite_fallback` returns bytes).

    Args:
        baseline: ``{"drop_points", "bytes", "gzip_bytes", "accuracy", "top1_agreement"}`` of plain INT8.
        max_attempts: at most this many tensors are tried (default :data:`MAX_ATTEMPTS`).
    """
    from edgeship import metrics as _metrics  # noqa: PLC0415
    from edgeship.errors import ValidationFailedError  # noqa: PLC0415

    max_attempts = MAX_ATTEMPTS if max_attempts is None else int(max_attempts)
    t0 = time.perf_counter()
    attempts = [{"kept_float": [], "drop_points": baseline.get("drop_points"), "bytes": baseline.get("bytes"),
                 "gzip_bytes": baseline.get("gzip_bytes"), "accuracy": baseline.get("accuracy"),
                 "top1_agreement": baseline.get("top1_agreement")}]
    best = None  # (drop, path, metrics, exclude)
    exclude: list = []
    tried = 0
    queue = [(e.node, [e.node, *e.consumers]) for e in errors.layers]
    while queue and tried < max_attempts:
        node, group = queue.pop(0)
        new = [n for n in group if n and n not in exclude]
        if not new:
            continue
        if set(exclude + new) >= set(errors.node_names):
            continue  # nothing would be left quantized
        tried += 1
        exclude += new
        try:
            path = errors.quantize(exclude)
        except Exception as exc:  # noqa: BLE001 - the quantizer rejects this exclusion: undo it
            attempts.append({"kept_float": list(exclude), "drop_points": None, "error": str(exc).splitlines()[0][:200]})
            del exclude[-len(new):]
            continue
        with open(path, "rb") as fh:
            flat = fh.read()
        try:
            m = evaluate(path)
            drop = float(_metrics.drop_points(m))
        except ValidationFailedError:
            m, drop = None, 100.0
        attempts.append({"kept_float": list(exclude), "drop_points": drop, "bytes": len(flat),
                         "gzip_bytes": _gzip_len(flat), "accuracy": (m or {}).get("accuracy"),
                         "top1_agreement": (m or {}).get("top1_agreement")})
        if best is None or drop < best[0]:
            best = (drop, path, m, list(exclude))
        if drop <= max_drop:
            break
        # the tensor into a float node is still quantized by its producer (a Relu fused into the
        # Gemm before it, for instance): try that producer next
        front = [(p, [p]) for p in errors.producers.get(node, []) if p not in exclude]
        queue = front + queue
    ok = best is not None and best[0] <= max_drop
    return FallbackResult(
        ok=ok, model=best[1] if best else None, metrics=best[2] if best else None,
        kept_float=best[3] if best else [], denylist=best[3] if best else [], attempts=attempts,
        layer_errors=errors.top(10), seconds=time.perf_counter() - t0 + errors.seconds,
    )
