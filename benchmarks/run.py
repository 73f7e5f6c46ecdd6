"""The edgeship benchmark harness: ratios measured side by side in one run.

Run it with ``make bench`` or ``python benchmarks/run.py`` (``--quick`` for a
tiny model and few runs; ``--help`` for the options).

What it measures (issue 2, section 7):

* ``runtime``: ``edgeship.runtime`` ``Model.run`` against the bare LiteRT loop
  (``set_tensor``/``invoke``/``get_tensor`` plus the quantize/dequantize a user
  would have to write) on the same INT8 MobileNetV2 file with the same thread
  count, interleaved in rounds so that machine drift hits both alike.
  Target: edgeship's p50 within 3 % of the bare loop.
* ``precision``: INT8 against FP32 p50 through the runtime, interleaved too.
* ``cold_start``: a fresh process that imports ``edgeship.runtime``, loads the
  INT8 bundle and runs it once; its time from the first line of the script to
  the first result and its peak RSS (``ru_maxrss``), the median of a few
  processes. The same for the bare LiteRT interpreter (reference) and for
  ``tf.lite.Interpreter`` (contrast). Targets: <= 0.15 s and <= 60 MB.
* ``onnx``, ``prune``, ``stream``: wrappers around the standalone
  ``bench_onnx.py`` (target: INT8 ONNX >= 2x faster than FP32 ONNX),
  ``bench_prune.py`` (50 %: within 1 point and <= 0.72x gzip; 75 %: within 2
  points and <= 0.48x; ``--quick`` uses scikit-learn digits and few epochs) and
  ``bench_stream.py`` (stream FPS >= 0.9x inference-only and above the naive loop).
* ``convert_memory``: ``bench_convert_memory.py``, ``edgeship convert`` against a bare
  ``TFLiteConverter`` INT8 script on the same model and 100 samples (peak RSS <= 1.5x,
  wall time <= 1.3x, median of 3 alternated pairs; ``--quick``: a small model, 1 pair).
  A benchmark that raises becomes a failed ``<name>.error`` row; the others run.

The model is ``keras.applications.MobileNetV2(weights=None)`` at 224x224 (the
speed of a network does not depend on its weights), converted with
:func:`edgeship.converters.convert` to an INT8 bundle calibrated on crops of the
two photographs that ship inside scikit-learn (``load_sample_images``) and to an
FP32 bundle. Both are cached under ``benchmarks/results/cache/`` keyed by the
settings and the converter's source, so later runs only measure.

Adding a benchmark: write ``def bench_x(ctx: Context) -> list[dict]`` that
returns rows made with :func:`row` and append it to ``BENCHMARKS``. Every row
lands in the JSON (``rows`` and ``summary[key]``), the table and, when it has a
``plot`` group, the PNG.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

try:  # python -m benchmarks.run / imported as a package
    from ._timing import BareLiteRT, interleaved, stats
except ImportError:  # python benchmarks/run.py (this folder is on sys.path)
    from _timing import BareLiteRT, interleaved, stats

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

# Targets (issue 2, "Done when").
TARGET_RUNTIME_RATIO = 1.03  # edgeship p50 / bare LiteRT p50
TARGET_COLD_SECONDS = 0.15
TARGET_COLD_MB = 60.0


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """The benchmarked network and how it is calibrated."""

    name: str
    size: int
    alpha: float = 1.0
    classes: int = 1000
    calib_crops: int = 24  # crops of the two scikit-learn sample photos
    seed: int = 0

    def build(self):
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(self.seed)
        return keras.applications.MobileNetV2(
            weights=None, input_shape=(self.size, self.size, 3), alpha=self.alpha, classes=self.classes
        )


FULL_MODEL = ModelSpec("mobilenetv2-224", 224, calib_crops=32)
QUICK_MODEL = ModelSpec("mobilenetv2-64-a0.35-c10", 64, alpha=0.35, classes=10, calib_crops=12)


def _converter_fingerprint() -> str:
    """Hash of the converter's source: a changed converter rebuilds the cached bundles."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(REPO_DIR, "converters", "*.py"))):
        if os.path.basename(path) == "demo.py":
            continue
        with open(path, "rb") as fh:
            h.update(os.path.basename(path).encode() + b"\0" + fh.read())
    return h.hexdigest()[:12]


