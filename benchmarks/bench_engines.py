"""Every engine, and the peers a user would pick instead, side by side in one run (issue 15).

    python benchmarks/bench_engines.py [--quick] [--threads 2] [--runs 100] [--models mobilenetv2,resnet50]

Two networks from ``keras.applications`` with ``weights=None`` at 224x224
(speed does not depend on the weights): MobileNetV2 (memory-bound) and ResNet50
(compute-bound; it keeps its logits, as its random-weight softmax is flat). Per
network, converted by :func:`edgeship.convert` and cached under
``benchmarks/results/cache/``:

- ``edgeship``: ``target="cpu,intel"``, INT8 with int8 I/O: ``model.int8.tflite``
  (LiteRT) and ``model.int8.onnx`` quantized by NNCF (the intel target);
- ``qdq``: edgeship's own INT8 QDQ ``.onnx`` (target cpu: U8S8 per channel);
- ``fp32``: FP32 ``.tflite`` and ``.onnx`` (the peers' starting point and the reference).

Calibration: 32 crops of the two photographs inside scikit-learn; the
benchmark's inputs are 16 other crops. Then ``edgeship bench BUNDLE --all --save``
records the fastest artifact x engine of the ``edgeship`` bundle, and ONE
interleaved timing run (same threads, batch 1, order alternating each round)
measures:

- edgeship: ``load(backend="auto")`` (the saved choice) and each artifact x engine
  through ``Model.run``; ``Model.predict`` on a uint8 224x224 frame against the
  bare LiteRT invoke-only loop on a pre-quantized tensor;
- peers, bare engine loops: LiteRT FP32; ONNX Runtime FP32; ONNX Runtime with
  ``quantize_static`` defaults; OpenVINO on the FP32 ``.onnx`` at its default
  precision; OpenVINO on an ``nncf.quantize`` INT8 of the FP32 ``.onnx`` (same
  calibration samples), written here by the peer script itself.

Then, on their own: ``Model.predict`` on the frame against the invoke-only floor
(and ``Model.run(x)`` against ``Model.run(x, out=previous result)``),
interleaved in rounds of 5 calls with 3x the runs (the issue's 1.03x target);
and batch-8 throughput (images/s) of every pipeline whose engine runs 8 images
in one call (LiteRT and edgeship on the dynamic-batch ``.tflite``, OpenVINO
reshaped; a fixed-batch ``.onnx`` is listed as not measured, with the reason).

Accuracy: top-1 agreement of each with FP32 LiteRT on the benchmark's inputs.
``rows()`` gives ``benchmarks/run.py`` its rows; the script (and ``make bench``)
writes ``benchmarks/results/engines.md``, ``engines.png`` (matplotlib) and
``engines.json`` (``engines-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

try:
    from ._timing import BareLiteRT, interleaved
except ImportError:
    from _timing import BareLiteRT, interleaved

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(BENCH_DIR, "results", "cache")
MODELS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}


def _crops(size: int, count: int, offset: int) -> np.ndarray:
    """``count`` RGB uint8 crops (size x size) of scikit-learn's sample photos, from the ``offset``-th."""
    import cv2  # noqa: PLC0415
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    out = []
    imgs = load_sample_images().images
    i = 0
    for scale in (1.0, 0.8, 0.65, 0.5, 0.4, 0.3):
        for fy in (0.0, 0.25, 0.5, 0.75, 1.0):
            for fx in (0.0, 0.5, 1.0):
                for img in imgs:
                    if i >= offset and len(out) < count:
                        h, w = img.shape[:2]
                        c = int(min(h, w) * scale)
                        y, x = int((h - c) * fy), int((w - c) * fx)
                        out.append(cv2.resize(img[y:y + c, x:x + c], (size, size), interpolation=cv2.INTER_AREA))
                    i += 1
    return np.stack(out)


def _pre(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 127.5 - 1.0).astype(np.float32)  # the bundles' spec: pixel/127.5 - 1


