"""``edgeship eval``: each artifact of a bundle measured against its source or labels."""

from __future__ import annotations

import argparse

from ..safeio import byte_size
from .common import emit_json, int_at_least, num, pct, quiet_tf_env, require_path, stdout_to_stderr, table

AGAINST = ("auto", "source", "labels")


def cmd_eval(args) -> int:
    quiet_tf_env()
    from ..evaluate import evaluate_bundle  # noqa: PLC0415

    require_path(args.path, "model")
    require_path(args.data, "--data")
    if args.annotations:
        require_path(args.annotations, "--annotations")
    if args.masks:
        require_path(args.masks, "--masks")
    task = _task(args.path)
    if task == "detection":
        return _eval_detection(args)
    if task == "segmentation":
        return _eval_segmentation(args)
    with stdout_to_stderr(args.json) as out:
        report = evaluate_bundle(args.path, args.data, count=args.count, against=args.against,
                                 calib_max_bytes=args.calib_max_bytes)
        if args.json:
            emit_json(out, report)
            return 0
        print(f"evaluated {report['count']} samples from {report['data']}; reference: {report['reference']}")
        rows = []
        for name, m in report["artifacts"].items():
            rows.append([name, pct(m.get("accuracy")), pct(m.get("source_accuracy")), pct(m.get("top1_agreement")),
                         num(m.get("cosine")), num(m.get("max_abs_error"), ".4g"), num(m.get("sqnr_db"), ".1f")])
        print(table(rows, ["artifact", "accuracy", "source acc.", "top-1 agree", "cosine", "max abs err", "SQNR dB"]))
        for pair, m in report.get("pairs", {}).items():
            print(f"{pair}: top-1 agreement {pct(m.get('top1_agreement'))}, cosine {num(m.get('cosine'))}")
    return 0


def _task(path: str) -> str | None:
    from .. import manifest as _manifest  # noqa: PLC0415

    try:
        return _manifest.read(path).get("task")
    except Exception:  # noqa: BLE001 - evaluate_bundle reports a bad bundle in its own words
        return None


def _eval_segmentation(args) -> int:
    from ..evaluate_segmentation import evaluate_segmentation_bundle  # noqa: PLC0415

    with stdout_to_stderr(args.json) as out:
        report = evaluate_segmentation_bundle(args.path, args.data, masks=args.masks, against=args.against,
                                              count=args.count)
        if args.json:
            emit_json(out, report)
            return 0
        ref = f"label masks in {report['masks']}" if report["reference"] == "labels" else "the source model's masks"
        print(f"evaluated {report['count']} images from {report['data']} against {ref} (at each image's size)")
        rows = [[name, num(m["miou"]), pct(m["pixel_accuracy"]), m["num_classes"]]
                for name, m in report["artifacts"].items()]
        if report.get("source"):
            src = report["source"]
            rows.insert(0, ["source (FP32)", num(src["miou"]), pct(src["pixel_accuracy"]), rows[0][3] if rows else ""])
            for row, m in zip(rows[1:], report["artifacts"].values()):
                row.append(num(m["drop_points"], ".2f"))
            rows[0].append("")
        print(table(rows, ["artifact", "mIoU", "pixel accuracy", "classes"] + (["drop, points"] if report.get("source")
                                                                                else [])))
        for pair, m in report["pairs"].items():
            print(f"{pair}: mIoU {num(m['miou'])}, pixel accuracy {pct(m['pixel_accuracy'])}")
    return 0


def _eval_detection(args) -> int:
    from ..evaluate_detection import evaluate_detection_bundle  # noqa: PLC0415

    with stdout_to_stderr(args.json) as out:
        report = evaluate_detection_bundle(args.path, args.data, annotations=args.annotations, count=args.count)
        if args.json:
            emit_json(out, report)
            return 0
        print(f"evaluated {report['count']} labelled images from {report['data']} (COCO-style mAP, "
              "IoU 0.50:0.95, 100 detections per image)")
        rows = [[name, num(m['map']), num(m['map50']), num(m['map75'])] for name, m in report["artifacts"].items()]
        print(table(rows, ["artifact", "mAP@0.5:0.95", "mAP@0.5", "mAP@0.75"]))
        for pair, m in report["pairs"].items():
            print(f"{pair}: detections F1 {num(m['detection_f1'])} (IoU 0.5, same class, score >= 0.25)")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="measure each artifact of a bundle against its source or labels")
    e.add_argument("path", help="bundle folder")
    e.add_argument("--data", required=True,
                   help=".npy, .npz with x and optional y, or an image folder (class subfolders for a classifier; "
                        "YOLO/COCO labels for a detector; masks for a segmentation model) (required)")
    e.add_argument("--annotations", default=None, metavar="COCO.json",
                   help="detection bundles: COCO JSON labels for the --data image folder (default: YOLO txt "
                        "files beside the images or in a sibling labels/ folder)")
    e.add_argument("--masks", default=None, metavar="DIR",
                   help="segmentation bundles: label masks, one PNG per image with the same name (pixel = class "
                        "id, 255 = ignore; palette PNGs as in VOC) (default: a sibling folder masks/, "
                        "SegmentationClass/ or labels/ of the --data folder)")
    e.add_argument("--count", type=int_at_least(1), default=None, help="use at most this many samples (default: all)")
    e.add_argument("--against", choices=AGAINST, default="auto",
                   help="reference: the source model, the labels, or auto (the source when it is still there, "
                        "else the labels; default auto)")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: a table)")
    e.add_argument("--calib-max-bytes", type=byte_size, default=None, metavar="SIZE",
                   help="memory budget for a .npy/.npz --data file, checked before reading (default 2GiB)")
    e.set_defaults(func=cmd_eval)
    return e