def _cache_key(spec: ModelSpec) -> str:
    import edgeship  # noqa: PLC0415

    versions = {}
    for mod in ("keras", "tensorflow"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    # Not the converter's source: the bundles measure the runtime, and a stale bundle that
    # the runtime no longer accepts is rebuilt anyway (see build_models).
    blob = json.dumps({"spec": asdict(spec), "versions": versions, "edgeship": edgeship.__version__},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _preprocess_spec(spec: ModelSpec):
    from edgeship.preprocess import ColorOrder, PreprocessSpec, ResizeMode  # noqa: PLC0415

    # MobileNetV2's own preprocessing: x / 127.5 - 1, RGB.
    return PreprocessSpec(size=(spec.size, spec.size), resize=ResizeMode.CENTER_CROP, color=ColorOrder.RGB,
                          scale=1.0 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0))


def _write_calibration_images(folder: str, spec: ModelSpec) -> list[str]:
    """Deterministic square crops (3 scales x a grid of positions) of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    from edgeship.preprocess import opencv as _cv2  # noqa: PLC0415

    cv2 = _cv2()
    os.makedirs(folder, exist_ok=True)
    photos = load_sample_images()
    crops = []
    positions = [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0), (0.5, 0.0)]
    for scale in (1.0, 0.7, 0.45):
        for fy, fx in positions:
            for pi, img in enumerate(photos.images):
                h, w = img.shape[:2]
                c = int(min(h, w) * scale)
                y, x = int((h - c) * fy), int((w - c) * fx)
                crops.append((f"{pi}_{int(scale * 100):03d}_{int(fy * 10)}{int(fx * 10)}", img[y:y + c, x:x + c]))
    paths = []
    for name, crop in crops[: spec.calib_crops]:
        # Stored a little larger than the model input; the bundle's spec resizes it.
        side = max(spec.size, 256)
        small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        path = os.path.join(folder, f"{name}.png")
        cv2.imwrite(path, cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@dataclass
class Built:
    spec: ModelSpec
    folder: str
    int8: str  # bundle folders
    fp32: str
    int8_file: str  # the .tflite files inside them
    fp32_file: str
    sample: str  # .npy with one preprocessed real image, batch 1
    cached: bool
    build_seconds: float


def build_models(spec: ModelSpec, cache_dir: str, *, rebuild: bool = False, say=print) -> Built:
    """Build (or reuse) the INT8 and FP32 bundles of ``spec`` under ``cache_dir``."""
    key = _cache_key(spec)
    folder = os.path.join(cache_dir, f"{spec.name}-{key}")
    stamp = os.path.join(folder, "built.json")
    if not rebuild and os.path.isfile(stamp):
        try:
            with open(stamp) as fh:
                d = json.load(fh)
            usable = all(os.path.exists(os.path.join(folder, d[k])) for k in ("int8_file", "fp32_file", "sample"))
        except (OSError, ValueError, KeyError, TypeError):
            usable = False
        if usable:
            from edgeship import runtime  # noqa: PLC0415
            from edgeship.errors import EdgeshipError  # noqa: PLC0415

            try:
                for precision in ("int8", "fp32"):
                    runtime.load(os.path.join(folder, precision)).close()
            except EdgeshipError as exc:
                say(f"Cached bundles in {os.path.relpath(folder)} no longer load ({exc}); rebuilding")
                usable = False
        if usable:
            note = ""
            if d.get("converter") != _converter_fingerprint():
                note = " (built by an older converter source; --rebuild to rebuild)"
            say(f"Using cached bundles in {os.path.relpath(folder)}{note}")
            return Built(spec, folder, os.path.join(folder, "int8"), os.path.join(folder, "fp32"),
                         os.path.join(folder, d["int8_file"]), os.path.join(folder, d["fp32_file"]),
                         os.path.join(folder, d["sample"]), True, float(d.get("build_seconds", 0.0)))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgeship import converters  # noqa: PLC0415
    from edgeship.preprocess import read_image  # noqa: PLC0415

    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    say(f"Building {spec.name} (keras.applications.MobileNetV2, weights=None) and converting it; cached in "
        f"{os.path.relpath(folder)} ...")
    calib_dir = os.path.join(folder, "calib")
    paths = _write_calibration_images(calib_dir, spec)
    model = spec.build()
    model_path = os.path.join(folder, "model.keras")
    model.save(model_path)
    pre = _preprocess_spec(spec)
    files = {}
    for precision in ("int8", "fp32"):
        res = converters.convert(model_path, os.path.join(folder, precision), calib=calib_dir, precision=precision,
                                 io="int8" if precision == "int8" else "float",
                                 preprocess=pre, calib_count=len(paths), seed=spec.seed, force=True,
                                 name=f"{spec.name}-{precision}", task="classification")
        art = [a for a in res.manifest["artifacts"] if a["format"] == "tflite" and a["precision"] == precision]
        files[precision] = os.path.join(precision, art[0]["file"])
        for w in res.warnings:
            say(f"  {precision} warning: {w}")
    sample = pre.apply(read_image(paths[2]))[None].astype(np.float32)  # a centre crop of the first photo
    np.save(os.path.join(folder, "sample.npy"), sample)
    build_seconds = time.perf_counter() - t0
    with open(stamp, "w") as fh:
        json.dump({"int8_file": files["int8"], "fp32_file": files["fp32"], "sample": "sample.npy",
                   "spec": asdict(spec), "key": key, "build_seconds": build_seconds,
                   "converter": _converter_fingerprint()}, fh, indent=2)
    say(f"  built in {build_seconds:.1f} s")
    return Built(spec, folder, os.path.join(folder, "int8"), os.path.join(folder, "fp32"),
                 os.path.join(folder, files["int8"]), os.path.join(folder, files["fp32"]),
                 os.path.join(folder, "sample.npy"), False, build_seconds)


# ---------------------------------------------------------------------------- harness


@dataclass
class Context:
    built: Built
    runs: int
    warmup: int
    threads: int
    cold_runs: int
    tf_cold_runs: int
    quick: bool
    say: Callable = print
    details: dict = field(default_factory=dict)  # per-benchmark raw figures for the JSON


def row(section: str, key: str, label: str, value, unit: str = "", *, target: str | None = None,
        passed: bool | None = None, plot: str | None = None) -> dict:
    """One line of the results: ``summary[f"{section}.{key}"] = value`` in the JSON."""
    return {"section": section, "key": key, "label": label, "value": value, "unit": unit, "target": target,
            "pass": passed, "plot": plot}


def _interleaved(fns: dict, *, runs: int, warmup: int, desc: str) -> dict:
    return interleaved(fns, runs=runs, warmup=warmup, desc=desc)


def bench_runtime_vs_bare(ctx: Context) -> list:
    """edgeship ``Model.run`` vs the bare LiteRT loop on the INT8 file, same threads, interleaved."""
    from edgeship import runtime  # noqa: PLC0415

    x = np.load(ctx.built.sample)
    bare = BareLiteRT(ctx.built.int8_file, ctx.threads)
    model = runtime.load(ctx.built.int8, threads=ctx.threads)
    unchecked = runtime.load(ctx.built.int8, threads=ctx.threads, check_finite=False)  # no NaN/Inf check
    try:
        ours = np.asarray(next(iter(model.run(x).values())))
        theirs = bare.run(x)
        diff = float(np.max(np.abs(ours.reshape(theirs.shape) - theirs)))
        q = bare.quantized_input(x)
        res = _interleaved({"edgeship": lambda: model.run(x), "bare": lambda: bare.run(x),
                            "bare_invoke": lambda: bare.invoke_only(q),
                            "edgeship_no_check": lambda: unchecked.run(x)},
                           runs=ctx.runs, warmup=ctx.warmup, desc="edgeship vs bare LiteRT")
        info = model.info
        info = info.to_dict() if hasattr(info, "to_dict") else {}
    finally:
        model.close()
        unchecked.close()
    ratio = res["edgeship"]["p50"] / res["bare"]["p50"]
    ctx.details["runtime"] = {"latency_ms": res, "max_abs_output_diff": diff, "runtime_info": info}
    s = "runtime"
    return [
        row(s, "edgeship_p50_ms", "edgeship Model.run p50 (INT8)", res["edgeship"]["p50"], "ms", plot="latency"),
        row(s, "bare_p50_ms", "bare LiteRT loop p50 (INT8)", res["bare"]["p50"], "ms", plot="latency"),
        row(s, "edgeship_p90_ms", "edgeship Model.run p90", res["edgeship"]["p90"], "ms"),
        row(s, "bare_p90_ms", "bare LiteRT loop p90", res["bare"]["p90"], "ms"),
        row(s, "edgeship_mean_ms", "edgeship Model.run mean", res["edgeship"]["mean"], "ms"),
        row(s, "bare_mean_ms", "bare LiteRT loop mean", res["bare"]["mean"], "ms"),
        row(s, "ratio_p50", "edgeship / bare, p50", ratio, "x", target=f"<= {TARGET_RUNTIME_RATIO:.2f}",
            passed=ratio <= TARGET_RUNTIME_RATIO),
        row(s, "bare_invoke_p50_ms", "bare invoke only p50 (no (de)quantize)", res["bare_invoke"]["p50"], "ms"),
        row(s, "ratio_p50_vs_invoke", "edgeship / bare invoke only, p50",
            res["edgeship"]["p50"] / res["bare_invoke"]["p50"], "x"),
        row(s, "ratio_mean", "edgeship / bare, mean", res["edgeship"]["mean"] / res["bare"]["mean"], "x"),
        row(s, "max_abs_output_diff", "max |edgeship - bare| output", diff, ""),
        row(s, "no_check_finite_p50_ms", "edgeship Model.run p50, check_finite=False", res["edgeship_no_check"]["p50"],
            "ms"),
        row(s, "check_finite_ratio_p50", "NaN/Inf check cost: run with / without check, p50",
            res["edgeship"]["p50"] / res["edgeship_no_check"]["p50"], "x"),
    ]


def bench_int8_vs_fp32(ctx: Context) -> list:
    """INT8 vs FP32 through the runtime, interleaved."""
    from edgeship import runtime  # noqa: PLC0415

    x = np.load(ctx.built.sample)
    m8 = runtime.load(ctx.built.int8, threads=ctx.threads)
    m32 = runtime.load(ctx.built.fp32, threads=ctx.threads)
    try:
        res = _interleaved({"int8": lambda: m8.run(x), "fp32": lambda: m32.run(x)},
                           runs=ctx.runs, warmup=ctx.warmup, desc="INT8 vs FP32")
    finally:
        m8.close()
        m32.close()
    b8, b32 = os.path.getsize(ctx.built.int8_file), os.path.getsize(ctx.built.fp32_file)
    ctx.details["precision"] = {"latency_ms": res, "bytes": {"int8": b8, "fp32": b32}}
    s = "precision"
    return [
        row(s, "fp32_p50_ms", "edgeship Model.run p50 (FP32)", res["fp32"]["p50"], "ms", plot="latency"),
        row(s, "int8_p50_ms", "edgeship Model.run p50 (INT8)", res["int8"]["p50"], "ms"),
        row(s, "ratio_p50", "INT8 / FP32, p50", res["int8"]["p50"] / res["fp32"]["p50"], "x"),
        row(s, "bytes_ratio", "INT8 / FP32, file bytes", b8 / b32, "x"),
    ]


_CHILD_HEAD = "import time\n_t0 = time.perf_counter()\nimport json, resource, sys\nimport numpy as np\n"
_CHILD_TAIL = (
    "_t1 = time.perf_counter()\n"
    "assert np.all(np.isfinite(np.asarray(y, dtype=np.float32)))\n"
    "_hwm = None\n"
    "try:\n"
    "    with open('/proc/self/status') as _f:\n"
    "        _hwm = [int(l.split()[1]) for l in _f if l.startswith('VmHWM:')][0]\n"
    "except (OSError, IndexError, ValueError):\n"
    "    pass\n"
    "print('EDGESHIP_COLD ' + json.dumps({'seconds': _t1 - _t0, 'vmhwm_kb': _hwm, "
    "'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "'modules': sorted(m for m in ('tensorflow', 'cv2', 'onnx', 'tf_keras') if m in sys.modules)}))\n"
)

COLD_SCRIPTS = {
    "edgeship": (
        "import edgeship.runtime as rt\n"
        "m = rt.load(sys.argv[1], threads=int(sys.argv[4]))\n"
        "y = next(iter(m.run(np.load(sys.argv[3])).values()))\n"
    ),
    "bare_litert": (
        "from ai_edge_litert.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[2], num_threads=int(sys.argv[4]))\n"
        "it.allocate_tensors()\n"
        "i, o = it.get_input_details()[0], it.get_output_details()[0]\n"
        "s, z = i['quantization']\n"
        "it.set_tensor(i['index'], np.clip(np.round(np.load(sys.argv[3]) / s + z), -128, 127).astype(np.int8))\n"
        "it.invoke()\n"
        "s, z = o['quantization']\n"
        "y = (it.get_tensor(o['index']).astype(np.float32) - z) * s\n"
    ),
    "tensorflow": (
        "import tensorflow as tf\n"
        "it = tf.lite.Interpreter(model_path=sys.argv[2], num_threads=int(sys.argv[4]))\n"
        "it.allocate_tensors()\n"
        "i, o = it.get_input_details()[0], it.get_output_details()[0]\n"
        "s, z = i['quantization']\n"
        "it.set_tensor(i['index'], np.clip(np.round(np.load(sys.argv[3]) / s + z), -128, 127).astype(np.int8))\n"
        "it.invoke()\n"
        "s, z = o['quantization']\n"
        "y = (it.get_tensor(o['index']).astype(np.float32) - z) * s\n"
    ),
}


def cold_start(kind: str, built: Built, threads: int) -> dict:
    """One fresh process: seconds from its first line to the first result, peak RSS, process wall time."""
    code = _CHILD_HEAD + COLD_SCRIPTS[kind] + _CHILD_TAIL
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, os.path.abspath(built.int8), os.path.abspath(built.int8_file),
         os.path.abspath(built.sample), str(threads)],
        capture_output=True, text=True, cwd=built.folder, env=env, timeout=300,
    )
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("EDGESHIP_COLD ")]
    if proc.returncode != 0 or not line:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"cold-start child ({kind}) failed with exit code {proc.returncode}: " + " | ".join(tail))
    d = json.loads(line[-1][len("EDGESHIP_COLD "):])
    # Peak RSS of the child's own address space. Linux carries ru_maxrss over fork+exec
    # (a child of a parent that has TensorFlow loaded reports the parent's peak), so use
    # VmHWM, the high-water mark of the mm that exec created; ru_maxrss elsewhere.
    if d.get("vmhwm_kb") is not None:
        kb = d["vmhwm_kb"]
    else:
        kb = d["maxrss_kb"] if sys.platform != "darwin" else d["maxrss_kb"] / 1024
    return {"seconds": d["seconds"], "rss_mb": kb * 1024 / 1e6, "process_seconds": wall, "modules": d["modules"],
            "ru_maxrss_mb": (d["maxrss_kb"] if sys.platform != "darwin" else d["maxrss_kb"] / 1024) * 1024 / 1e6}


def bench_cold_start(ctx: Context) -> list:
    """Fresh processes: import, load the INT8 model, run once (median of a few)."""
    import compileall  # noqa: PLC0415

    from edgeship.progress import progress  # noqa: PLC0415

    # A device install (pip) byte-compiles the package; an editable checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module from source in
    # each child and measure the compiler, not the runtime.
    for pkg in ("sdk", "runtime"):
        compileall.compile_dir(os.path.join(os.path.dirname(BENCH_DIR), pkg), quiet=1)
    plan = [("edgeship", ctx.cold_runs), ("bare_litert", ctx.cold_runs), ("tensorflow", ctx.tf_cold_runs)]
    jobs = []
    # Interleave the kinds so that a busy moment does not land on one of them only.
    for i in range(max(n for _k, n in plan)):
        jobs += [k for k, n in plan if i < n]
    samples: dict = {k: [] for k, n in plan if n > 0}
    for kind in progress(jobs, total=len(jobs), desc="cold starts"):
        samples[kind].append(cold_start(kind, ctx.built, ctx.threads))
    med = {
        k: {
            "seconds": statistics.median(r["seconds"] for r in v),
            "rss_mb": statistics.median(r["rss_mb"] for r in v),
            "process_seconds": statistics.median(r["process_seconds"] for r in v),
            "runs": len(v),
            "modules": v[0]["modules"],
        }
        for k, v in samples.items()
    }
    ctx.details["cold_start"] = {"median": med, "runs": samples}
    s = "cold_start"
    e = med["edgeship"]
    rows = [
        row(s, "edgeship_seconds", "edgeship.runtime: import+load+run", e["seconds"], "s",
            target=f"<= {TARGET_COLD_SECONDS}", passed=e["seconds"] <= TARGET_COLD_SECONDS, plot="cold_seconds"),
        row(s, "edgeship_rss_mb", "edgeship.runtime: peak RSS", e["rss_mb"], "MB",
            target=f"<= {TARGET_COLD_MB:.0f}", passed=e["rss_mb"] <= TARGET_COLD_MB, plot="cold_rss"),
        row(s, "edgeship_process_seconds", "edgeship.runtime: whole process", e["process_seconds"], "s"),
        row(s, "edgeship_heavy_modules", "heavy modules imported", ",".join(e["modules"]) or "none", "",
            target="none", passed=not e["modules"]),
    ]
    for k, label in (("bare_litert", "bare LiteRT"), ("tensorflow", "tf.lite.Interpreter")):
        if k in med:
            rows += [
                row(s, f"{k}_seconds", f"{label}: import+load+run", med[k]["seconds"], "s", plot="cold_seconds"),
                row(s, f"{k}_rss_mb", f"{label}: peak RSS", med[k]["rss_mb"], "MB", plot="cold_rss"),
                row(s, f"{k}_process_seconds", f"{label}: whole process", med[k]["process_seconds"], "s"),
            ]
    if "bare_litert" in med:
        rows.append(row(s, "ratio_seconds_vs_bare", "edgeship / bare LiteRT, cold start",
                        e["seconds"] / med["bare_litert"]["seconds"], "x"))
    return rows


# ---------------------------------------------------------------------------- standalone modules


def _module(name: str):
    """Import ``benchmarks/<name>.py`` (a standalone script beside this one)."""
    import importlib  # noqa: PLC0415

    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    return importlib.import_module(name)


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in text.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")


def bench_onnx(ctx: Context) -> list:
    """ONNX Runtime FP32 vs INT8 (bare and through edgeship.runtime), and LiteRT INT8 beside them."""
    mod = _module("bench_onnx")
    rs = mod.rows(quick=ctx.quick, threads=ctx.threads, say=ctx.say)
    ctx.details["onnx"] = rs
    out = []
    for r in rs:
        key = _slug(r["name"].split("(")[0])
        out.append(row("onnx", f"{key}_p50_ms", f"{r['name'].split(' (')[0]}: p50", r["p50_ms"], "ms",
                       plot="latency"))
        out.append(row("onnx", f"{key}_p90_ms", f"{r['name'].split(' (')[0]}: p90", r["p90_ms"], "ms"))
        if r.get("ratio") is not None:
            label = r["name"][r["name"].find("(") + 1:].rstrip(")") if "(" in r["name"] else "ratio"
            out.append(row("onnx", f"{key}_ratio", f"{r['name'].split(' (')[0]}: {label}", r["ratio"], "x",
                           target=r.get("target"), passed=r.get("pass")))
    return out


def bench_prune(ctx: Context) -> list:
    """Dense vs pruned (50%, 75%, 2:4, 1x4) INT8 TFLite: gzip bytes and accuracy (digits in --quick)."""
    mod = _module("bench_prune")
    opts = dict(dataset="digits", epochs=2, prune_epochs=1) if ctx.quick else dict(dataset="auto")
    rs = mod.rows(**opts)
    ctx.details["prune"] = {"options": opts, "rows": rs}
    out = []
    for r in rs:
        key = _slug(r["config"])
        out.append(row("prune", f"{key}_int8_accuracy", f"{r['config']}: INT8 accuracy", r["int8_accuracy"]))
        out.append(row("prune", f"{key}_int8_gzip_bytes", f"{r['config']}: INT8 gzip", r["int8_gzip_bytes"], "B"))
        if r.get("target_drop_points") is None:
            continue
        ok_drop = r["drop_points_int8"] <= r["target_drop_points"]
        ok_gz = r["gzip_ratio"] <= r["target_gzip_ratio"]
        out.append(row("prune", f"{key}_drop_points", f"{r['config']}: accuracy drop vs dense FP32 (INT8)",
                       r["drop_points_int8"], "pt", target=f"<= {r['target_drop_points']:g} pt", passed=ok_drop))
        out.append(row("prune", f"{key}_gzip_ratio", f"{r['config']}: INT8 gzip / dense INT8 gzip", r["gzip_ratio"],
                       "x", target=f"<= {r['target_gzip_ratio']:g}x", passed=ok_gz))
    return out


TARGET_STREAM_VS_INFERENCE = 0.9  # end-to-end stream FPS / inference-only FPS


def bench_stream(ctx: Context) -> list:
    """Video stream FPS: edgeship stream vs inference only vs a naive serial loop."""
    mod = _module("bench_stream")
    # threads=None: the stream's own default (one core left to capture and preprocess on
    # live sources); each row says which thread count it ran with.
    rs = mod.rows(seconds=2 if ctx.quick else 5, threads=(None,))
    ctx.details["stream"] = rs
    out = []
    groups: dict = {}
    for r in rs:
        groups.setdefault(r["model"], {})[r["mode"]] = r
    for model, modes in groups.items():
        key = _slug(model)
        name = model
        for mode, r in modes.items():
            out.append(row("stream", f"{key}_{_slug(mode)}_fps", f"{name}: {mode} ({r['threads']} threads)", r["fps"],
                           "FPS"))
        s, inf, naive = modes.get("edgeship stream"), modes.get("inference only"), modes.get("naive serial loop")
        if s and inf:
            ratio = s["fps"] / inf["fps"] if inf["fps"] else 0.0
            out.append(row("stream", f"{key}_stream_vs_inference", f"{name}: stream / inference-only FPS", ratio,
                           "x", target=f">= {TARGET_STREAM_VS_INFERENCE:g}x",
                           passed=ratio >= TARGET_STREAM_VS_INFERENCE))
        if s and naive:
            ratio = s["fps"] / naive["fps"] if naive["fps"] else float("inf")
            out.append(row("stream", f"{key}_stream_vs_naive", f"{name}: stream / naive loop FPS (same threads)",
                           ratio, "x", target="> 1x", passed=ratio > 1.0))
        other = modes.get("naive loop, default threads")
        if s and other and other["fps"]:
            out.append(row("stream", f"{key}_stream_vs_naive_default_threads",
                           f"{name}: stream / naive loop with {other['threads']} threads", s["fps"] / other["fps"], "x"))
    return out



def bench_targets(ctx: Context) -> list:
    """``edgeship bench --all`` on the INT8 bundle: every engine available here, each in a fresh process."""
    from edgeship.benchtool import bench_all  # noqa: PLC0415

    res = bench_all(ctx.built.int8, runs=max(20, ctx.runs // 3), warmup=ctx.warmup, threads=ctx.threads)
    ctx.details["targets"] = res
    out = []
    for c in res["combinations"]:
        name = f"{c['artifact'] or 'model'} on {c['backend']}" + (f" + {c['delegate']}" if c["delegate"] else "")
        key = _slug(name)
        if c["skipped"]:
            out.append(row("targets", f"{key}_skipped", f"{name}: cannot run", c["skipped"][:60]))
            continue
        out.append(row("targets", f"{key}_p50_ms", f"{name}: p50", c["p50_ms"], "ms"))
        out.append(row("targets", f"{key}_init_ms", f"{name}: init", c["init_ms"], "ms"))
        out.append(row("targets", f"{key}_peak_rss_mb", f"{name}: peak RSS", c["peak_rss_bytes"] / 1e6, "MB"))
    return out

def bench_engines(ctx: Context) -> list:
    """MobileNetV2 and ResNet50: every engine (OpenVINO too) and the peers (NNCF, quantize_static) in one run."""
    mod = _module("bench_engines")
    rs = mod.rows(quick=ctx.quick, threads=ctx.threads, say=ctx.say)
    ctx.details["engines"] = [r.get("raw") for r in rs if "raw" in r]
    ctx.details["engines_files"] = mod.write_results(rs, quick=ctx.quick, command="make bench (benchmarks/run.py)")
    out = []
    for r in rs:
        key = _slug(r["name"])
        if "p50_ms" in r:
            out.append(row("engines", f"{key}_p50_ms", f"{r['name']}: p50", r["p50_ms"], "ms", plot="engines"))
            if r.get("top1_agreement") is not None:
                out.append(row("engines", f"{key}_top1", f"{r['name']}: top-1 agreement with FP32",
                               r["top1_agreement"]))
        elif "images_per_s" in r:
            out.append(row("engines", f"{key}_images_per_s", f"{r['name']}: images/s", r["images_per_s"], "img/s"))
        elif "ratio" in r:
            out.append(row("engines", f"{key}_ratio", f"{r['name']} {r.get('detail', '')}".strip(), r["ratio"], "x",
                           target=r["target"], passed=r["pass"]))
    return out


def bench_convert_memory(ctx: Context) -> list:
    """``edgeship convert`` vs a bare TFLiteConverter script: peak RSS and wall time, paired, fresh processes."""
    mod = _module("bench_convert_memory")
    rs = mod.rows(quick=ctx.quick, say=ctx.say)
    return [row("convert_memory", r["key"], r["label"], r["value"], r["unit"], target=r.get("target"),
                passed=r.get("pass")) for r in rs]


BENCHMARKS: list = [bench_runtime_vs_bare, bench_int8_vs_fp32, bench_cold_start, bench_onnx, bench_prune,
                    bench_stream, bench_targets, bench_engines, bench_convert_memory]


# ---------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(rows: list) -> str:
    header = ["section", "metric", "value", "target", "result"]
    lines = []
    for r in rows:
        lines.append([r["section"], r["label"], f"{_fmt(r['value'])} {r['unit']}".strip(), r["target"] or "",
                      "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")])
    widths = [max(len(x[i]) for x in [header] + lines) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    prev = None
    for ln in lines:
        cells = list(ln)
        if cells[0] == prev:
            cells[0] = ""
        else:
            prev = cells[0]
        out.append("  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(out)


def plot(rows: list, path: str, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = [("latency", "p50 latency, 1 image (ms)", None),
              ("cold_seconds", "cold start: import + load + run (s)", TARGET_COLD_SECONDS),
              ("cold_rss", "cold start: peak RSS (MB)", TARGET_COLD_MB)]
    present = [g for g in groups if any(r["plot"] == g[0] for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(5 * max(1, len(present)), 4.2))
    axes = np.atleast_1d(axes)
    for ax, (g, ylabel, target) in zip(axes, present):
        rs = [r for r in rows if r["plot"] == g]
        labels = [r["label"].split(":")[0].replace(" Model.run p50", "").replace(" loop p50", "") for r in rs]
        vals = [float(r["value"]) for r in rs]
        colors = ["#1f77b4" if "edgeship" in r["key"] else "#888888" for r in rs]
        bars = ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        if g in ("cold_seconds", "cold_rss") and max(vals) / max(min(vals), 1e-9) > 8:
            ax.set_yscale("log")
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8)
        if target is not None:
            ax.axhline(target, color="#d62728", linestyle="--", linewidth=1, label=f"target {target:g}")
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _meta(ctx: Context, args) -> dict:
    import edgeship  # noqa: PLC0415

    versions = {"python": platform.python_version(), "numpy": np.__version__, "edgeship": edgeship.__version__}
    try:
        from importlib.metadata import version  # noqa: PLC0415

        for dist in ("ai-edge-litert", "tensorflow", "keras"):
            try:
                versions[dist] = version(dist)
            except Exception:
                versions[dist] = None
    except ImportError:  # pragma: no cover
        pass
    return {
        "model": asdict(ctx.built.spec),
        "bundles": {"int8": ctx.built.int8, "fp32": ctx.built.fp32},
        "files": {"int8": ctx.built.int8_file, "fp32": ctx.built.fp32_file},
        "bundles_cached": ctx.built.cached,
        "build_seconds": ctx.built.build_seconds,
        "runs": ctx.runs,
        "warmup": ctx.warmup,
        "threads": ctx.threads,
        "cold_runs": ctx.cold_runs,
        "tf_cold_runs": ctx.tf_cold_runs,
        "quick": ctx.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "versions": versions,
        "command": " ".join([os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "benchmarks/run.py"]
                            + list(args)),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description="edgeship benchmark harness (issue 2, section 7)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per engine (default 300; 40 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 20; 5 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads, the same for every engine "
                                                             "(default: the number of CPUs)")
    p.add_argument("--cold-runs", type=int, default=None, help="fresh processes per cold-start kind (default 5; 2 "
                                                               "with --quick; TensorFlow gets at most 3)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the JSON here (default benchmarks/results/latest.json; the PNG goes beside it)")
    p.add_argument("--cache-dir", default=None, help="where the built bundles are cached "
                                                     "(default benchmarks/results/cache)")
    p.add_argument("--quick", action="store_true", help="a tiny MobileNetV2 (64x64, alpha 0.35) and few runs")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached bundles")
    p.add_argument("--only", default=None, help="comma-separated benchmark names (e.g. runtime_vs_bare,cold_start)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    for name in ("runs", "warmup", "threads", "cold_runs"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}, got {v}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_start = time.perf_counter()
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731  (stdout carries the table)
    spec = QUICK_MODEL if args.quick else FULL_MODEL
    cache_dir = os.path.abspath(args.cache_dir or os.path.join(RESULTS_DIR, "cache"))
    known = [b.__name__.removeprefix("bench_") for b in BENCHMARKS]
    wanted = None if not args.only else {s.strip() for s in args.only.split(",") if s.strip()}
    if wanted is not None and not wanted <= set(known):
        p.error(f"--only: unknown benchmark(s) {', '.join(sorted(wanted - set(known)))}; "
                f"expected some of {', '.join(known)}")
    built = build_models(spec, cache_dir, rebuild=args.rebuild, say=say)
    cold = args.cold_runs or (2 if args.quick else 5)
    ctx = Context(
        built=built,
        runs=args.runs or (40 if args.quick else 300),
        warmup=args.warmup if args.warmup is not None else (5 if args.quick else 20),
        threads=args.threads or os.cpu_count() or 1,
        cold_runs=cold,
        tf_cold_runs=1 if args.quick else min(cold, 3),
        quick=args.quick,
        say=say,
    )
    rows: list = []
    for bench in BENCHMARKS:
        name = bench.__name__.removeprefix("bench_")
        if wanted is not None and name not in wanted:
            continue
        say(f"[{name}] {(bench.__doc__ or '').strip().splitlines()[0]}")
        try:
            rows += bench(ctx)
        except (Exception, SystemExit) as exc:  # one broken benchmark must not cost the others' figures
            import traceback  # noqa: PLC0415

            traceback.print_exc(file=sys.stderr)
            msg = f"{type(exc).__name__}: {exc}".strip()[:300]
            say(f"[{name}] FAILED: {msg}")
            ctx.details.setdefault("errors", {})[name] = msg
            rows.append(row(name, "error", f"{name}: benchmark raised", msg, target="runs without error",
                            passed=False))

    title = (f"edgeship benchmarks: {spec.name}, {ctx.threads} threads, {ctx.runs} runs/engine, "
             f"{platform.machine()} x{os.cpu_count()}")
    table = format_table(rows)
    print(title)
    print(table)
    failed = [r for r in rows if r["pass"] is False]
    print(f"\n{sum(r['pass'] is True for r in rows)} targets met, {len(failed)} missed"
          + (": " + ", ".join(f"{r['section']}.{r['key']}" for r in failed) if failed else ""))

    json_path = os.path.abspath(args.json or os.path.join(RESULTS_DIR, "latest.json"))
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    png_path = os.path.splitext(json_path)[0] + ".png"
    result = {
        "meta": _meta(ctx, argv),
        "rows": rows,
        "summary": {f"{r['section']}.{r['key']}": r["value"] for r in rows},
        "targets": {f"{r['section']}.{r['key']}": {"target": r["target"], "pass": r["pass"]}
                    for r in rows if r["pass"] is not None},
        "details": ctx.details,
        "seconds": None,
    }
    try:
        plot(rows, png_path, title)
        result["plot"] = png_path
    except Exception as exc:  # a plot is a convenience; the figures are in the JSON
        say(f"could not draw {png_path}: {exc}")
        result["plot"] = None
    result["seconds"] = time.perf_counter() - t_start
    tmp = json_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    os.replace(tmp, json_path)
    print(f"\nJSON: {os.path.relpath(json_path)}   plot: {os.path.relpath(png_path)}   "
          f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