def build(name: str, size: int, classes: int, say=print) -> dict:
    """The three bundles of one network (cached)."""
    import edgeship  # noqa: PLC0415

    key = hashlib.sha256(json.dumps([name, size, classes, edgeship.__version__, 2]).encode()).hexdigest()[:10]
    folder = os.path.join(CACHE, f"engines-{name}-{size}-{key}")
    stamp = os.path.join(folder, "built.json")
    if os.path.isfile(stamp):
        with open(stamp) as fh:
            return json.load(fh)
    import keras  # noqa: PLC0415

    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)
    # ResNet50 with random weights ends in a flat softmax (1000 values near 1/1000: INT8 output collapses to one
    # value); it keeps its logits instead. MobileNetV2's softmax varies enough.
    act = None if name == "resnet50" else "softmax"
    model = getattr(keras.applications, MODELS[name])(weights=None, input_shape=(size, size, 3), classes=classes,
                                                      classifier_activation=act)
    path = os.path.join(folder, "model.keras")
    model.save(path)
    calib = _pre(_crops(size, 32, 0))
    pre = {"size": [size, size], "color": "rgb", "scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]}
    times = {}
    for b, kw in (("edgeship", dict(target="cpu,intel", precision="int8", io="int8", formats=("tflite", "onnx"))),
                  ("qdq", dict(precision="int8", formats=("onnx",))),
                  ("fp32", dict(precision="fp32", formats=("tflite", "onnx")))):
        t0 = time.perf_counter()
        say(f"  converting {name} -> {b} ...")
        edgeship.convert(path, os.path.join(folder, b), calib=calib, preprocess=pre, force=True,
                         task="classification", calib_count=len(calib), **kw)
        times[b] = time.perf_counter() - t0
    np.save(os.path.join(folder, "calib.npy"), calib)
    d = {"folder": folder, "size": size, "convert_seconds": times}
    with open(stamp, "w") as fh:
        json.dump(d, fh)
    return d


def _save_choice(bundle: str, threads: int, runs: int) -> dict:
    cmd = [sys.executable, "-m", "edgeship", "bench", bundle, "--all", "--save", "--runs", str(runs), "--warmup",
           "5", "--threads", str(threads), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, EDGESHIP_PROGRESS="0"))
    if p.returncode != 0:
        raise RuntimeError(f"bench --all --save failed: {p.stderr[-800:]}")
    return json.loads(p.stdout)["saved"]


def _peer_nncf(fp32_onnx: str, calib: np.ndarray, out: str) -> float:
    """What a user does with NNCF: nncf.quantize the FP32 ONNX on the same samples (seconds taken)."""
    import contextlib  # noqa: PLC0415

    import nncf  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    t0 = time.perf_counter()
    m = onnx.load(fp32_onnx)
    name = m.graph.input[0].name
    with contextlib.redirect_stdout(sys.stderr):
        q = nncf.quantize(m, nncf.Dataset(list(calib), lambda s: {name: s[None]}), subset_size=len(calib))
    onnx.save(q, out)
    return time.perf_counter() - t0


