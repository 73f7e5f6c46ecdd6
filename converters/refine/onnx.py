"""Per-node quantization error of INT8 QDQ ONNX models (the ONNX sensitivity of :mod:`.refine`).

:class:`OnnxNodeErrors` quantizes once (:func:`edgeship.converters.onnx_quant.quantize_onnx`)
and runs the float and QDQ models with every intermediate tensor exposed
(``onnxruntime.quantization.qdq_loss_debug``); per activation tensor, the SQNR of
its quantize-dequantize (local) and of the QDQ model vs the float model
(accumulated). Tensors are ranked by the local SQNR, lowest first. Nodes are kept
in float through ``quantize_onnx``'s ``exclude``: the producer and the consumers
of a tensor at once (a float consumer would otherwise re-quantize the same
outlier-dominated tensor); after a failed attempt the producers of the node's
inputs come next (ONNX Runtime fuses a Relu into the Gemm or Conv before it,
which then still quantizes the tensor).

A dense-map (segmentation) model (``dense_map=True``) has hundreds of sensitive
tensors, where one node at a time never gets anywhere: it is measured on
:data:`DENSE_SAMPLES` samples only (every activation of a 640x640 map is held) and
its candidates are the noisiest tensors in growing groups (:data:`DENSE_GROUPS`:
8, 16, 32, 48, 64, 96... of the worst in float), its map head
(:func:`edgeship.converters.seg_head.plan_int8`) float in every attempt.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edgeship.errors import UnsupportedModelError

from .tflite import DEBUG_SAMPLES

DENSE_SAMPLES = 2  # samples measured for a dense-map model
DENSE_GROUPS = (8, 16, 32, 48, 64, 96, 128, 192)  # cumulative counts of noisiest tensors kept float


class NodeGroup(NamedTuple):
    """A candidate of the fallback loop: a node and the nodes kept in float with it."""

    node: str
    group: list


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
        always_exclude: node names kept in float in every attempt (the user's ``exclude``).
        **quant_kwargs: passed to ``quantize_onnx`` (target, calib_method, per_channel, input_shape,
            keep_head_float). With ``keep_head_float`` the detector's decode head
            (:func:`edgeship.converters.detection_head.head_nodes`) is float in the measured
            model and in every attempt (:attr:`head`): the fallback starts from it and never
            quantizes it again; its nodes are never candidates.

    Raises:
        the errors of ``quantize_onnx``; ``UnsupportedModelError`` when the debugger fails.
    """

    def __init__(self, fp32_path: str, calib, *, workdir: str, samples: int = DEBUG_SAMPLES,
                 always_exclude=(), **quant_kwargs) -> None:
        import shutil  # noqa: PLC0415

        import onnx  # noqa: PLC0415

        from ..onnx_quant import quantize_onnx  # noqa: PLC0415

        t0 = time.perf_counter()
        self.fp32_path = fp32_path
        self.calib = np.asarray(calib, np.float32)
        self.quant_kwargs = dict(quant_kwargs)
        self.always_exclude = [str(e) for e in always_exclude]
        self.workdir = workdir
        self._n = 0
        base_dir = os.path.join(workdir, "plain")
        os.makedirs(base_dir, exist_ok=True)
        self.plain_path = os.path.join(workdir, "plain_int8.onnx")
        self.plain = quantize_onnx(fp32_path, self.plain_path, self.calib, workdir=base_dir, **self.quant_kwargs)
        q = self.plain.get("extra", {}).get("onnx_quantization", {})
        #: the decode-head nodes kept float in every attempt ([] without keep_head_float or a head)
        self.head = list((q.get("detection_head") or {}).get("nodes") or [])
        self.head_summary = (q.get("detection_head") or {}).get("summary")
        self.dense = bool(self.quant_kwargs.get("dense_map"))
        #: nodes float in every attempt: the decode head, a segmentation map head, the user's exclude
        self.fixed = set(self.head) | set(q.get("nodes_to_exclude") or ())
        if self.dense:
            samples = min(int(samples), DENSE_SAMPLES)
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

        from ..onnx_quant import calibration_reader, io_tensors  # noqa: PLC0415

        ins, _ = io_tensors(onnx.load(self.float_path))
        batch = ins[0]["shape"][0] or 1
        aug_q = os.path.join(self.workdir, "debug_qdq.onnx")
        aug_f = os.path.join(self.workdir, "debug_float.onnx")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                dbg.modify_model_output_intermediate_tensors(self.plain_path, aug_q)
                dbg.modify_model_output_intermediate_tensors(self.float_path, aug_f)
                providers = ["CPUExecutionProvider"]
                q_acts = dbg.collect_activations(aug_q, calibration_reader([ins[0]["name"]], x, batch), execution_providers=providers)
                f_acts = dbg.collect_activations(aug_f, calibration_reader([ins[0]["name"]], x, batch), execution_providers=providers)
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
        from ..onnx_quant import quantize_onnx  # noqa: PLC0415

        self._n += 1
        sub = os.path.join(self.workdir, f"attempt{self._n}")
        os.makedirs(sub, exist_ok=True)
        out = os.path.join(self.workdir, f"attempt{self._n}.onnx")
        user = self.always_exclude
        quantize_onnx(self.fp32_path, out, self.calib, exclude=[*user, *(e for e in exclude if e not in user)],
                      workdir=sub, **self.quant_kwargs)
        return out

    def top(self, n: int = 10) -> list:
        return [e.to_dict() for e in self.layers[:n]]

    # -- the Sensitivity interface of edgeship.converters.refine ---------------------------

    unit = "node"
    file_suffix = ".onnx"

    def candidates(self) -> list:
        head = self.fixed
        one = [NodeGroup(e.node, [e.node, *e.consumers]) for e in self.layers if e.node not in head]
        if not self.dense:
            return one
        groups, done = [], 0
        for k in DENSE_GROUPS:  # cumulative: each group adds the next noisiest tensors
            if done >= len(one):
                break
            members = [n for c in one[done:k] for n in c.group]
            groups.append(NodeGroup(f"{min(k, len(one))} noisiest tensors", members))
            done = k
        return groups

    def new_members(self, cand: NodeGroup, deny: list) -> list:
        """The nodes of ``cand`` not yet in float ([] when none, or when nothing would stay quantized).

        The decode head is float in every attempt already; its nodes are never added."""
        head = self.fixed
        new = list(dict.fromkeys(n for n in cand.group if n and n not in deny and n not in head))
        if new and set(deny + new) | head >= set(self.node_names):
            return []
        return new

    def next_after(self, cand: NodeGroup, deny: list) -> list:
        """After a failed attempt: the producers of the node's inputs (a Relu fused into the Gemm before it)."""
        if self.dense:  # groups already grow; no producer expansion
            return []
        head = self.fixed
        return [NodeGroup(p, [p]) for p in self.producers.get(cand.node, []) if p not in deny and p not in head]

    @staticmethod
    def label(cand: NodeGroup) -> str:
        return cand.node

    @staticmethod
    def kept(labels: list, deny: list) -> list:
        return list(deny)

    def quantize_file(self, deny) -> str:
        return self.quantize(deny)
