"""A small object detector trained here, on synthetic scenes, so boxes appear on a stream without downloads.

``python -m edgeship.demos.detector [--workdir DIR] [--force]``
trains it (Keras 3, well under a minute on two CPU cores), converts it with
:func:`edgeship.converters.convert` to a full-INT8 bundle, and caches the
bundle in ``DIR/detector-int8`` (with ``DIR/detector-int8.json``: the settings' hash and
measured mAP, and ``DIR/detector.keras``: the trained float model, for FP32 comparisons);
the next call returns the cached bundle at once.

INT8 keeps the decode head in float (found in the graph by
:mod:`edgeship.converters.tflite_head`: the ``5+C`` head convolution, whose channels are
sliced into boxes and scores, and the sigmoid/softmax/grid decode after it); with them in
INT8 the boxes lost 1.3 points of mAP@0.5:0.95 (``benchmarks/bench_detect_demo.py``).

The scenes: circles, squares and triangles in saturated colours on smooth
generated gradients (the same kind of picture ``examples/synthetic_video.py``
writes), 4:3 frames stretched to the 96x96 input.

The model: four strided 3x3 convolutions down to a 12x12 grid; each cell
predicts (x, y offset in the cell, width, height, objectness, class
probabilities). A final layer turns offsets into image coordinates, so the
bundle's single output is YOLO-style ``[1, 144, 8]`` rows of (cx, cy, w, h,
objectness, p_circle, p_square, p_triangle), all in [0, 1], which
:mod:`edgeship.runtime.tasks.detect` decodes without any model-specific code.
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

LABELS = ("circle", "square", "triangle")
DEFAULT_WORKDIR = ".edgeship-demo"


@dataclass(frozen=True)
class DetectorSettings:
    arch: str = "c16-c32-c48-c48/grid12/v1"
    input_size: int = 96
    grid: int = 12
    scene_size: tuple = (160, 120)  # width, height of the generated 4:3 scenes
    train_scenes: int = 2000
    val_scenes: int = 200
    max_objects: int = 4
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ scenes


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c0 = rng.integers(30, 220, 3).astype(np.float32)
    c1 = rng.integers(30, 220, 3).astype(np.float32)
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(ang) * xx / w + np.sin(ang) * yy / h
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    stripes = rng.uniform(0, 0.1) * np.sin(2 * np.pi * (xx / w * rng.uniform(1, 4) + yy / h * rng.uniform(1, 4)))
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + 255 * stripes[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size=(160, 120), max_objects: int = 4):
    """One scene: (BGR uint8 image, boxes [N,4] xyxy normalised, class ids [N])."""
    import cv2

    w, h = size
    img = _background(h, w, rng)
    boxes, ids = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(0, len(LABELS)))
        r = float(rng.uniform(0.07, 0.17) * min(w, h))
        cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
        color = rng.integers(0, 256, 3)
        color[rng.integers(0, 3)] = rng.choice([0, 255])
        color = tuple(int(c) for c in color)
        if kind == 0:
            cv2.circle(img, (round(cx), round(cy)), round(r), color, -1, cv2.LINE_AA)
            b = (cx - r, cy - r, cx + r, cy + r)
        elif kind == 1:
            s = r * 0.9
            cv2.rectangle(img, (int(cx - s), int(cy - s)), (int(cx + s), int(cy + s)), color, -1, cv2.LINE_AA)
            b = (cx - s, cy - s, cx + s, cy + s)
        else:
            a0 = float(rng.uniform(0, 2 * np.pi))
            pts = np.array([[cx + r * np.cos(a0 + a), cy + r * np.sin(a0 + a)]
                            for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)], np.float32)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)
            b = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
        boxes.append([b[0] / w, b[1] / h, b[2] / w, b[3] / h])
        ids.append(kind)
    return img, np.clip(np.asarray(boxes, np.float32), 0, 1), np.asarray(ids, np.int64)


def preprocess_spec(settings: DetectorSettings = DetectorSettings()):
    from edgeship.preprocess import PreprocessSpec  # noqa: PLC0415

    return PreprocessSpec(size=(settings.input_size, settings.input_size))


def make_dataset(n: int, settings: DetectorSettings, seed: int):
    """(x [n,S,S,3] float32 preprocessed, y [n,G,G,5+C] grid targets, raw boxes/ids list)."""
    rng = np.random.default_rng(seed)
    spec = preprocess_spec(settings)
    g, c = settings.grid, len(LABELS)
    x = np.empty((n, settings.input_size, settings.input_size, 3), np.float32)
    y = np.zeros((n, g, g, 5 + c), np.float32)
    truth = []
    for i in range(n):
        img, boxes, ids = render_scene(rng, settings.scene_size, settings.max_objects)
        x[i] = spec.apply(img)
        truth.append((boxes, ids))
        for b, k in zip(boxes, ids):
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            gx, gy = min(g - 1, int(cx * g)), min(g - 1, int(cy * g))
            y[i, gy, gx, :5] = (cx * g - gx, cy * g - gy, b[2] - b[0], b[3] - b[1], 1.0)
            y[i, gy, gx, 5:] = 0
            y[i, gy, gx, 5 + k] = 1.0
    return x, y, truth


# ------------------------------------------------------------------------------ model


def build_models(settings: DetectorSettings):
    """(training model with grid activations, export model with YOLO-style rows)."""
    import keras
    from keras import layers, ops

    g, c = settings.grid, len(LABELS)

    @keras.saving.register_keras_serializable(package="edgeship_detector_demo")
    class GridToBoxes(layers.Layer):
        """Cell offsets -> image-normalised centres; [G,G,5+C] -> [G*G, 5+C]."""

        def call(self, t):
            gx = ops.reshape(ops.arange(g, dtype="float32"), (1, 1, g, 1))
            gy = ops.reshape(ops.arange(g, dtype="float32"), (1, g, 1, 1))
            cx = (t[..., 0:1] + gx) / g
            cy = (t[..., 1:2] + gy) / g
            out = ops.concatenate([cx, cy, t[..., 2:]], axis=-1)
            return ops.reshape(out, (-1, g * g, 5 + c))

    inp = keras.Input((settings.input_size, settings.input_size, 3), name="image")
    x = inp
    for filters, stride in ((16, 2), (32, 2), (48, 2), (48, 1)):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Conv2D(48, 3, padding="same", activation="relu")(x)
    raw = layers.Conv2D(5 + c, 1, name="head")(x)
    box = layers.Activation("sigmoid")(raw[..., :5])
    cls = layers.Activation("softmax")(raw[..., 5:])
    grid = layers.Concatenate(axis=-1, name="grid")([box, cls])
    train_model = keras.Model(inp, grid, name="detector_train")
    export_model = keras.Model(inp, GridToBoxes(name="detections")(grid), name="detector")
    return train_model, export_model


def _loss(y_true, y_pred):
    from keras import ops

    obj = y_true[..., 4]
    eps = 1e-6
    p_obj = ops.clip(y_pred[..., 4], eps, 1 - eps)
    bce = -(3.0 * obj * ops.log(p_obj) + (1 - obj) * ops.log(1 - p_obj))
    xy = ops.sum(ops.square(y_true[..., 0:2] - y_pred[..., 0:2]), axis=-1)
    wh = ops.sum(ops.square(ops.sqrt(y_true[..., 2:4] + eps) - ops.sqrt(y_pred[..., 2:4] + eps)), axis=-1)
    ce = -ops.sum(y_true[..., 5:] * ops.log(ops.clip(y_pred[..., 5:], eps, 1.0)), axis=-1)
    per_cell = bce + obj * (5.0 * xy + 5.0 * wh + ce)
    return ops.sum(per_cell, axis=(1, 2)) / 4.0


training_loss = _loss  # public: benchmarks/bench_detect_demo.py retrains with it


def mean_ap50(pred_rows: np.ndarray, truth, threshold: float = 0.05) -> float:
    """A simple mAP@0.5 (11-point interpolation) of decoded rows against the truth (normalised boxes)."""
    from edgeship.runtime.tasks.detect import box_iou, decode_yolo, nms  # noqa: PLC0415

    aps = []
    for k in range(len(LABELS)):
        scored, n_true = [], 0
        for rows, (boxes, ids) in zip(pred_rows, truth):
            b, s, c = decode_yolo(rows, objectness=True, num_classes=len(LABELS))
            m = (c == k) & (s >= threshold)
            b, s = b[m], s[m]
            keep = nms(b, s, 0.45)
            b, s = b[keep], s[keep]
            gt = boxes[ids == k]
            n_true += len(gt)
            used = np.zeros(len(gt), bool)
            for bi, si in zip(b, s):
                hit = False
                if len(gt):
                    ious = box_iou(bi, gt)
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.5 and not used[j]:
                        used[j], hit = True, True
                scored.append((float(si), hit))
        if n_true == 0:
            continue
        scored.sort(key=lambda t: -t[0])
        tp = np.cumsum([h for _, h in scored]) if scored else np.zeros(0)
        fp = np.cumsum([not h for _, h in scored]) if scored else np.zeros(0)
        rec = tp / n_true if len(tp) else np.zeros(0)
        prec = tp / np.maximum(tp + fp, 1) if len(tp) else np.zeros(0)
        ap = np.mean([prec[rec >= r].max() if np.any(rec >= r) else 0.0 for r in np.linspace(0, 1, 11)])
        aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


# ------------------------------------------------------------------------------ train + convert


def keras_path(workdir: str = DEFAULT_WORKDIR) -> str:
    """Where :func:`build` saves the trained float export model (load it after :func:`build_models`)."""
    return os.path.join(workdir, "detector.keras")


def load_keras(workdir: str = DEFAULT_WORKDIR, settings: DetectorSettings = DetectorSettings()):
    """The trained float export model saved by :func:`build` (its decode layer registered first)."""
    import keras  # noqa: PLC0415

    build_models(settings)  # registers the GridToBoxes layer of these settings
    return keras.models.load_model(keras_path(workdir))


def build(workdir: str = DEFAULT_WORKDIR, *, force: bool = False, settings: DetectorSettings = DetectorSettings(),
          log=None) -> str:
    """Train (or reuse) the demo detector and return the path of its INT8 bundle."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    bundle = os.path.join(workdir, "detector-int8")
    stamp = os.path.join(workdir, "detector-int8.json")
    key = settings.key()
    if not force and os.path.isfile(stamp) and os.path.isfile(os.path.join(bundle, "manifest.json")) and \
            os.path.isfile(keras_path(workdir)):
        try:
            with open(stamp, encoding="utf-8") as fh:
                if json.load(fh).get("key") == key:
                    say(f"detector demo: using the cached bundle {bundle}")
                    return bundle
        except (OSError, ValueError):
            pass
    os.makedirs(workdir, exist_ok=True)
    from edgeship.converters import convert  # noqa: PLC0415

    from .quiet import quiet_native  # noqa: PLC0415

    with quiet_native():  # TensorFlow's oneDNN/CUDA/absl start-up lines
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(settings.seed)
        t0 = time.perf_counter()
        x, y, _ = make_dataset(settings.train_scenes, settings, settings.seed)
        xv, yv, truth_v = make_dataset(settings.val_scenes, settings, settings.seed + 1)
    say(f"detector demo: generated {len(x)} training scenes in {time.perf_counter() - t0:.1f} s; training...")
    with quiet_native():
        train_model, export_model = build_models(settings)
        steps = settings.epochs * int(np.ceil(len(x) / settings.batch_size))
        sched = keras.optimizers.schedules.CosineDecay(settings.learning_rate, steps, alpha=0.05)
        train_model.compile(optimizer=keras.optimizers.Adam(sched), loss=_loss)
        t1 = time.perf_counter()
        hist = train_model.fit(x, y, batch_size=settings.batch_size, epochs=settings.epochs, validation_data=(xv, yv),
                               verbose=0)
        train_s = time.perf_counter() - t1
        keras_rows = export_model.predict(xv, verbose=0, batch_size=64)
        export_model.save(keras_path(workdir))
    keras_map = mean_ap50(keras_rows, truth_v)
    say(f"detector demo: trained in {train_s:.1f} s (val loss {hist.history['val_loss'][-1]:.3f}, "
        f"Keras mAP@0.5 {keras_map:.3f}); converting to INT8...")
    with quiet_native():
        result = convert(export_model, bundle, calib=x[:200], eval_data=xv, precision="int8", io="int8",
                         preprocess=preprocess_spec(settings), labels=list(LABELS), task="detection",
                         name="detector-demo", force=True, seed=settings.seed)
    for w in result.warnings:
        say(f"detector demo: warning: {w}")
    # Measure the INT8 bundle as a device would run it.
    import edgeship.runtime as rt  # noqa: PLC0415

    with quiet_native(), rt.load(bundle) as m:
        rows = m.run(xv)[m.outputs[0].name]
    int8_map = mean_ap50(rows, truth_v)
    info = {"key": key, "settings": asdict(settings), "train_seconds": round(train_s, 1),
            "keras_map50": round(keras_map, 4), "int8_map50": round(int8_map, 4),
            "val_scenes": settings.val_scenes}
    with open(stamp, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    say(f"detector demo: INT8 bundle {bundle} (mAP@0.5 Keras {keras_map:.3f} -> INT8 {int8_map:.3f}), "
        f"{time.perf_counter() - t0:.0f} s in all")
    return bundle


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeship.demos.detector", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
    p.add_argument("--force", action="store_true", help="train again even if a cached bundle exists")
    args = p.parse_args(argv)
    print(build(args.workdir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
