"""Accuracy-aware INT8: keep the most quantization-sensitive parts of a model in float.

One loop, :func:`fallback`, over a per-format *sensitivity* that measured, once,
which parts of the model suffer most from INT8 and can quantize the model again
with some of them kept in float:

* TFLite: :class:`~.tflite.TfliteLayerErrors` (``QuantizationDebugger`` per-layer
  SQNR; layers kept in float with the MLIR quantizer's ``denylisted_nodes``);
* ONNX: :class:`~.onnx.OnnxNodeErrors` (``qdq_loss_debug`` per-node SQNR; nodes
  kept in float with ``quantize_onnx``'s ``exclude``).

The sensitivity interface (both classes implement it):

==========================  ================================================================
``candidates()``            what to keep in float next, most sensitive first
``new_members(c, deny)``    the names ``c`` adds to the denylist; ``[]`` skips ``c``
``next_after(c, deny)``     candidates to try first after ``c`` failed to meet ``max_drop``
``label(c)``                ``c``'s readable name; ``kept(labels, deny)``: what the record lists
``quantize_file(deny)``     the model quantized with ``deny`` kept in float: a file path
``top(n)``, ``seconds``     the ``n`` worst entries as dicts (for the report); time spent
``unit``                    ``"layer"`` or ``"node"`` (for messages)
==========================  ================================================================

:mod:`.stage` runs it for ``convert(auto_fallback=True)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .onnx import OnnxNodeError, OnnxNodeErrors
from .tflite import DEBUG_SAMPLES, LayerError, TfliteLayerErrors

__all__ = ["fallback", "onnx_fallback", "FallbackResult", "MAX_ATTEMPTS", "DEBUG_SAMPLES",
           "TfliteLayerErrors", "OnnxNodeErrors", "LayerError", "OnnxNodeError"]

MAX_ATTEMPTS = 8  # at most this many candidates are tried


@dataclass(frozen=True)
class FallbackResult:
    ok: bool
    model: str | None  # the best attempt's file (in the sensitivity's workdir)
    metrics: dict | None  # its validation metrics
    kept_float: list  # what was kept in float (best attempt): layer names (TFLite), node names (ONNX)
    denylist: list  # names passed to the quantizer (best attempt)
    attempts: list  # [{kept_float, drop_points, bytes, gzip_bytes, accuracy, top1_agreement}]
    layer_errors: list  # the top-10 sensitivity entries
    seconds: float


def _gzip_len(data: bytes) -> int:
    import gzip  # noqa: PLC0415

    return len(gzip.compress(data, compresslevel=9, mtime=0))


def fallback(sensitivity, evaluate: Callable[[str], dict], *, max_drop: float, baseline: dict,
             max_attempts: int | None = None) -> FallbackResult:
    """Keep the most sensitive parts in float, one candidate at a time, until the drop is within ``max_drop``.

    Args:
        sensitivity: a measured :class:`TfliteLayerErrors` or :class:`OnnxNodeErrors`.
        evaluate: ``evaluate(path) -> metrics`` (``edgeship.metrics.compare`` keys; it may raise
            ``ValidationFailedError`` for a collapsed attempt, counted as a 100-point drop).
        max_drop: allowed accuracy (or agreement) drop in points.
        baseline: ``{"drop_points", "bytes", "gzip_bytes", "accuracy", "top1_agreement"}`` of plain INT8.
        max_attempts: at most this many candidates are tried (default :data:`MAX_ATTEMPTS`).

    Returns:
        A :class:`FallbackResult`; ``ok`` is False when no attempt met ``max_drop`` (the best one
        is returned). A candidate the quantizer rejects is recorded with ``drop_points: None``
        and undone.
    """
    from edgeship import metrics as _metrics  # noqa: PLC0415
    from edgeship.errors import ValidationFailedError  # noqa: PLC0415

    s = sensitivity
    max_attempts = MAX_ATTEMPTS if max_attempts is None else int(max_attempts)
    t0 = time.perf_counter()
    attempts = [{"kept_float": [], "drop_points": baseline.get("drop_points"), "bytes": baseline.get("bytes"),
                 "gzip_bytes": baseline.get("gzip_bytes"), "accuracy": baseline.get("accuracy"),
                 "top1_agreement": baseline.get("top1_agreement"), "miou": baseline.get("miou")}]
    best = None  # (drop, path, metrics, kept, deny)
    deny: list = []
    labels: list = []
    queue = list(s.candidates())
    tried = 0
    while queue and tried < max_attempts:
        cand = queue.pop(0)
        new = s.new_members(cand, deny)
        if not new:
            continue
        tried += 1
        deny += new
        labels.append(s.label(cand))
        try:
            path = s.quantize_file(deny)
        except Exception as exc:  # noqa: BLE001 - the quantizer rejects this denylist: undo it
            attempts.append({"kept_float": s.kept(labels, deny), "drop_points": None,
                             "error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]})
            del deny[-len(new):]
            labels.pop()
            continue
        with open(path, "rb") as fh:
            flat = fh.read()
        try:
            m = evaluate(path)
            drop = float(_metrics.drop_points(m))
        except ValidationFailedError:
            m, drop = None, 100.0
        kept = s.kept(labels, deny)
        attempts.append({"kept_float": kept, "drop_points": drop, "bytes": len(flat), "gzip_bytes": _gzip_len(flat),
                         "accuracy": (m or {}).get("accuracy"), "top1_agreement": (m or {}).get("top1_agreement"),
                         "miou": (m or {}).get("miou")})
        if best is None or drop < best[0]:
            best = (drop, path, m, list(kept), list(deny))
        if drop <= max_drop:
            break
        front = s.next_after(cand, deny)
        queue = front + [q for q in queue if all(q is not f for f in front)]
    ok = best is not None and best[0] <= max_drop
    return FallbackResult(
        ok=ok, model=best[1] if best else None, metrics=best[2] if best else None,
        kept_float=best[3] if best else [], denylist=best[4] if best else [], attempts=attempts,
        layer_errors=s.top(10), seconds=time.perf_counter() - t0 + s.seconds,
    )


onnx_fallback = fallback  # the name of the ONNX entry point before the loop was shared


def describe_attempts(attempts: list) -> str:
    """``"hidden in float: 0.4 points; ..."`` for error messages."""
    def names(kept):  # a segmentation fallback keeps hundreds of nodes float: count them
        return "+".join(kept) if len(kept) <= 6 else f"{len(kept)} nodes ({'+'.join(kept[:3])}+...)"

    return "; ".join(f"{names(a['kept_float']) or 'none'} in float: "
                     + ("failed" if a.get("drop_points") is None else f"{a['drop_points']:.1f} points")
                     for a in attempts)


def best_attempt(attempts: list) -> dict:
    """The attempt with the smallest drop, the baseline (plain INT8, nothing in float) included:
    when every attempt made it worse, the best is to keep nothing in float, and the message says so."""
    done = [a for a in attempts if a.get("drop_points") is not None]
    return min(done or attempts[:1], key=lambda a: a["drop_points"])
