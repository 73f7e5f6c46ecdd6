"""INT8 segmentation on a real third-party dense-map model with a dynamic input size (issue 12)

    make fixtures && python benchmarks/bench_seg.py [--json] [--runs 20] [--size 640]
    python benchmarks/bench_seg.py --model deeplab [--tflite]   # DeepLabV3 (bench_seg_deeplab.py)

Model: ``ppocrv4_det.onnx``, the PP-OCRv4 text detector (DBNet; input ``[1,3,H,W]`` with
dynamic H/W, output a ``[1,1,H,W]`` text probability map) that ships inside the
``rapidocr-onnxruntime`` 1.4.4 wheel (Apache-2.0); fetched with ``make fixtures``.
Preprocessing: BGR, /255, ImageNet mean/std (PaddleOCR's detector preprocessing).

Data, all real: calibration on six fixture photos (china, flower, chelsea, home,
basketball1, messi5) and four ``vtest.avi`` frames; evaluation on the four other photos
(astronaut, coffee, fruits, basketball2) and two crops of each (top-left and bottom-right
3/4: the same held-out pixels at other framings), never calibrated on.

Variants, INT8 QDQ ONNX from the same FP32 file and calibration photos:

- ``plain``: ``onnxruntime.quantization.quantize_static`` with its default settings,
  calibrated at ``--size`` (it cannot calibrate on several sizes: its histogram
  calibrators need one shape);
- ``edgeship``: ``edgeship convert --formats onnx --input-shape 1,3,?,?`` (task inferred
  segmentation, :mod:`edgeship.converters.seg_head` rewrite and float head, dynamic H/W
  kept, calibration at several sizes).

Metric: the binary text mask (probability > 0.5) of each INT8 artifact against FP32's:
mIoU over {background, text} and pixel accuracy, at two input sizes: every image stretched
to ``--size`` x ``--size``, and every image at its own size (each side rounded to 32,
longer side at most 960). Speed: p50 of ``InferenceSession.run`` (2 threads) at ``--size``,
FP32 and both INT8 interleaved in one run. Finally the edgeship INT8 bundle runs at two
sizes through ``edgeship.runtime`` ``Model.run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CALIB = ("china.jpg", "flower.jpg", "chelsea.png", "home.jpg", "basketball1.png", "messi5.jpg")
HELD_OUT = ("astronaut.png", "coffee.png", "fruits.jpg", "basketball2.png")
VIDEO_FRAMES = (0, 200, 400, 600)
PREPROCESS = "color=bgr,mean=0.485:0.456:0.406,std=0.229:0.224:0.225"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fixtures() -> Path:
    root = Path(os.environ.get("EDGESHIP_FIXTURES") or HERE.parent / ".cache" / "fixtures")
    return root / "files"


def held_out_images(files: Path) -> list:
    """The held-out photos and two 3/4 crops of each (BGR arrays)."""
    from edgeship.images import read_image  # noqa: PLC0415

    out = []
    for name in HELD_OUT:
        img = read_image(str(files / name))
        h, w = img.shape[:2]
        out += [img, img[: h * 3 // 4, : w * 3 // 4], img[h // 4:, w // 4:]]
    return out


def write_folders(files: Path, work: Path) -> tuple[Path, Path]:
    """Calibration and evaluation image folders for ``edgeship convert``."""
    import cv2  # noqa: PLC0415

    from edgeship.images import read_image  # noqa: PLC0415

    cal, ev = work / "calib", work / "eval"
    cal.mkdir(parents=True, exist_ok=True)
    ev.mkdir(parents=True, exist_ok=True)
    for name in CALIB:
        cv2.imwrite(str(cal / Path(name).with_suffix(".png").name), read_image(str(files / name)))
    cap = cv2.VideoCapture(str(files / "vtest.avi"))
    i, want = 0, set(VIDEO_FRAMES)
    while want:
        ok, frame = cap.read()
        if not ok:
            break
        if i in want:
            cv2.imwrite(str(cal / f"vtest_{i:04d}.png"), frame)
            want.discard(i)
        i += 1
    cap.release()
    for k, img in enumerate(held_out_images(files)):
        cv2.imwrite(str(ev / f"held_out_{k:02d}.png"), img)
    return cal, ev


def tensor(img, size) -> np.ndarray:
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    spec = PreprocessSpec(size=size, layout="NCHW", color="bgr", mean=MEAN, std=STD)
    return spec.to_input(img, layout="NCHW")


def own_size(img, stride: int = 32, max_side: int = 960) -> tuple:
    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    return tuple(max(stride, int(round(v * s / stride)) * stride) for v in (h, w))


def plain_quantize(src: str, dst: str, calib: list) -> None:
    """``quantize_static`` with its defaults (QDQ, int8 activations and weights, per-tensor, minmax)."""
    import contextlib  # noqa: PLC0415

    from onnxruntime.quantization import CalibrationDataReader, quantize_static  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(src, dst, Reader())


def masks_agreement(ref: list, cand: list) -> dict:
    from edgeship.metrics_segmentation import miou  # noqa: PLC0415

    r = [(np.asarray(a)[0, 0] > 0.5).astype(np.int64) for a in ref]
    c = [(np.asarray(a)[0, 0] > 0.5).astype(np.int64) for a in cand]
    out = miou(r, c, 2)
    out["text_pixels_fp32"] = int(sum(int(m.sum()) for m in r))
    out["text_pixels"] = int(sum(int(m.sum()) for m in c))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, default=640, help="the fixed evaluation/timing size (default 640)")
    ap.add_argument("--model", choices=("ppocr", "deeplab"), default="ppocr",
                    help="ppocr (default) or deeplab: DeepLabV3 from a float TFLite file (bench_seg_deeplab.py)")
    ap.add_argument("--tflite", action="store_true", help="deeplab: also the INT8 TFLite")
    args = ap.parse_args(argv)
    if args.model == "deeplab":
        import bench_seg_deeplab  # noqa: PLC0415

        return bench_seg_deeplab.main(["--runs", str(args.runs)] + (["--json"] if args.json else [])
                                      + (["--tflite"] if args.tflite else []))

    import onnxruntime as ort  # noqa: PLC0415

    from _timing import interleaved  # noqa: PLC0415

    from edgeship import runtime  # noqa: PLC0415
    from edgeship.converters import convert  # noqa: PLC0415
    from edgeship.images import read_image  # noqa: PLC0415

    files = fixtures()
    src = files / "ppocrv4_det.onnx"
    if not src.is_file():
        print(f"{src} missing: run `make fixtures`", file=sys.stderr)
        return 2
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        work = Path(tmp)
        cal_dir, ev_dir = write_folders(files, work)
        res = convert(str(src), str(work / "int8"), calib=str(cal_dir), eval_data=str(ev_dir), formats=("onnx",),
                      preprocess=f"size={args.size}x{args.size},{PREPROCESS}", input_shape=(1, 3, None, None))
        man = res.manifest
        art = man["artifacts"][0]
        q = man["settings"]["onnx_quantization"]
        plain = work / "plain.onnx"
        plain_quantize(str(src), str(plain), [tensor(read_image(str(p)), size) for p in sorted(cal_dir.iterdir())])

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                    for k, p in (("fp32", src), ("edgeship", work / "int8" / art["file"]), ("plain", plain))}
        images = held_out_images(files)
        quality = {}
        for label, sizes in ((f"{args.size}x{args.size}", [size] * len(images)),
                             ("own size", [own_size(im) for im in images])):
            outs = {k: [s.run(None, {"x": tensor(im, sz)})[0] for im, sz in zip(images, sizes)]
                    for k, s in sessions.items()}
            quality[label] = {k: masks_agreement(outs["fp32"], outs[k]) for k in ("edgeship", "plain")}
        x = tensor(images[0], size)
        timing = interleaved({k: (lambda s=s: s.run(None, {"x": x})) for k, s in sessions.items()}, runs=args.runs,
                             warmup=3, rounds=min(10, args.runs))
        runs = []
        with runtime.load(str(work / "int8")) as model:
            shape = [d for d in model.inputs[0].shape]
            for h, w in ((480, 640), (320, 256)):
                (y,) = model.run(np.zeros((1, 3, h, w), np.float32)).values()
                runs.append({"input": [1, 3, h, w], "output": list(np.shape(y))})
        result = {
            "model": "ppocrv4_det.onnx (rapidocr-onnxruntime 1.4.4, Apache-2.0)",
            "task": man["task"], "task_reason": man["task_reason"],
            "artifact_input": art["inputs"][0]["shape"], "dynamic_size": man.get("dynamic_size"),
            "segmentation_head": q.get("segmentation_head"), "convert_validation": man["validation"]["artifacts"],
            "quality": quality, "p50_ms": {k: v["p50"] for k, v in timing.items()},
            "speedup_vs_fp32": {k: timing["fp32"]["p50"] / v["p50"] for k, v in timing.items() if k != "fp32"},
            "runtime_runs": runs, "runtime_input_shape": shape,
        }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"ppocrv4_det: task {result['task']} ({result['task_reason']})")
    print(f"edgeship INT8 artifact input {result['artifact_input']}, manifest dynamic_size {result['dynamic_size']}")
    print(f"segmentation head: {(result['segmentation_head'] or {}).get('summary')}")
    print()
    print("| variant | size | mIoU vs FP32 | pixel accuracy | text px INT8 / FP32 |")
    print("|---|---|---|---|---|")
    for label, per in quality.items():
        for k, m in per.items():
            print(f"| {k} | {label} | {m['miou']:.4f} | {m['pixel_accuracy']:.4f} | "
                  f"{m['text_pixels']} / {m['text_pixels_fp32']} |")
    print()
    print(f"| p50 at {args.size}x{args.size}, 2 threads | ms | speed vs FP32 |")
    print("|---|---|---|")
    for k, v in result["p50_ms"].items():
        print(f"| {k} | {v:.1f} | {1.0 if k == 'fp32' else result['speedup_vs_fp32'][k]:.2f}x |")
    print()
    for r in runs:
        print(f"edgeship.runtime Model.run {r['input']} -> {r['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
