"""Per-layer quantization error of full-INT8 TFLite models (the TFLite sensitivity of :mod:`.refine`).

:class:`TfliteLayerErrors` calibrates the model once through
``tf.lite.experimental.QuantizationDebugger`` (NumericVerify ops: each quantized op
is compared with its float twin fed the same dequantized input) and measures, per
quantized op output tensor, the RMSE, ``rmse/scale`` (the TFLite debugger
tutorial's metric: about 0.29 for well-behaved uniform rounding) and a per-layer
SQNR in dB: the RMS of the float activation (from the float model, run on the same
samples) over that RMSE. Layers are ranked by SQNR (lowest first): a tensor whose
range is blown up by a few outliers has ordinary ``rmse/scale`` but a very low SQNR.

Layers are kept in float through ``denylisted_nodes`` of the MLIR quantizer,
applied to the calibrated model the debugger already holds (no re-calibration).
A layer kept in float also keeps its consumers in float: otherwise the consumer
would re-quantize the same tensor with the same outlier-dominated scale. Float
fallback needs float kernels, so attempts are converted with ``TFLITE_BUILTINS``
alongside ``TFLITE_BUILTINS_INT8``; the requested integer I/O type is kept.

TensorFlow is imported inside the functions (the ``convert`` extra).
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from edgeship.errors import UnsupportedModelError

from ..registry import ExportRequest, IOType, Precision

# at most this many calibration samples feed the debugger (it runs op by op)
DEBUG_SAMPLES = 64


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
        request: the INT8 export request (its ``calib`` samples are used; attempt files
            are written in its ``workdir``).
        samples: at most this many calibration samples are run through the debugger.

    Raises:
        UnsupportedModelError: the converter or the debugger rejects the model.
    """

    def __init__(self, source, request: ExportRequest, *, samples: int = DEBUG_SAMPLES) -> None:
        from ..tflite import make_converter, quiet  # noqa: PLC0415

        if request.precision is not Precision.INT8:
            raise UnsupportedModelError(f"per-layer fallback applies to int8, not {request.precision.value}")
        calib = np.asarray(request.calib, np.float32)
        self.calib = calib
        self.workdir = request.workdir
        self._n = 0
        dbg_x = calib[: max(1, min(samples, len(calib)))]
        self.io = request.io
        t0 = time.perf_counter()
        with quiet() as captured:
            import tensorflow as tf  # noqa: PLC0415

            self.tf = tf
            try:
                fconv, _ = make_converter(source, request)
                self.float_model = fconv.convert()
                conv, _ = make_converter(source, request)
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
        #: a detector's decode-head tensors (converters.tflite_head), float in every attempt, never candidates
        self.head: list = []
        self.head_summary = None
        if request.keep_head_float:
            from ..tflite_head import describe, head_tensors  # noqa: PLC0415

            self.head = head_tensors(self.calibrated_model)
            self.head_summary = describe(self.calibrated_model, self.head) if self.head else None
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
        head = set(self.head)
        self.layers = [e for e in layers if e.tensor not in head]
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
        from ..tflite import quiet  # noqa: PLC0415

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
        """The INT8 model with the ``denylist`` op output tensors (and the decode head) kept in float.

        With a decode head the outputs are float32, as in the exported artifact."""
        from tensorflow.lite.python import convert as _convert  # noqa: PLC0415

        from ..tflite import quiet  # noqa: PLC0415

        tf = self.tf
        io_type = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.FLOAT: tf.float32}[self.io]
        with quiet():
            return _convert.mlir_quantize(
                self.calibrated_model,
                disable_per_channel=self.disable_per_channel,
                input_data_type=io_type,
                output_data_type=tf.float32 if self.head else io_type,
                denylisted_nodes=[*self.head, *(d for d in denylist if d not in self.head)] or None,
            )

    def top(self, n: int = 10) -> list:
        return [e.to_dict() for e in self.layers[:n]]

    # -- the Sensitivity interface of edgeship.converters.refine ---------------------------

    unit = "layer"
    file_suffix = ".tflite"

    def candidates(self) -> list:
        return list(self.layers)

    def new_members(self, cand: LayerError, deny: list) -> list:
        """The tensors to keep in float for ``cand``: its output and its consumers' ([] once it is kept)."""
        if cand.tensor in deny or cand.tensor in self.head:
            return []
        return [t for t in dict.fromkeys([cand.tensor, *cand.consumers]) if t not in deny and t not in self.head]

    def next_after(self, cand: LayerError, deny: list) -> list:
        """After a failed attempt: the tensor into a float layer is still quantized by its producer."""
        by_tensor = {e.tensor: e for e in self.layers}
        return [by_tensor[p] for p in cand.producers if p in by_tensor and p not in deny and p not in self.head]

    @staticmethod
    def label(cand: LayerError) -> str:
        return cand.layer

    @staticmethod
    def kept(labels: list, deny: list) -> list:
        return list(labels)

    def quantize_file(self, deny) -> str:
        """Write the INT8 model with ``deny`` kept in float to a new file in ``workdir``; its path."""
        self._n += 1
        path = os.path.join(self.workdir, f"attempt{self._n}.tflite")
        flat = self.quantize(deny)
        with open(path, "wb") as fh:
            fh.write(flat)
        return path
