"""ONNX speed, side by side in one run (issue 3, section 7).

    python benchmarks/bench_onnx.py [--quick] [--threads 2] [--runs 200] [--json] [--rebuild] [--variants]

On MobileNetV2 (``keras.applications.MobileNetV2(weights=None)``, 224x224; the
speed of a network does not depend on its weights), converted with
:func:`edgeship.converters.convert`:

- one INT8 bundle with ``formats=("tflite", "onnx")`` (``model.int8.tflite`` and
  the QDQ ``model.int8.onnx``), calibrated on crops of the two photographs that
  ship inside scikit-learn (``load_sample_images``), never on noise;
- one FP32 ONNX bundle (``precision="fp32"``, ``formats=("onnx",)``).

Both are cached under ``benchmarks/results/cache/`` keyed by the settings, the
library versions and the source of the ONNX quantizer (a changed
``converters/onnx_quant.py`` rebuilds them).

Measured in ONE run, every engine timed in the same interleaved rounds (the
order alternates each round, so that machine drift hits all alike), with the
same thread count, on one preprocessed real image:

- INT8 ONNX vs FP32 ONNX in ONNX Runtime (bare ``InferenceSession`` and through
  ``edgeship.runtime``). Target: INT8 at least 2x faster (ratio = FP32 p50 / INT8 p50).
- INT8 TFLite vs INT8 ONNX, bare engines (LiteRT interpreter loop with hand-made
  (de)quantization, bare ``InferenceSession``) and through ``edgeship.runtime``
  (ratio = TFLite p50 / ONNX p50; informational, no target).

``rows()`` returns dicts ``name, p50_ms, p90_ms, ratio, target, pass`` for
``benchmarks/run.py``. ``--variants`` additionally quantizes the cached FP32
ONNX with other ``onnxruntime.quantization`` settings and times them against
the FP32 model in one interleaved run (the investigation behind the settings
in ``converters/onnx_quant.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

try:  # python -m benchmarks.run / imported as a package
    from ._timing import BareLiteRT, interleaved, stats
except ImportError:  # python benchmarks/run.py (this folder is on sys.path)
    from _timing import BareLiteRT, interleaved, stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(HERE, "results", "cache")
TARGET_INT8_SPEEDUP = 2.0  # FP32 ONNX p50 / INT8 ONNX p50 (issue 3, "Done when")


@dataclass(frozen=True)
class Spec:
    name: str
    size: int
    alpha: float = 1.0
    classes: int = 1000
    calib_crops: int = 32
    seed: int = 0

    def build(self):
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(self.seed)
        return keras.applications.MobileNetV2(weights=None, input_shape=(self.size, self.size, 3),
                                              alpha=self.alpha, classes=self.classes)


FULL = Spec("mobilenetv2-224", 224)
QUICK = Spec("mobilenetv2-64-a0.35-c10", 64, alpha=0.35, classes=10, calib_crops=12)


@dataclass
class Built:
    folder: str
    int8_bundle: str  # model.int8.tflite + model.int8.onnx
    fp32_bundle: str  # model.fp32.onnx
    int8_tflite: str
    int8_onnx: str
    fp32_onnx: str
    sample: str  # .npy, one preprocessed real image, batch 1, NHWC
    quantization: dict  # the manifest's settings.onnx_quantization
    cached: bool


def _key(spec: Spec) -> str:
    import edgeship  # noqa: PLC0415

    versions = {}
    for mod in ("keras", "tensorflow", "onnx", "onnxruntime", "tf2onnx"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    h = hashlib.sha256()
    for f in ("onnx_quant.py", "onnx_formats.py", "onnx_export.py"):
        with open(os.path.join(ROOT, "converters", f), "rb") as fh:
            h.update(fh.read())
    blob = json.dumps({"spec": asdict(spec), "versions": versions, "edgeship": edgeship.__version__,
                       "onnx_converter": h.hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _preprocess(spec: Spec):
    from edgeship.preprocess import ColorOrder, PreprocessSpec, ResizeMode  # noqa: PLC0415

    # MobileNetV2's own preprocessing: x / 127.5 - 1, RGB.
    return PreprocessSpec(size=(spec.size, spec.size), resize=ResizeMode.CENTER_CROP, color=ColorOrder.RGB,
                          scale=1.0 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0))


def _calibration_images(folder: str, spec: Spec) -> list:
    """Deterministic square crops (3 scales x 6 positions x 2 photos) of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    from edgeship.preprocess import opencv as _cv2  # noqa: PLC0415

    cv2 = _cv2()
    os.makedirs(folder, exist_ok=True)
    crops = []
    positions = [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0), (0.5, 0.0)]
    photos = load_sample_images().images
    for scale in (1.0, 0.7, 0.45):
        for fy, fx in positions:
            for pi, img in enumerate(photos):
                h, w = img.shape[:2]
                c = int(min(h, w) * scale)
                y, x = int((h - c) * fy), int((w - c) * fx)
                crops.append((f"{pi}_{int(scale * 100):03d}_{int(fy * 10)}{int(fx * 10)}", img[y:y + c, x:x + c]))
    paths = []
    for name, crop in crops[: spec.calib_crops]:
        side = max(spec.size, 256)
        small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        path = os.path.join(folder, f"{name}.png")
        cv2.imwrite(path, cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def build(spec: Spec = FULL, cache: str = CACHE, *, rebuild: bool = False, say=print) -> Built:
    """Build (or reuse) the INT8 (TFLite + ONNX) and FP32 ONNX bundles of ``spec``."""
    folder = os.path.join(cache, f"onnx-{spec.name}-{_key(spec)}")
    stamp = os.path.join(folder, "built.json")

    def made(d: dict, cached: bool) -> Built:
        j = lambda *p: os.path.join(folder, *p)  # noqa: E731
        return Built(folder, j("int8"), j("fp32"), j("int8", "model.int8.tflite"), j("int8", "model.int8.onnx"),
                     j("fp32", "model.fp32.onnx"), j("sample.npy"), d.get("quantization", {}), cached)

    if not rebuild and os.path.isfile(stamp):
        with open(stamp) as fh:
            d = json.load(fh)
        b = made(d, True)
        if all(os.path.isfile(p) for p in (b.int8_tflite, b.int8_onnx, b.fp32_onnx, b.sample)):
            say(f"Using cached ONNX/TFLite bundles in {os.path.relpath(folder)}")
            return b
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgeship import converters  # noqa: PLC0415
    from edgeship.preprocess import read_image  # noqa: PLC0415

    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    say(f"Building {spec.name} and converting it to INT8 TFLite + INT8 ONNX + FP32 ONNX "
        f"(cached in {os.path.relpath(folder)}) ...")
    calib_dir = os.path.join(folder, "calib")
    paths = _calibration_images(calib_dir, spec)
    model_path = os.path.join(folder, "model.keras")
    spec.build().save(model_path)
    pre = _preprocess(spec)
    common = dict(calib=calib_dir, preprocess=pre, calib_count=len(paths), seed=spec.seed, force=True,
                  task="classification")
    res = converters.convert(model_path, os.path.join(folder, "int8"), precision="int8", io="int8",
                             formats=("tflite", "onnx"), name=f"{spec.name}-int8", **common)
    for w in res.warnings:
        say(f"  int8 warning: {w}")
    quant = res.manifest["settings"].get("onnx_quantization", {})
    res = converters.convert(model_path, os.path.join(folder, "fp32"), precision="fp32", io="float",
                             formats=("onnx",), name=f"{spec.name}-fp32", **common)
    for w in res.warnings:
        say(f"  fp32 warning: {w}")
    np.save(os.path.join(folder, "sample.npy"), pre.apply(read_image(paths[2]))[None].astype(np.float32))
    d = {"spec": asdict(spec), "quantization": quant, "build_seconds": round(time.perf_counter() - t0, 1)}
    with open(stamp, "w") as fh:
        json.dump(d, fh, indent=2)
    say(f"  built in {d['build_seconds']} s")
    return made(d, False)


# ---------------------------------------------------------------------------- engines


class BareORT:
    """A bare ``onnxruntime.InferenceSession`` (what a user writes without edgeship)."""

    def __init__(self, path: str, threads: int, level: str = "all") -> None:
        import onnxruntime as ort  # noqa: PLC0415

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        self.path = path
        self.sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name
        shape = self.sess.get_inputs()[0].shape
        self.nchw = len(shape) == 4 and shape[1] == 3 and shape[3] != 3

    def optimized_ops(self) -> dict:
        """Op counts of the graph ONNX Runtime actually runs (after its graph optimizations)."""
        import tempfile  # noqa: PLC0415

        import onnx  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415

        so = ort.SessionOptions()
        so.graph_optimization_level = self.sess.get_session_options().graph_optimization_level
        so.log_severity_level = 3
        with tempfile.TemporaryDirectory() as d:
            so.optimized_model_filepath = os.path.join(d, "opt.onnx")
            ort.InferenceSession(self.path, sess_options=so, providers=["CPUExecutionProvider"])
            ops: dict = {}
            for n in onnx.load(so.optimized_model_filepath).graph.node:
                ops[n.op_type] = ops.get(n.op_type, 0) + 1
        return ops

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.nchw:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return self.sess.run(None, {self.name: x})[0]


def _row(name: str, stats: dict, ratio=None, target=None, passed=None) -> dict:
    return {"name": name, "p50_ms": round(stats["p50"], 3), "p90_ms": round(stats["p90"], 3),
            "ratio": None if ratio is None else round(ratio, 3), "target": target, "pass": passed}


def rows(quick: bool = False, threads: int = 2, *, runs: int | None = None, rebuild: bool = False,
         say=print) -> list:
    """The ONNX rows for ``benchmarks/run.py``: name, p50_ms, p90_ms, ratio, target, pass."""
    from edgeship import runtime  # noqa: PLC0415

    b = build(QUICK if quick else FULL, rebuild=rebuild, say=say)
    runs = runs or (40 if quick else 300)
    x = np.load(b.sample)
    models = {
        "ort_fp32": BareORT(b.fp32_onnx, threads),
        "ort_int8": BareORT(b.int8_onnx, threads),
        "litert_int8": BareLiteRT(b.int8_tflite, threads),
    }
    rt = {
        "rt_onnx_fp32": runtime.load(b.fp32_bundle, artifact="model.fp32.onnx", threads=threads),
        "rt_onnx_int8": runtime.load(b.int8_bundle, artifact="model.int8.onnx", threads=threads),
        "rt_tflite_int8": runtime.load(b.int8_bundle, artifact="model.int8.tflite", threads=threads),
    }
    try:
        fns = {k: (lambda m=m: m.run(x)) for k, m in models.items()}
        fns.update({k: (lambda m=m: m.run(x)) for k, m in rt.items()})
        say(f"Timing {len(fns)} engines x {runs} runs, interleaved, {threads} threads ...")
        s = interleaved(fns, runs=runs)
    finally:
        for m in rt.values():
            m.close()
    sp_bare = s["ort_fp32"]["p50"] / s["ort_int8"]["p50"]
    sp_rt = s["rt_onnx_fp32"]["p50"] / s["rt_onnx_int8"]["p50"]
    tgt = f">= {TARGET_INT8_SPEEDUP:g}x (fp32/int8 p50)"
    return [
        _row("onnx fp32, ORT bare", s["ort_fp32"]),
        _row("onnx int8, ORT bare (speedup vs fp32)", s["ort_int8"], sp_bare, tgt, sp_bare >= TARGET_INT8_SPEEDUP),
        _row("onnx fp32, edgeship.runtime", s["rt_onnx_fp32"]),
        _row("onnx int8, edgeship.runtime (speedup vs fp32)", s["rt_onnx_int8"], sp_rt, tgt,
             sp_rt >= TARGET_INT8_SPEEDUP),
        _row("tflite int8, LiteRT bare (vs onnx int8 bare)", s["litert_int8"],
             s["litert_int8"]["p50"] / s["ort_int8"]["p50"]),
        _row("tflite int8, edgeship.runtime (vs onnx int8 runtime)", s["rt_tflite_int8"],
             s["rt_tflite_int8"]["p50"] / s["rt_onnx_int8"]["p50"]),
    ]


# ---------------------------------------------------------------------------- investigation


VARIANTS = {
    # name: quantize_static keyword arguments (QDQ unless said otherwise)
    "U8S8 per-channel (edgeship x86)": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True),
    "U8S8 per-tensor": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=False),
    "U8S8 per-channel reduce_range": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True,
                                          reduce_range=True),
    "S8S8 per-channel": dict(activation_type="QInt8", weight_type="QInt8", per_channel=True),
    "U8U8 per-tensor": dict(activation_type="QUInt8", weight_type="QUInt8", per_channel=False),
    "U8S8 QOperator per-channel": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True,
                                       quant_format="QOperator"),
    "U8S8 per-channel, without quant_pre_process": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True,
                                             pre_process=False),
    "U8S8 per-channel, Conv/Gemm only": dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True,
                                             op_types=["Conv", "Gemm", "MatMul"]),
}


