"""Stream throughput, side by side in one run: pipelined stream vs inference only vs a naive serial loop.

    python benchmarks/bench_stream.py [--seconds 6] [--threads 1,2] [--json]

For each model, from the same source -- the frames of a synthetic 640x480
video, decoded once into memory and delivered like a camera at twice the
model's inference-only frame rate (a source faster than inference, so the
source is never the bottleneck; every ``retrieve()`` hands out a fresh copy,
as a decoder does):

- ``inference``: ``model.run`` in a tight loop on one frame preprocessed the
  way the stream feeds it (already quantized for an INT8 model: the engine's
  own speed, the ceiling for any stream), with the stream's thread count;
- ``naive``: the serial loop most demos write (read, preprocess with
  ``prepare_input``, run, postprocess, draw, one after the other on one
  thread), with the runtime's default thread count (what that loop gets);
- ``stream``: :func:`edgeship.runtime.stream.run_stream` (stages on threads),
  with :func:`edgeship.runtime.stream.stream_threads` threads for a live
  source (one core left to capture/preprocess/draw on a small machine)
  unless ``--threads`` says otherwise.

The ``threads`` column gives each row's inference thread count.

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


class MemoryCapture:
    """A camera-like ``cv2.VideoCapture`` stand-in over frames decoded once into memory.

    Frame ``k`` "arrives" at ``t0 + k / fps``; ``grab()`` takes the newest
    frame that has arrived (waiting for the next one when none is new),
    ``retrieve()`` returns a copy of it, ``read()`` does both.
    """

    def __init__(self, frames: list, fps: float) -> None:
        self.frames, self.fps = frames, float(fps)
        self.t0 = time.perf_counter()
        self.k = -1

    def isOpened(self) -> bool:
        return True

    def grab(self) -> bool:
        now = time.perf_counter()
        k = int((now - self.t0) * self.fps)
        if k <= self.k:
            k = self.k + 1
            time.sleep(max(0.0, self.t0 + k / self.fps - now))
        self.k = k
        return True

    def retrieve(self):
        return True, self.frames[self.k % len(self.frames)].copy()

    def read(self):
        self.grab()
        return self.retrieve()

    def get(self, prop) -> float:
        import cv2

        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value) -> bool:
        return False

    def release(self) -> None:
        pass


def _memory_source(frames: list, fps: float):
    import cv2

    from edgeship.runtime.stream import SourceKind, SourceSpec, VideoSource

    spec = SourceSpec(f"memory://{len(frames)}-frames@{fps:.0f}fps", SourceKind.CAMERA, 0, cv2.CAP_ANY, True)
    return VideoSource(spec, opener=lambda *a: MemoryCapture(frames, fps), reconnect=False)


def _naive(model, cap, task, max_seconds: float) -> dict:
    """The serial loop: everything on one thread, one frame at a time."""
    from edgeship.runtime import tasks as D
    from edgeship.runtime.tasks import get_classes
    from edgeship.runtime.stream import Task, draw_results

    spec, labels = D.preprocess_spec(model), D.model_labels(model)
    for _ in range(5):
        model.run(D.prepare_input(model, spec, cap.read()[1]))
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


def _decode(video: str, n: int = 90) -> list:
    import cv2

    cap = cv2.VideoCapture(video)
    frames = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def bench_model(path: str, video: str, *, threads: int | None, seconds: float) -> list[dict]:
    import edgeship.runtime as rt
    from edgeship.runtime import tasks as D
    from edgeship.runtime.stream import FastPreprocess, guess_task, run_stream, stream_threads

    frames = _decode(video)
    name = os.path.basename(path.rstrip("/"))
    t_stream = threads or stream_threads(live=True)
    rows = []
    with rt.load(path, threads=t_stream) as model:
        spec = D.preprocess_spec(model)
        fast = FastPreprocess.build(model, spec)
        x = fast(frames[0]) if fast is not None else None
        x = D.prepare_input(model, spec, frames[0]) if x is None else x
        task = guess_task(model)
        inf = _inference_only(model, x, seconds / 2)
        src_fps = 2 * inf["fps"]
        s = run_stream(model, _memory_source(frames, src_fps), display="none", duration=seconds, log=lambda m: None)
        base = {"model": name, "task": task.value, "backend": model.info.backend, "source_fps": round(src_fps)}
        rows.append({**base, "mode": "inference only", "threads": model.info.threads, "fps": round(inf["fps"], 1),
                     "vs_inference": 1.0, "latency_p50_ms": round(1000 / inf["fps"], 2),
                     "input": str(x.dtype)})
        stream_row = {**base, "mode": "edgeship stream", "threads": model.info.threads, "fps": round(s["fps"], 1),
                      "vs_inference": round(s["fps"] / inf["fps"], 3),
                      "latency_p50_ms": s["stages_ms"]["latency"]["p50"],
                      "stages_ms": {k: v["mean"] for k, v in s["stages_ms"].items()},
                      "frames_dropped": s["frames_dropped"]}
    # The naive loop twice: with the stream's thread count (like for like: the pipeline is what
    # differs) and with the runtime's default threads (what someone writing that loop gets).
    naive_threads = [t_stream] + ([threads] if threads != t_stream else [])
    for t in dict.fromkeys(naive_threads):
        with rt.load(path, threads=t) as model:
            if t is None and model.info.threads == t_stream:
                continue
            naive = _naive(model, MemoryCapture(frames, src_fps), task, seconds)
            mode = "naive serial loop" if t == t_stream else "naive loop, default threads"
            rows.append({**base, "mode": mode, "threads": model.info.threads,
                         "fps": round(naive["fps"], 1), "vs_inference": round(naive["fps"] / inf["fps"], 3),
                         "latency_p50_ms": round(naive["latency_ms"], 2) if naive["latency_ms"] else None})
    rows.append(stream_row)
    return rows


def rows(*, seconds: float = 6.0, threads=(None,), detector: bool = False, workdir: str | None = None) -> list[dict]:
    """Run the comparison and return one row per (model, threads, mode)."""
    import tempfile

    models = [mobilenet_int8(224), mobilenet_int8(448)]
    demo_dir = workdir or os.path.join(ROOT, ".edgeship-demo")
    det = os.path.join(demo_dir, "detector-int8")
    if detector and not os.path.isfile(os.path.join(det, "manifest.json")):
        from edgeship.demos import detector as detector_demo

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
    lines = [f"{'model':<34}{'threads':>8}  {'mode':<18}{'FPS':>8}{'x infer':>9}{'p50 lat ms':>12}"
             f"{'source FPS':>12}"]
    for r in rs:
        lines.append(f"{r['model']:<34}{str(r['threads'] or '-'):>8}  {r['mode']:<18}{r['fps']:>8.1f}"
                     f"{r['vs_inference']:>9.2f}{(r['latency_p50_ms'] or 0):>12.1f}{r.get('source_fps', 0):>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per measurement (default 6)")
    p.add_argument("--threads", default="", help="comma list of inference thread counts for every mode (default: the stream's "
                   "for inference/stream, the runtime's for the naive loop)")
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