def _peer_ort_default(fp32_onnx: str, calib: np.ndarray, out: str) -> None:
    """ONNX Runtime's quantize_static with its defaults (QDQ, QInt8/QInt8, per tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    import onnxruntime as ort  # noqa: PLC0415

    name = ort.InferenceSession(fp32_onnx, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: s[None]} for s in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out + ".pre.onnx"
    quant_pre_process(fp32_onnx, pre)
    quantize_static(pre, out, Reader())


class _BareORT:
    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.name = self.s.get_inputs()[0].name
        first = self.s.get_inputs()[0].shape[0]
        self.any_batch = not isinstance(first, int) or first < 1  # a symbolic/dynamic batch axis

    def run(self, x):
        return self.s.run(None, {self.name: x})[0]


class _BareOV:
    def __init__(self, path: str, threads: int, precision: str | None = None, batch: int = 1) -> None:
        import openvino as ov  # noqa: PLC0415

        core = ov.Core()
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if precision:
            cfg["INFERENCE_PRECISION_HINT"] = precision
        m = core.read_model(path)
        m.reshape({m.inputs[0]: [batch] + [d.get_length() for d in list(m.inputs[0].get_partial_shape())[1:]]})
        self.cm = core.compile_model(m, "CPU", cfg)
        self.req = self.cm.create_infer_request()
        self.precision = str(self.cm.get_property("INFERENCE_PRECISION_HINT"))

    def run(self, x):
        self.req.infer([x], share_inputs=True)
        return self.req.get_output_tensor(0).data.copy()


def batch8(name: str, xs: np.ndarray, models: dict, fp32_tfl: str, fp32_onnx: str, nncf_path: str, ortq_path: str,
           *, threads: int, runs: int, say=print) -> dict:
    """Images/s at batch 8 of each pipeline whose engine runs 8 images in one call, interleaved; the others are
    listed with the reason (``{"images_per_s": {key: float}, "latency_ms": ..., "skipped": {key: why}}``)."""
    x8 = np.ascontiguousarray(np.concatenate([xs] * (1 + 8 // len(xs)))[:8])
    fns, skipped = {}, {}
    lit = BareLiteRT(fp32_tfl, threads)
    d = lit.inp
    lit.it.resize_tensor_input(d["index"], [8, *d["shape"][1:]], strict=True)  # the file's batch axis is dynamic
    lit.it.allocate_tensors()
    fns["peer_litert_fp32"] = lambda: lit.run(x8)
    for key, path in (("peer_ort_fp32", fp32_onnx), ("peer_ort_quantize_static_default", ortq_path)):
        o = _BareORT(path, threads)
        if o.any_batch:
            fns[key] = lambda o=o: o.run(x8)
        else:
            skipped[key] = "the .onnx has a fixed batch of 1"
    for key, path in (("peer_openvino_fp32_default", fp32_onnx), ("peer_openvino_nncf_int8", nncf_path)):
        ov8 = _BareOV(path, threads, batch=8)  # OpenVINO reshapes a static model
        fns[key] = lambda ov8=ov8: ov8.run(x8)
    for key, m in models.items():
        if m.inputs[0].shape[0] is None:  # a dynamic batch axis: run() resizes the engine to 8
            fns[key] = lambda m=m: m.run(x8)
        else:
            skipped[key] = f"fixed batch of 1 in {m.artifact['file']}: run() loops"
    say(f"  {name}: batch 8, {len(fns)} pipelines, {runs} runs each, interleaved ...")
    res = interleaved(fns, runs=runs, warmup=1)
    return {"images_per_s": {k: 8e3 / v["p50"] for k, v in res.items()}, "latency_ms": res, "skipped": skipped}


def _top1(y) -> np.ndarray:
    return np.asarray(y).reshape(len(y), -1).argmax(1)


def measure(name: str, size: int, classes: int, *, threads: int, runs: int, warmup: int, say=print) -> dict:
    import edgeship.runtime as rt  # noqa: PLC0415

    b = build(name, size, classes, say=say)
    f = b["folder"]
    bun, qdq, fp32 = (os.path.join(f, k) for k in ("edgeship", "qdq", "fp32"))
    calib = np.load(os.path.join(f, "calib.npy"))
    frames = _crops(size, 16, 40)  # not the calibration crops
    xs = _pre(frames)
    peers_dir = os.path.join(f, "peers")
    os.makedirs(peers_dir, exist_ok=True)
    fp32_onnx, fp32_tfl = os.path.join(fp32, "model.fp32.onnx"), os.path.join(fp32, "model.fp32.tflite")
    nncf_path, ortq_path = os.path.join(peers_dir, "nncf_int8.onnx"), os.path.join(peers_dir, "ort_default.onnx")
    seconds = {}
    if not os.path.exists(nncf_path):
        seconds["nncf_quantize_s"] = _peer_nncf(fp32_onnx, calib, nncf_path)
    if not os.path.exists(ortq_path):
        _peer_ort_default(fp32_onnx, calib, ortq_path)
    say(f"  {name}: bench --all --save ...")
    saved = _save_choice(bun, threads, max(20, runs // 3))
    fns, outs = {}, {}

    def add(key, fn, batch_fn=None):
        fns[key] = fn
        outs[key] = np.concatenate([batch_fn(xs[i:i + 1]) for i in range(len(xs))])

    x1 = xs[:1]
    ref = BareLiteRT(fp32_tfl, threads)
    add("peer_litert_fp32", lambda: ref.run(x1), ref.run)
    o = _BareORT(fp32_onnx, threads)
    add("peer_ort_fp32", lambda: o.run(x1), o.run)
    oq = _BareORT(ortq_path, threads)
    add("peer_ort_quantize_static_default", lambda: oq.run(x1), oq.run)
    ovf = _BareOV(fp32_onnx, threads)
    add("peer_openvino_fp32_default", lambda: ovf.run(x1), ovf.run)
    ovn = _BareOV(nncf_path, threads)
    add("peer_openvino_nncf_int8", lambda: ovn.run(x1), ovn.run)
    models = {}

    def ours(key, path, **kw):
        m = models[key] = rt.load(path, threads=threads, **kw)
        add(key, lambda: m.run(x1), lambda x: next(iter(m.run(x).values())))

    ours("edgeship_auto", bun, backend="auto")
    ours("edgeship_litert_int8_tflite", bun, artifact="tflite", backend="litert")
    ours("edgeship_openvino_nncf_onnx", bun, artifact="onnx", backend="openvino")
    ours("edgeship_ort_nncf_onnx", bun, artifact="onnx", backend="onnxruntime")
    ours("edgeship_openvino_int8_tflite", bun, artifact="tflite", backend="openvino")
    ours("edgeship_ort_qdq_onnx", qdq, backend="onnxruntime")
    ours("edgeship_openvino_qdq_onnx", qdq, backend="openvino")
    ours("edgeship_openvino_fp32_onnx", fp32, artifact="onnx", backend="openvino")
    lit = models["edgeship_litert_int8_tflite"]
    bare8 = BareLiteRT(os.path.join(bun, "model.int8.tflite"), threads)
    q1 = bare8.quantized_input(x1)
    frame = np.ascontiguousarray(frames[0][:, :, ::-1])  # a BGR uint8 frame, as a camera gives it
    fns["edgeship_predict_uint8_frame"] = lambda: lit.predict(frame)
    fns["bare_litert_invoke_only"] = lambda: bare8.invoke_only(q1)
    say(f"  {name}: timing {len(fns)} pipelines, interleaved ...")
    res = interleaved(fns, runs=runs, warmup=warmup)
    # The ratio on its own, interleaved in rounds of 5 calls, 3x the runs: predict on a uint8 frame
    # against the invoke-only floor; and run(x) against run(x, out=...) (the output-buffer reuse).
    out_buf = lit.run(x1)
    pair = {"predict_uint8_frame": fns["edgeship_predict_uint8_frame"],
            "invoke_only": fns["bare_litert_invoke_only"],
            "run_float": lambda: lit.run(x1), "run_float_out": lambda: lit.run(x1, out=out_buf)}
    say(f"  {name}: predict vs invoke-only, {3 * runs} runs each, interleaved ...")
    res_pair = interleaved(pair, runs=3 * runs, warmup=warmup, rounds=3 * runs // 5)
    thr8 = batch8(name, xs, models, fp32_tfl, fp32_onnx, nncf_path, ortq_path, threads=threads,
                  runs=max(5, runs // 10), say=say)
    ref_top = _top1(outs["peer_litert_fp32"])
    agree = {k: float(np.mean(_top1(v) == ref_top)) for k, v in outs.items()}
    auto = models["edgeship_auto"]
    info = {"artifact": auto.artifact["file"], "backend": auto.info.backend, "chosen": auto.info.chosen}
    for m in models.values():
        m.close()
    peers = {k: v for k, v in res.items() if k.startswith("peer_")}
    best_peer = min(peers, key=lambda k: peers[k]["p50"])
    return {"model": name, "size": size, "threads": threads, "latency_ms": res, "top1_agreement_vs_fp32": agree,
            "auto": info, "saved_choice": saved["choice"], "best_peer": best_peer,
            "auto_vs_best_peer_p50": res["edgeship_auto"]["p50"] / res[best_peer]["p50"],
            "predict_vs_invoke_only_p50": (res_pair["predict_uint8_frame"]["p50"] / res_pair["invoke_only"]["p50"]),
            "predict_vs_invoke_only_in_main_run_p50": (res["edgeship_predict_uint8_frame"]["p50"]
                                                       / res["bare_litert_invoke_only"]["p50"]),
            "run_out_vs_run_p50": res_pair["run_float_out"]["p50"] / res_pair["run_float"]["p50"],
            "pair_latency_ms": res_pair, "batch8": thr8,
            "convert_seconds": b["convert_seconds"], **seconds}


def rows(*, quick: bool = False, threads: int = 2, runs: int | None = None, models=None, say=print) -> list:
    """One row per pipeline and model, plus the two ratios of issue 15, for ``benchmarks/run.py``."""
    size, classes = (64, 10) if quick else (224, 1000)
    runs = runs or (30 if quick else 100)
    out = []
    for name in models or MODELS:
        r = measure(name, size, classes, threads=threads, runs=runs, warmup=5, say=say)
        for k, v in r["latency_ms"].items():
            out.append({"name": f"{name}.{k}", "p50_ms": v["p50"], "p90_ms": v["p90"],
                        "top1_agreement": r["top1_agreement_vs_fp32"].get(k)})
        ok = r["auto_vs_best_peer_p50"] <= 1.0 and r["top1_agreement_vs_fp32"]["edgeship_auto"] >= 0.99
        out.append({"name": f"{name}.auto_vs_best_peer", "ratio": r["auto_vs_best_peer_p50"], "target": "<= 1.00",
                    "pass": ok, "detail": f"auto = {r['auto']['artifact']} on {r['auto']['backend']}; best peer "
                                          f"{r['best_peer']}"})
        for k, v in r["batch8"]["images_per_s"].items():
            out.append({"name": f"{name}.{k}.batch8", "images_per_s": v})
        out.append({"name": f"{name}.predict_vs_invoke_only", "ratio": r["predict_vs_invoke_only_p50"],
                    "target": "<= 1.03", "pass": r["predict_vs_invoke_only_p50"] <= 1.03,
                    "detail": "Model.predict(uint8 frame) / bare LiteRT invoke-only on a pre-quantized tensor, "
                              "interleaved pair run"})
        out.append({"name": f"{name}.run_out_vs_run", "ratio": r["run_out_vs_run_p50"], "target": "info",
                    "pass": None, "detail": "Model.run(x, out=previous result) / Model.run(x), INT8 .tflite"})
        out.append({"name": f"{name}._raw", "raw": r})
    return out


LABELS = {
    "peer_litert_fp32": "peer: LiteRT, FP32 .tflite (bare loop)",
    "peer_ort_fp32": "peer: ONNX Runtime, FP32 .onnx",
    "peer_ort_quantize_static_default": "peer: ONNX Runtime, quantize_static defaults",
    "peer_openvino_fp32_default": "peer: OpenVINO, FP32 .onnx, its default precision",
    "peer_openvino_nncf_int8": "peer: OpenVINO + nncf.quantize INT8 (same calibration)",
    "edgeship_auto": "**edgeship load(backend=\"auto\")** after bench --all --save",
    "edgeship_litert_int8_tflite": "edgeship: INT8 .tflite on LiteRT (Model.run)",
    "edgeship_openvino_nncf_onnx": "edgeship: --target intel INT8 .onnx (NNCF) on OpenVINO",
    "edgeship_ort_nncf_onnx": "edgeship: --target intel INT8 .onnx on ONNX Runtime",
    "edgeship_openvino_int8_tflite": "edgeship: INT8 .tflite on OpenVINO",
    "edgeship_ort_qdq_onnx": "edgeship: INT8 QDQ .onnx (U8S8) on ONNX Runtime",
    "edgeship_openvino_qdq_onnx": "edgeship: INT8 QDQ .onnx (U8S8) on OpenVINO",
    "edgeship_openvino_fp32_onnx": "edgeship: FP32 .onnx on OpenVINO (bf16 default)",
    "edgeship_predict_uint8_frame": "edgeship: Model.predict(uint8 frame), INT8 .tflite",
    "bare_litert_invoke_only": "bare LiteRT invoke only, pre-quantized tensor",
}


def markdown(rs: list, command: str) -> str:
    """``engines.md``: one row per pipeline, a column pair per network (p50 at batch 1, images/s at batch 8)."""
    raws = [r["raw"] for r in rs if "raw" in r]
    names = [r["model"] for r in raws]
    head = ["pipeline"] + [f"{MODELS.get(n, n)} p50 ms" for n in names] + \
        [f"{MODELS.get(n, n)} batch 8 img/s" for n in names] + ["top-1 vs FP32"]
    lines = ["# Engines and peers, one run (benchmarks/bench_engines.py)", "",
             f"`{command}`: batch 1 p50 (all pipelines interleaved in one run), batch-8 throughput "
             "(images/s from the p50 of a batch, only where the engine runs 8 images in one call; interleaved too), "
             "top-1 agreement with FP32 LiteRT on 16 held-out photo crops. The machine's 2 cores are shared with "
             "other jobs: absolute times are noisy and several times a quiet machine's; compare within a column.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(raws[0]["latency_ms"]) if raws else []
    for k in keys:
        cells = [LABELS.get(k, k)]
        cells += [f"{r['latency_ms'][k]['p50']:.2f}" if k in r["latency_ms"] else "-" for r in raws]
        cells += [f"{r['batch8']['images_per_s'][k]:.1f}" if k in r["batch8"]["images_per_s"] else "-"
                  for r in raws]
        tops = [r["top1_agreement_vs_fp32"].get(k) for r in raws]
        cells.append(" / ".join("-" if t is None else f"{t:.2f}" for t in tops))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in raws:
        pl = r["pair_latency_ms"]
        lines.append(
            f"- {r['model']}: auto ran {r['auto']['artifact']} on {r['auto']['backend']} ({r['auto']['chosen']}); "
            f"auto / best peer ({r['best_peer']}) p50 = {r['auto_vs_best_peer_p50']:.3f}x; "
            f"**predict(uint8 frame) / bare invoke-only p50 = {r['predict_vs_invoke_only_p50']:.3f}x** "
            f"({pl['predict_uint8_frame']['p50']:.3f} vs {pl['invoke_only']['p50']:.3f} ms, "
            f"{pl['invoke_only']['runs']} runs each, interleaved pair; "
            f"{r['predict_vs_invoke_only_in_main_run_p50']:.3f}x in the main run); "
            f"run(x, out=) / run(x) p50 = {r['run_out_vs_run_p50']:.3f}x; batch 8 not measured for: "
            + (", ".join(f"{k} ({why})" for k, why in r["batch8"]["skipped"].items()) or "none"))
    return "\n".join(lines) + "\n"


def plot(rs: list, path: str) -> bool:
    """Bars of batch-1 p50 and batch-8 images/s per pipeline and network (matplotlib); False without it."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    raws = [r["raw"] for r in rs if "raw" in r]
    fig, axes = plt.subplots(2, len(raws), figsize=(7 * len(raws), 9), squeeze=False)
    for j, r in enumerate(raws):
        for i, (vals, title, unit) in enumerate(
                ((({k: v["p50"] for k, v in r["latency_ms"].items()}), "batch 1 p50", "ms (lower is better)"),
                 (r["batch8"]["images_per_s"], "batch 8 throughput", "images/s (higher is better)"))):
            ax = axes[i][j]
            ks = list(vals)
            colors = ["#1f77b4" if k.startswith("edgeship") else "#888888" if k.startswith("peer") else "#2ca02c"
                      for k in ks]
            ax.barh(range(len(ks)), [vals[k] for k in ks], color=colors)
            ax.set_yticks(range(len(ks)), [k.replace("edgeship_", "es: ").replace("peer_", "peer: ") for k in ks],
                          fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(unit, fontsize=8)
            ax.set_title(f"{MODELS.get(r['model'], r['model'])} {r['size']}: {title}", fontsize=9)
            for y, k in enumerate(ks):
                ax.annotate(f"{vals[k]:.3g}", (vals[k], y), va="center", fontsize=7)
    fig.suptitle("edgeship engines vs peers (blue: edgeship, grey: peers; shared 2-core machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_results(rs: list, *, quick: bool, command: str, folder: str | None = None) -> dict:
    """``engines.md``, ``engines.png`` and ``engines.json`` (``engines-quick.*`` with ``--quick``) in ``folder``."""
    folder = folder or os.path.join(BENCH_DIR, "results")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, "engines-quick" if quick else "engines")
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(rs, command))
    with open(stem + ".json", "w") as fh:
        json.dump(rs, fh, indent=1, default=str)
    paths = {"md": stem + ".md", "json": stem + ".json"}
    if plot(rs, stem + ".png"):
        paths["png"] = stem + ".png"
    return paths


def table(rs: list) -> str:
    lines = ["| pipeline | p50 ms | p90 ms | top-1 vs FP32 |", "|---|---|---|---|"]
    for r in rs:
        if "p50_ms" in r:
            t = r.get("top1_agreement")
            lines.append(f"| {r['name']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                         f"{'-' if t is None else f'{t:.3f}'} |")
        elif "images_per_s" in r:
            lines.append(f"| {r['name']} | {r['images_per_s']:.1f} images/s | batch 8 | - |")
        elif "ratio" in r:
            verdict = "" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
            lines.append(f"| **{r['name']}** | {r['ratio']:.3f}x | target {r['target']} | "
                         f"{verdict} {r.get('detail', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64x64, 10 classes, few runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--md", default=None, help="write the table (markdown) here")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rs = rows(quick=a.quick, threads=a.threads, runs=a.runs, models=a.models.split(","),
              say=lambda s: print(s, file=sys.stderr, flush=True))
    print(table(rs))
    command = "python benchmarks/bench_engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(rs, quick=a.quick, command=command.strip()), file=sys.stderr)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rs, fh, indent=1, default=str)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(table(rs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