def variants(quick: bool = False, threads: int = 2, *, runs: int | None = None, say=print) -> list:
    """Quantize the cached FP32 ONNX with each of :data:`VARIANTS`; time them against FP32 in one run."""
    import contextlib  # noqa: PLC0415

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    from edgeship.calibration import load_samples  # noqa: PLC0415
    from edgeship.converters.onnx_quant import calibration_reader  # noqa: PLC0415

    spec = QUICK if quick else FULL
    b = build(spec, say=say)
    runs = runs or (40 if quick else 200)
    vdir = os.path.join(b.folder, "variants")
    os.makedirs(vdir, exist_ok=True)
    calib = load_samples(os.path.join(b.folder, "calib"), input_shape=(spec.size, spec.size, 3),
                         preprocess=_preprocess(spec), count=spec.calib_crops, seed=0).x
    pre = os.path.join(vdir, "pre.onnx")
    if not os.path.isfile(pre):
        quant_pre_process(b.fp32_onnx, pre, skip_optimization=False)
    import onnx  # noqa: PLC0415

    inp = onnx.load(pre).graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.load(b.sample)
    if dims[1] == 3:
        calib = np.ascontiguousarray(calib.transpose(0, 3, 1, 2))
    files = {}
    for name, kw in VARIANTS.items():
        kw = dict(kw)
        path = os.path.join(vdir, hashlib.sha1(name.encode()).hexdigest()[:10] + ".onnx")
        src = pre if kw.pop("pre_process", True) else b.fp32_onnx
        if not os.path.isfile(path):
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    src, path, calibration_reader([inp.name], calib, 1),
                    quant_format=getattr(QuantFormat, kw.pop("quant_format", "QDQ")),
                    activation_type=getattr(QuantType, kw.pop("activation_type")),
                    weight_type=getattr(QuantType, kw.pop("weight_type")),
                    op_types_to_quantize=kw.pop("op_types", None),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False}, **kw)
        files[name] = path
    engines = {"FP32": BareORT(b.fp32_onnx, threads)}
    engines.update({n: BareORT(p, threads) for n, p in files.items()})
    engines["U8S8 per-channel (edgeship x86), ORT basic opt"] = BareORT(files["U8S8 per-channel (edgeship x86)"],
                                                                       threads, level="basic")
    say(f"Timing FP32 and {len(engines) - 1} quantization variants x {runs} runs, interleaved, {threads} threads ...")
    s = interleaved({n: (lambda e=e: e.run(x)) for n, e in engines.items()}, runs=runs)
    out = []
    for n, e in engines.items():
        # ratio: FP32 p50 / variant p50. "float_ops": compute ops ORT still runs in float after fusing Q/DQ.
        r = _row(n, s[n], s["FP32"]["p50"] / s[n]["p50"])
        ops = e.optimized_ops()
        r["float_ops"] = sum(v for k, v in ops.items() if k in _FLOAT_COMPUTE) if n != "FP32" else None
        r["qdq_left"] = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
        out.append(r)
    return out


