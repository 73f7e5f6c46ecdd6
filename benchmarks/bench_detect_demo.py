"""The repo's labelled detector (the demo shapes detector): COCO mAP of FP32 vs INT8, by `edgeship eval`.

    python benchmarks/bench_detect_demo.py [--scenes 200] [--json]

Trains the demo detector (``edgeship.demos.detector``, the settings of ``make stream-demo``),
converts it twice (``precision="fp32"`` and ``"int8"``, TFLite, ``task="detection"``),
writes held-out labelled scenes (PNG + YOLO txt, a seed never trained on) and runs
``edgeship eval --json`` on both bundles: mAP@0.5:0.95 and mAP@0.5 from the labels.

INT8 keeps the decode head float, chosen from the graph (``edgeship.converters.tflite_head``:
the sigmoid/softmax/grid decode and the ``5+C`` head conv whose channels are sliced into
boxes and scores); the output's ``int8_head`` is the manifest's record of it. Measured:
drop 1.34 points with the head in INT8 (before), 0.72 with only the decode float.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import cv2  # noqa: PLC0415
    import keras  # noqa: PLC0415

    from edgeship.converters import convert  # noqa: PLC0415
    from edgeship.demos import detector as D  # noqa: PLC0415
    from edgeship.evaluate_detection import evaluate_detection_bundle  # noqa: PLC0415

    s = D.DetectorSettings()
    keras.utils.set_random_seed(s.seed)
    x, y, _ = D.make_dataset(s.train_scenes, s, s.seed)
    train, export = D.build_models(s)
    steps = s.epochs * int(np.ceil(len(x) / s.batch_size))
    train.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(s.learning_rate, steps,
                                                                                         alpha=0.05)), loss=D.training_loss)
    train.fit(x, y, batch_size=s.batch_size, epochs=s.epochs, verbose=0)
    work = tempfile.mkdtemp(prefix="edgeship-bench-demo-")
    out = {}
    for prec in ("fp32", "int8"):
        convert(export, os.path.join(work, prec), calib=x[:200], precision=prec, io="float",
                preprocess=D.preprocess_spec(s), labels=list(D.LABELS), task="detection", force=True)
    img_dir = os.path.join(work, "val", "images")
    lab_dir = os.path.join(work, "val", "labels")
    os.makedirs(img_dir)
    os.makedirs(lab_dir)
    rng = np.random.default_rng(999)
    for i in range(a.scenes):
        img, boxes, ids = D.render_scene(rng, s.scene_size, s.max_objects)
        cv2.imwrite(os.path.join(img_dir, f"s{i:04d}.png"), img)
        with open(os.path.join(lab_dir, f"s{i:04d}.txt"), "w") as fh:
            for b, c in zip(boxes, ids):
                fh.write(f"{c} {(b[0] + b[2]) / 2} {(b[1] + b[3]) / 2} {b[2] - b[0]} {b[3] - b[1]}\n")
    for prec in ("fp32", "int8"):
        r = evaluate_detection_bundle(os.path.join(work, prec), img_dir)
        (m,) = r["artifacts"].values()
        out[prec] = {"map": round(m["map"], 4), "map50": round(m["map50"], 4)}
    out["drop_points_map"] = round(100 * (out["fp32"]["map"] - out["int8"]["map"]), 2)
    with open(os.path.join(work, "int8", "manifest.json"), encoding="utf-8") as fh:
        out["int8_head"] = (json.load(fh)["settings"].get("tflite_detection_head") or {}).get("summary")
    out["scenes"] = a.scenes
    print(json.dumps(out, indent=2) if a.json else
          f"demo detector, {a.scenes} held-out labelled scenes: mAP@0.5:0.95 FP32 {out['fp32']['map']:.3f} "
          f"INT8 {out['int8']['map']:.3f} (drop {out['drop_points_map']:.2f} points); mAP@0.5 FP32 "
          f"{out['fp32']['map50']:.3f} INT8 {out['int8']['map50']:.3f}; INT8 head: {out['int8_head']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
