"""Stream throughput, side by side in one run: pipelined stream vs inference only vs a naive serial loop.

    python benchmarks/bench_stream.py [--seconds 6] [--threads 1,2] [--json]

For each model, on the same synthetic 640x480 video (decoded as fast as the
file allows, every frame processed):

- ``inference``: ``model.run`` on one preprocessed frame in a tight loop, the
  ceiling for any stream;
- ``naive``: the serial loop most demos write (read, preprocess, run,
  postprocess, draw, one after the other on one thread);
- ``stream``: :func:`edgeship.runtime.stream.run_stream` (stages on threads).

Models: MobileNetV2 (alpha 1.0, random weights: speed does not depend on
them) quantized to INT8 with TFLite at 224x224 (on a fast CPU, quicker than
decoding and resizing a 640x480 frame: the source is the bottleneck) and at
448x448 (inference is the bottleneck: a source faster than inference), built
once and cached under ``.edgeship-demo/bench``, and the
repo's demo detector when its bundle is cached (``.edgeship-demo/detector-int8``;
``--detector`` builds it). ``rows()`` returns the figures for
``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(ROOT, ".edgeship-demo", "bench")


def _synthetic_video(path: str, seconds: float) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_video", os.path.join(ROOT, "examples", "synthetic_video.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write_video(path, seconds=seconds, fps=30, size=(640, 480), seed=7)
    return path


def mobilenet_int8(size: int = 224, cache: str = CACHE) -> str:
    """A MobileNetV2-1.0 ``size``x``size`` full-INT8 .tflite (random weights, built once; its output is noise)."""
    path = os.path.join(cache, f"mobilenetv2_100_{size}_int8.tflite")
    if os.path.isfile(path):
        return path
    os.makedirs(cache, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0, weights=None, classes=10)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.uniform(0, 1, (1, size, size, 3)).astype(np.float32)] for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tmp = path + ".tmp"
    sys.stdout.flush()
    saved = os.dup(1)
    try:  # the converter prints hundreds of lines on stdout
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            blob = conv.convert()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    with open(tmp, "wb") as fh:
        fh.write(blob)
    os.replace(tmp, path)
    return path


def _inference_only(model, x, seconds: float) -> dict:
    for _ in range(5):
        model.run(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run(x)
        n += 1
    dt = time.perf_counter() - t0
    return {"fps": n / dt, "frames": n}


def _naive(model, video: str, task, max_seconds: float) -> dict:
    """The serial loop: everything on one thread, one frame at a time."""
    import cv2

    from edgeship.runtime import detect as D
    from edgeship.runtime.adapters import get_classes
    from edgeship.runtime.stream import Task, draw_results

    spec, labels = D.preprocess_spec(model), D.model_labels(model)
    cap = cv2.VideoCapture(video)
    n, t0 = 0, time.perf_counter()
    lat = []
    while time.perf_counter() - t0 < max_seconds:
        t_cap = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        out = model.run(D.prepare_input(model, spec, frame))
        if task is Task.DETECT:
            res = D.postprocess(out, (frame.shape[1], frame.shape[0]), spec=spec, threshold=0.5, labels=labels)
        else:
            res = get_classes(np.asarray(next(iter(out.values())))[0], top_k=3, labels=labels)
        draw_results(frame, res, task)
        lat.append((time.perf_counter() - t_cap) * 1000)
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return {"fps": n / dt, "frames": n, "latency_ms": float(np.median(lat)) if lat else None}


def bench_model(path: str, video: str, *, threads: int | None, seconds: float) -> list[dict]:
    import cv2

    import edgeship.runtime as rt
    from edgeship.runtime import detect as D
    from edgeship.runtime.stream import Stream, _guess_task, run_stream

    rows = []
    with rt.load(path, threads=threads) as model:
        cap = cv2.VideoCapture(video)
        ok, frame = cap.read()
        cap.release()
        x = D.prepare_input(model, D.preprocess_spec(model), frame)
        task = _guess_task(model)
        name = os.path.basename(path.rstrip("/"))
        label = f"{name} ({model.info.threads or 'default'} threads)"
        inf = _inference_only(model, x, seconds / 2)
        naive = _naive(model, video, task, seconds)
        s = run_stream(model, video, display="none", duration=seconds, log=lambda m: None)
        del Stream
        base = {"model": name, "task": task.value, "threads": model.info.threads, "backend": model.info.backend}
        rows.append({**base, "mode": "inference only", "fps": round(inf["fps"], 1), "vs_inference": 1.0,
                     "latency_p50_ms": round(1000 / inf["fps"], 2)})
        rows.append({**base, "mode": "naive serial loop", "fps": round(naive["fps"], 1),
                     "vs_inference": round(naive["fps"] / inf["fps"], 3),
                     "latency_p50_ms": round(naive["latency_ms"], 2) if naive["latency_ms"] else None})
        rows.append({**base, "mode": "edgeship stream", "fps": round(s["fps"], 1),
                     "vs_inference": round(s["fps"] / inf["fps"], 3),
                     "latency_p50_ms": s["stages_ms"]["latency"]["p50"],
                     "stages_ms": {k: v["mean"] for k, v in s["stages_ms"].items()}})
        del label
    return rows


def rows(*, seconds: float = 6.0, threads=(None,), detector: bool = False, workdir: str | None = None) -> list[dict]:
    """Run the comparison and return one row per (model, threads, mode)."""
    import tempfile

    models = [mobilenet_int8(224), mobilenet_int8(448)]
    demo_dir = workdir or os.path.join(ROOT, ".edgeship-demo")
    det = os.path.join(demo_dir, "detector-int8")
    if detector and not os.path.isfile(os.path.join(det, "manifest.json")):
        from edgeship.converters import detector_demo

        det = detector_demo.build(demo_dir)
    if os.path.isfile(os.path.join(det, "manifest.json")):
        models.append(det)
    out = []
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp:
        video = _synthetic_video(os.path.join(tmp, "bench.mp4"), seconds=max(seconds * 4, 10))
        for m in models:
            for t in threads:
                out.extend(bench_model(m, video, threads=t, seconds=seconds))
    return out


def format_rows(rs: list[dict]) -> str:
    lines = [f"{'model':<34}{'threads':>8}  {'mode':<18}{'FPS':>8}{'x infer':>9}{'p50 lat ms':>12}"]
    for r in rs:
        lines.append(f"{r['model']:<34}{str(r['threads'] or '-'):>8}  {r['mode']:<18}{r['fps']:>8.1f}"
                     f"{r['vs_inference']:>9.2f}{(r['latency_p50_ms'] or 0):>12.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per measurement (default 6)")
    p.add_argument("--threads", default="", help="comma list of inference thread counts (default: the runtime's)")
    p.add_argument("--detector", action="store_true", help="build the demo detector if it is not cached")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(",") if t.strip()) or (None,)
    rs = rows(seconds=args.seconds, threads=threads, detector=args.detector)
    if args.json:
        print(json.dumps(rs, indent=2))
    else:
        print(format_rows(rs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