_FLOAT_COMPUTE = ("Conv", "FusedConv", "NchwcConv", "Add", "Mul", "Clip", "Relu", "MatMul", "Gemm", "FusedMatMul",
                  "GlobalAveragePool", "Softmax")


# ---------------------------------------------------------------------------- CLI


def table(rs: list) -> str:
    lines = [f"{'name':<56}{'p50 ms':>9}{'p90 ms':>9}{'ratio':>8}  target / pass"]
    for r in rs:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        tail = "" if r["target"] is None else f"{r['target']}: {'PASS' if r['pass'] else 'FAIL'}"
        if "float_ops" in r:
            tail = f"float compute ops {r['float_ops']}, Q/DQ left {r['qdq_left']}" if r["float_ops"] is not None else ""
        lines.append(f"{r['name']:<56}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{ratio:>8}  {tail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny MobileNetV2 and few runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=None, help="timed runs per engine")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached bundles")
    p.add_argument("--variants", action="store_true", help="also time other ONNX quantization settings")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    say = (lambda m: print(m, file=sys.stderr)) if a.json else print
    rs = rows(a.quick, a.threads, runs=a.runs, rebuild=a.rebuild, say=say)
    vs = variants(a.quick, a.threads, runs=a.runs, say=say) if a.variants else []
    if a.json:
        print(json.dumps({"rows": rs, "variants": vs}, indent=2))
    else:
        print(table(rs))
        if vs:
            print()
            print(table(vs))
    return 0 if all(r["pass"] is not False for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
