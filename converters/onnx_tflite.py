"""ONNX -> TFLite through onnx2tf, then edgeship's TFLite quantization path.

onnx2tf rewrites an NCHW ONNX graph into an NHWC TensorFlow SavedModel
(inputs become NHWC; it removes the transposes it would otherwise need). The
SavedModel is then quantized by :func:`edgeship.converters.tflite.export`,
the same code and calibration as Keras models, with the calibration samples
transposed from NCHW to NHWC. The artifact records ``layout: NHWC`` while the
source stays NCHW; ``Model.run`` transposes for the caller.

Network: onnx2tf 1.28 calls ``download_test_image_data()`` (a sample file from
GitHub) whenever all inputs are 4-D with 3 channels, *also* when no
quantization is asked for, and for its own INT8 path. That fails offline and
on devices, so while onnx2tf runs, edgeship replaces that function with one that
returns the user's own calibration samples (NHWC) and replaces the
``requests`` module onnx2tf's helpers use with one that refuses every call.
Both are restored afterwards (under a lock, since they are module globals).
onnx2tf's own quantization is never used (``output_integer_quantized_tflite``
stays off) and onnxsim, which it would run as a subprocess, is turned off.

Failures (:mod:`.onnx2tf_prep`): ops onnx2tf has no converter for are rewritten when an
exact rewrite exists (CastLike, Swish) and otherwise refused before onnx2tf runs; a
failing conversion is retried once on a cleaned graph; what still fails is one line
naming the node and op onnx2tf failed on, and what to try. onnx2tf's log is kept in
memory (not printed) to find that node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading

import numpy as np

from edgeship.errors import CalibrationError, UnsupportedModelError, ValidationFailedError, require

from .registry import ExportRequest, IOType, Precision, Source

__all__ = ["onnx_to_saved_model", "onnx_to_tflite", "no_downloads"]

_LOCK = threading.Lock()


class _NoNetwork:
    """Stands in for ``requests`` inside onnx2tf: every call is refused."""

    class exceptions:  # noqa: N801 - mirrors requests.exceptions
        class Timeout(Exception):
            pass

        class RequestException(Exception):
            pass

    def __getattr__(self, name):
        def refuse(*_a, **_k):
            raise RuntimeError(
                f"edgeship blocked a network call (requests.{name}) from onnx2tf; "
                "edgeship passes onnx2tf its own calibration data"
            )

        return refuse


@contextlib.contextmanager
def no_downloads(sample_nhwc: np.ndarray | None):
    """While active, onnx2tf gets ``sample_nhwc`` instead of downloading sample images."""
    import onnx2tf.onnx2tf as o2  # noqa: PLC0415
    import onnx2tf.utils.common_functions as cf  # noqa: PLC0415

    calls: list = []

    def local_data() -> np.ndarray:
        calls.append(1)
        if sample_nhwc is None:
            raise CalibrationError("onnx2tf asked for sample images and no calibration samples were given")
        return np.asarray(sample_nhwc, dtype=np.float32)

    with _LOCK:
        saved = (o2.download_test_image_data, cf.download_test_image_data, getattr(cf, "requests", None))
        o2.download_test_image_data = local_data
        cf.download_test_image_data = local_data
        cf.requests = _NoNetwork()
        try:
            yield calls
        finally:
            o2.download_test_image_data, cf.download_test_image_data, cf.requests = saved


def _to_nhwc(x: np.ndarray, layout: str) -> np.ndarray:
    if x.ndim == 4 and layout == "NCHW":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def onnx_to_saved_model(onnx_path: str, out_dir: str, *, calib=None, source_layout: str = "NCHW") -> dict:
    """Convert a checked, static-shape ONNX file to an NHWC SavedModel in ``out_dir``.

    Ops onnx2tf lacks are rewritten where an exact rewrite exists (:mod:`.onnx2tf_prep`);
    a graph with other such ops is refused before onnx2tf runs; when onnx2tf fails, it is
    tried once more on a cleaned graph (shape inference, constant folding, clean-up).

    Returns ``{"calls": n, "notes": [...]}`` (sample-data requests served locally, what was
    rewritten or cleaned).

    Raises:
        UnsupportedModelError: onnx2tf cannot convert the model; one line naming the node
            and op it failed on and what to try.
        MissingDependencyError: onnx2tf (edgeship[convert]) is not installed.
    """
    require("onnx2tf", "convert", "to convert ONNX models to TFLite")
    import onnx  # noqa: PLC0415

    from . import onnx2tf_prep as prep  # noqa: PLC0415
    from .tflite import quiet  # noqa: PLC0415

    with quiet():  # TensorFlow's import-time C++ logging (absl, oneDNN, CUDA probes) is noise here
        import onnx2tf  # noqa: PLC0415 - heavy, and changes global TF state at import

    sample = None
    if calib is not None and len(calib):
        sample = _to_nhwc(np.asarray(calib[:20], np.float32), source_layout)
    model = onnx.load(onnx_path)
    notes = prep.rewrite_known_ops(model)
    work = os.path.dirname(os.path.abspath(out_dir))
    # onnx2tf writes back into the file it is given (op names, shape clean-up): never the caller's
    path = os.path.join(work, "onnx2tf_rewritten.onnx" if notes else "onnx2tf_work.onnx")
    onnx.save(model, path)
    bad = prep.unsupported_nodes(model)
    if bad:
        raise UnsupportedModelError(_unsupported(bad))
    keep = prep.nhwc_inputs(model) if source_layout == "NHWC" else []
    if keep:
        notes.append(f"NHWC inputs kept as they are by onnx2tf (keep_nwc_or_nhwc_or_ndhwc_input_names={keep})")
    try:
        calls = _run_onnx2tf(onnx2tf, path, out_dir, sample, model, keep)
    except _Failure as first:
        cleaned = os.path.join(work, "onnx2tf_cleaned.onnx")
        try:
            cleaning = prep.clean_graph(path, cleaned)
        except Exception:  # noqa: BLE001 - nothing to retry with: report the first failure
            raise UnsupportedModelError(f"{first}; {TRY}") from first.__cause__
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            calls = _run_onnx2tf(onnx2tf, cleaned, out_dir, sample, onnx.load(cleaned, load_external_data=False), keep)
        except _Failure:
            raise UnsupportedModelError(f"{first} (also after graph clean-up: {', '.join(cleaning)}); {TRY}") \
                from first.__cause__
        notes.append(f"onnx2tf failed on the graph as exported ({first}); converted after graph clean-up: "
                     f"{', '.join(cleaning)}")
    if not os.path.isfile(os.path.join(out_dir, "saved_model.pb")):
        raise UnsupportedModelError(f"onnx2tf wrote no SavedModel for {onnx_path}; try formats='onnx'")
    return {"calls": calls, "notes": notes}


TRY = "try formats='onnx' (ONNX Runtime runs the model as it is)"


class _Failure(Exception):
    """One failed onnx2tf run: 'onnx2tf cannot convert node X (op Y): reason'."""


def _unsupported(bad: list) -> str:
    name, op, domain = bad[0]
    ops = sorted({f"{o} ({d})" if d not in ("", "ai.onnx") else o for _, o, d in bad})
    more = f"; {len(bad) - 1} more node(s) of ops {', '.join(ops)}" if len(bad) > 1 else ""
    where = f" of domain {domain!r}" if domain not in ("", "ai.onnx") else ""
    return (f"onnx2tf cannot convert node {name!r} (op {op}{where}): onnx2tf {_version('onnx2tf')} has no "
            f"converter for it{more}; {TRY}, or re-export the model without {op}")


def _run_onnx2tf(onnx2tf, path: str, out_dir: str, sample, model, keep_nhwc=()) -> int:
    """One onnx2tf run; its log is kept (not printed) to name the failing node. ``keep_nhwc``:
    input names already NHWC (a TFLite- or Keras-derived ONNX), which onnx2tf must not transpose."""
    import io  # noqa: PLC0415

    from . import onnx2tf_prep as prep  # noqa: PLC0415

    log = io.StringIO()
    try:
        with no_downloads(sample) as calls, contextlib.redirect_stdout(log):
            onnx2tf.convert(
                input_onnx_file_path=path,
                output_folder_path=out_dir,
                non_verbose=True,
                not_use_onnxsim=True,
                output_signaturedefs=True,
                copy_onnx_input_output_names_to_tflite=False,
                output_integer_quantized_tflite=False,
                keep_nwc_or_nhwc_or_ndhwc_input_names=list(keep_nhwc) or None,
                # NMS inside: as many detections as found, not padded to max_output_boxes_per_class
                output_nms_with_dynamic_tensor=any(n.op_type == "NonMaxSuppression" for n in model.graph.node),
            )
        return len(calls)
    except CalibrationError:
        raise
    except (Exception, SystemExit) as exc:  # onnx2tf calls sys.exit(1) on some errors
        name, op = prep.failed_node(exc, model, log.getvalue())
        reason = prep.log_reason(log.getvalue()) or (
            f"onnx2tf exited with {exc.code}" if isinstance(exc, SystemExit) else prep.reason_of(exc))
        where = f"node {name!r} (op {op})" if name and op else f"node {name!r}" if name else os.path.basename(path)
        raise _Failure(f"onnx2tf cannot convert {where}: {reason}") from (None if isinstance(exc, SystemExit) else exc)


def _saved_model_fn(sm_dir: str):
    import tensorflow as tf  # noqa: PLC0415

    loaded = tf.saved_model.load(sm_dir)
    sig = loaded.signatures["serving_default"]
    (key, spec), = sig.structured_input_signature[1].items()
    out_keys = sorted(sig.structured_outputs)

    def run(x):
        res = sig(**{key: tf.constant(x)})
        return [np.asarray(res[k]) for k in out_keys]

    return run, [int(d) for d in spec.shape], loaded


def onnx_to_tflite(onnx_path: str, out_path: str, *, calib=None, source_layout: str = "NCHW",
                   precision: Precision = Precision.INT8, io: IOType = IOType.INT8,
                   workdir: str, input_shape=None, target: str = "cpu", keep_head_float: bool = False) -> dict:
    """ONNX file -> ``.tflite`` at ``out_path`` (exporter dict, see :mod:`.registry`).

    ``calib``: float32 samples in the ONNX model's layout (``source_layout``).

    Raises:
        UnsupportedModelError: onnx2tf or the TFLite converter cannot convert the model.
        ValidationFailedError: the float TensorFlow model onnx2tf built does not
            reproduce the ONNX model (before any quantization).
        CalibrationError: int8 without calibration samples.
    """
    from . import tflite as tflite_export  # noqa: PLC0415
    from .onnx_quant import prepare_fp32  # noqa: PLC0415

    precision = Precision(precision)
    io = IOType(io)
    fixed = os.path.join(workdir, "onnx2tf_input.onnx")
    prep = prepare_fp32(onnx_path, fixed, input_shape=input_shape, calib=calib, per_channel=False)
    sm_dir = os.path.join(workdir, "onnx2tf_saved_model")
    conv = onnx_to_saved_model(fixed, sm_dir, calib=calib, source_layout=source_layout)

    run, sm_shape, _keep = _saved_model_fn(sm_dir)
    calib_nhwc = None if calib is None else _to_nhwc(np.asarray(calib, np.float32), source_layout)
    if calib_nhwc is not None and list(calib_nhwc.shape[1:]) != sm_shape[1:]:
        raise UnsupportedModelError(
            f"onnx2tf produced input shape {sm_shape}, calibration samples are {list(calib_nhwc.shape[1:])} "
            "after NCHW->NHWC; the model's input could not be mapped to NHWC"
        )
    notes = [f"ONNX -> TensorFlow with onnx2tf (inputs {source_layout} -> NHWC {sm_shape})"] + prep["notes"] + conv["notes"]
    float_err = None
    if calib is not None and len(calib):
        ort = require("onnxruntime", "convert")
        sess = ort.InferenceSession(fixed, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        k = min(len(calib), 8)
        xs = np.asarray(calib[:k], np.float32)
        ref = np.concatenate([sess.run(None, {name: xs[i:i + 1]})[0] for i in range(k)])
        got = np.concatenate([run(calib_nhwc[i:i + 1])[0] for i in range(k)])
        if got.shape != ref.shape and got.ndim == 4 and ref.ndim == 4:
            got = got.transpose(0, 3, 1, 2)
        if got.shape != ref.shape:
            raise ValidationFailedError(f"onnx2tf output shape {got.shape} differs from ONNX {ref.shape}")
        float_err = float(np.max(np.abs(got - ref)))
        scale = 1.0 + float(np.max(np.abs(ref)))
        if float_err > 1e-3 * scale:
            raise ValidationFailedError(
                f"onnx2tf's float model differs from the ONNX model by {float_err:.3g} (max abs) on {k} samples "
                "before quantization; the TFLite artifact is refused"
            )
        notes.append(f"onnx2tf float model matches ONNX: max abs error {float_err:.2e} on {k} samples")

    sm_source = Source(
        kind="keras", format="saved_model", path=None, sha256=None, layout="NHWC",
        inputs=[{"name": "input", "shape": sm_shape, "dtype": "float32", "quantization": None}],
        outputs=[], handle=sm_dir, predict=lambda x: run(x),
    )
    req = ExportRequest(precision=precision, io=io, calib=calib_nhwc, out_path=out_path, workdir=workdir,
                        target=target, keep_head_float=keep_head_float)
    info = tflite_export.export(sm_source, req)
    info = dict(info)
    order = output_order(_onnx_output_shapes(fixed), [tuple(t.get("shape") or ()) for t in info.get("outputs") or ()])
    if order is not None and order != list(range(len(order))):
        info["outputs"] = [info["outputs"][i] for i in order]  # the manifest lists them in the ONNX model's order
        notes.append(f"the TFLite file's outputs come in another order than the ONNX model's; matched by shape "
                     f"(file outputs {order} in ONNX order)")
    info["layout"] = "NHWC"
    info["notes"] = notes + list(info.get("notes", [])) + [
        f"artifact layout NHWC, source layout {source_layout}: Model.run transposes for the caller"]
    extra = dict(info.get("extra", {}))
    extra["onnx_to_tflite"] = {
        "tool": "onnx2tf", "onnx2tf": _version("onnx2tf"), "source_layout": source_layout,
        "artifact_layout": "NHWC", "saved_model_input_shape": sm_shape,
        "float_max_abs_error": float_err, "sample_data_served_locally": conv["calls"],
    }
    info["extra"] = extra
    return info


def _onnx_output_shapes(path: str) -> list:
    import onnx  # noqa: PLC0415

    g = onnx.load(path, load_external_data=False).graph
    return [tuple(d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim)
            for o in g.output]


def output_order(onnx_shapes: list, tflite_shapes: list) -> list | None:
    """For each ONNX output (in its order), the position of the TFLite output with its shape (a 4-D
    NCHW shape also matches its NHWC transpose); None unless every output matches exactly one."""
    if len(onnx_shapes) != len(tflite_shapes) or len(onnx_shapes) < 2:
        return None

    def same(o, t):
        if len(o) != len(t):
            return False
        cands = [tuple(o)] + ([(o[0], o[2], o[3], o[1])] if len(o) == 4 else [])
        return any(all(a is None or b is None or a == b for a, b in zip(c[1:], t[1:])) for c in cands)

    order = []
    for o in onnx_shapes:
        hits = [i for i, t in enumerate(tflite_shapes) if same(o, t)]
        if len(hits) != 1:
            return None
        order.append(hits[0])
    return order if len(set(order)) == len(order) else None


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version(dist)
    except Exception:  # pragma: no cover
        return ""
