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

Accuracy: top-1 agreement of each with FP32 LiteRT on the benchmark's inputs.
``rows()`` gives ``benchmarks/run.py`` its rows; ``--json`` writes them.
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

    def run(self, x):
        return self.s.run(None, {self.name: x})[0]


class _BareOV:
    def __init__(self, path: str, threads: int, precision: str | None = None) -> None:
        import openvino as ov  # noqa: PLC0415

        core = ov.Core()
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if precision:
            cfg["INFERENCE_PRECISION_HINT"] = precision
        m = core.read_model(path)
        m.reshape({m.inputs[0]: [1] + [d.get_length() for d in list(m.inputs[0].get_partial_shape())[1:]]})
        self.cm = core.compile_model(m, "CPU", cfg)
        self.req = self.cm.create_infer_request()
        self.precision = str(self.cm.get_property("INFERENCE_PRECISION_HINT"))

    def run(self, x):
        self.req.infer([x], share_inputs=True)
        return self.req.get_output_tensor(0).data.copy()


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
            "predict_vs_invoke_only_p50": (res["edgeship_predict_uint8_frame"]["p50"]
                                           / res["bare_litert_invoke_only"]["p50"]),
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
        out.append({"name": f"{name}.predict_vs_invoke_only", "ratio": r["predict_vs_invoke_only_p50"],
                    "target": "<= 1.03", "pass": r["predict_vs_invoke_only_p50"] <= 1.03})
        out.append({"name": f"{name}._raw", "raw": r})
    return out


def table(rs: list) -> str:
    lines = ["| pipeline | p50 ms | p90 ms | top-1 vs FP32 |", "|---|---|---|---|"]
    for r in rs:
        if "p50_ms" in r:
            t = r.get("top1_agreement")
            lines.append(f"| {r['name']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                         f"{'-' if t is None else f'{t:.3f}'} |")
        elif "ratio" in r:
            lines.append(f"| **{r['name']}** | {r['ratio']:.3f}x | target {r['target']} | "
                         f"{'pass' if r['pass'] else 'FAIL'} {r.get('detail', '')} |")
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
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rs, fh, indent=1, default=str)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(table(rs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
