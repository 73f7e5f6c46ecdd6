"""``edgeship demo``: train a small digits CNN, convert it to INT8, measure it.

What it does, end to end, through the same public API a user calls:

1. Loads the handwritten digits that ship inside scikit-learn (1,797 labelled
   8x8 images, no download), splits them into train/test (stratified, fixed
   seed) and writes a calibration subset of the training split and the whole
   test split to disk as PNG folders with one subfolder per class, plus
   ``test.npz`` (``x`` preprocessed, ``y`` labels).
2. Trains a small Keras 3 CNN (conv32-pool-conv64-pool-dense128) on the
   training split, or reuses the model cached in the work folder under a hash
   of the training settings.
3. Converts it with :func:`edgeship.converters.convert` twice: a full-INT8
   bundle calibrated on the PNG folder (the real image-folder calibration
   path, decoded through the preprocessing spec) and an FP32 bundle to compare
   against.
4. Measures both through :func:`edgeship.runtime.load`: file bytes and gzip
   bytes, accuracy on the test split (Keras FP32 / TFLite FP32 / TFLite INT8)
   and single-sample p50 latency, and prints a table, where everything is on
   disk and the commands to try next.

The samples fed to Keras for training are produced by the same
:class:`edgeship.preprocess.PreprocessSpec` the bundle records, applied to the
same pixels that are written to the PNGs, so training, calibration and the
device all see identical inputs.

Work folder layout (default ``.edgeship-demo``)::

    data/calib/<digit>/*.png     calibration subset (from the training split)
    data/test/<digit>/*.png      the test split, as images
    data/test.npz                the test split, preprocessed (x) with labels (y)
    model-<hash>.keras           the trained model, cached by training settings
    model-<hash>.json            how it was trained, and its Keras test accuracy
    digits-int8/                 the INT8 bundle (manifest, .tflite, report)
    digits-fp32/                 the FP32 bundle, for comparison
    demo-report.json / .md       the figures printed at the end
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import measure
from .measure import show as _show

DEFAULT_WORKDIR = ".edgeship-demo"
LABELS = tuple(str(i) for i in range(10))
MAX_SIZE_RATIO = measure.MAX_SIZE_RATIO
MAX_ACCURACY_DROP = measure.MAX_ACCURACY_DROP


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained model; its hash names the cache entry."""

    arch: str = "conv32-pool-conv64-pool-dense128-dropout0.3/v1"
    image_size: int = 16  # the 8x8 digits are upscaled (bilinear) to this size
    test_size: float = 0.30
    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    calib_per_class: int = 20  # 200 calibration images

    def key(self) -> str:
        import keras  # noqa: PLC0415

        blob = json.dumps({**asdict(self), "keras": ".".join(keras.__version__.split(".")[:2])}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _spec(settings: TrainSettings):
    from edgeship.preprocess import ColorOrder, PreprocessSpec, ResizeMode  # noqa: PLC0415

    s = settings.image_size
    return PreprocessSpec(size=(s, s), resize=ResizeMode.STRETCH, color=ColorOrder.GRAY, scale=1.0 / 255.0)


# ---------------------------------------------------------------------------- data


@dataclass
class _Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    calib_dir: str
    test_dir: str
    test_npz: str
    n_calib: int


def _prepare_data(workdir: str, settings: TrainSettings, *, force: bool) -> _Data:
    """Split the digits, preprocess them, and write the PNG folders and test.npz."""
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    from edgeship.preprocess import opencv  # noqa: PLC0415

    digits = load_digits()
    # 0..16 ink levels -> 8-bit grey, the pixels that go into the PNGs.
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=settings.test_size, stratify=labels, random_state=settings.seed
    )
    spec = _spec(settings)
    # The model input is exactly what the bundle's preprocessing makes of the PNG.
    x = np.stack([spec.apply(img, bgr=False) for img in pixels]).astype(np.float32)

    # Calibration subset: the first `calib_per_class` training images of each class
    # in a seeded shuffle (deterministic, stratified).
    rng = np.random.default_rng(settings.seed)
    shuffled = rng.permutation(idx_train)
    calib_idx = np.concatenate(
        [shuffled[labels[shuffled] == c][: settings.calib_per_class] for c in range(10)]
    )

    data_dir = os.path.join(workdir, "data")
    stamp_path = os.path.join(data_dir, "stamp.json")
    stamp = {"settings": settings.key(), "calib": len(calib_idx), "test": len(idx_test)}
    calib_dir = os.path.join(data_dir, "calib")
    test_dir = os.path.join(data_dir, "test")
    test_npz = os.path.join(data_dir, "test.npz")
    current = False
    if not force and os.path.isfile(stamp_path):
        try:
            with open(stamp_path) as fh:
                current = json.load(fh) == stamp
        except (OSError, ValueError):
            current = False
    if not current:
        cv2 = opencv()
        if os.path.isdir(data_dir):
            shutil.rmtree(data_dir)
        for folder, indices in ((calib_dir, calib_idx), (test_dir, idx_test)):
            for c in range(10):
                os.makedirs(os.path.join(folder, str(c)), exist_ok=True)
            for i in indices:
                path = os.path.join(folder, str(labels[i]), f"{int(i):04d}.png")
                if not cv2.imwrite(path, pixels[i]):
                    raise OSError(f"could not write {path}")
        np.savez(test_npz, x=x[idx_test], y=labels[idx_test])
        with open(stamp_path, "w") as fh:
            json.dump(stamp, fh)
    return _Data(
        x_train=x[idx_train], y_train=labels[idx_train], x_test=x[idx_test], y_test=labels[idx_test],
        calib_dir=calib_dir, test_dir=test_dir, test_npz=test_npz, n_calib=len(calib_idx),
    )


# ---------------------------------------------------------------------------- model


def _build_model(settings: TrainSettings):
    import keras  # noqa: PLC0415
    from keras import layers  # noqa: PLC0415

    s = settings.image_size
    model = keras.Sequential(
        [
            keras.Input((s, s, 1), name="image"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _train_or_load(workdir: str, settings: TrainSettings, data: _Data, *, force: bool, say=print):
    """The trained model (cached as model-<hash>.keras) and a record of how it was made."""
    import keras  # noqa: PLC0415

    from edgeship.progress import progress, step  # noqa: PLC0415

    key = settings.key()
    model_path = os.path.join(workdir, f"model-{key}.keras")
    meta_path = os.path.join(workdir, f"model-{key}.json")
    if not force and os.path.isfile(model_path) and os.path.isfile(meta_path):
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            model = keras.saving.load_model(model_path, compile=False)
            say(f"Using the cached model {_show(model_path)} (trained in {meta['train_seconds']:.1f} s; "
                "--force retrains)")
            return model, model_path, meta, True
        except Exception as exc:  # a damaged cache entry is retrained, not fatal
            say(f"Cached model {model_path} is unusable ({exc.__class__.__name__}); retraining")

    keras.utils.set_random_seed(settings.seed)
    model = _build_model(settings)
    t0 = time.perf_counter()
    losses = []
    with step(f"Training {model.name} ({model.count_params():,} parameters) on {len(data.y_train)} digits, "
              f"{settings.epochs} epochs"):
        for epoch in progress(range(settings.epochs), total=settings.epochs):
            hist = model.fit(
                data.x_train, data.y_train, batch_size=settings.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                shuffle=True, verbose=0,
            )
            losses.append(float(hist.history["loss"][-1]))
    train_seconds = time.perf_counter() - t0
    probs = model.predict(data.x_test, batch_size=256, verbose=0)
    acc = float(np.mean(np.argmax(probs, axis=1) == data.y_test))
    say(f"  trained in {train_seconds:.1f} s: final loss {losses[-1]:.4f}, Keras test accuracy {100 * acc:.2f}%")

    os.makedirs(workdir, exist_ok=True)
    tmp = model_path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, model_path)
    meta = {
        "settings": asdict(settings),
        "key": key,
        "keras_version": keras.__version__,
        "train_seconds": train_seconds,
        "loss_per_epoch": losses,
        "keras_test_accuracy": acc,
        "parameters": int(model.count_params()),
    }
    with open(meta_path + ".tmp", "w") as fh:
        json.dump(meta, fh, indent=2)
    os.replace(meta_path + ".tmp", meta_path)
    return model, model_path, meta, False


def _require_convert_extra(why: str) -> None:
    from edgeship.errors import require  # noqa: PLC0415

    from .quiet import quiet_native  # noqa: PLC0415

    with quiet_native():  # TensorFlow's oneDNN/CUDA/absl start-up lines
        for mod in ("keras", "tensorflow", "sklearn"):
            require(mod, "convert", why)


def prepare_model(workdir: str = DEFAULT_WORKDIR, *, force: bool = False,
                  settings: TrainSettings | None = None) -> dict:
    """Write the digits data and train (or reuse) the model, without converting it.

    Returns the paths a user needs to run ``edgeship convert`` by hand:
    ``model_path``, ``calib_dir``, ``test_dir``, ``test_npz``, plus ``labels``, the
    ``preprocess`` string for ``--preprocess`` and ``keras_test_accuracy``.

    Raises:
        edgeship.errors.MissingDependencyError: the ``convert`` extra is not installed.
    """
    from .quiet import quiet_native  # noqa: PLC0415

    _require_convert_extra("to train the demo model")
    settings = settings or TrainSettings()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with quiet_native():
        data = _prepare_data(workdir, settings, force=force)
        _model, model_path, meta, cached = _train_or_load(workdir, settings, data, force=force)
    s = settings.image_size
    return {
        "model_path": model_path,
        "model_cached": cached,
        "calib_dir": data.calib_dir,
        "test_dir": data.test_dir,
        "test_npz": data.test_npz,
        "labels": list(LABELS),
        "preprocess": f"size={s}x{s},color=gray,scale=1/255",
        "keras_test_accuracy": meta.get("keras_test_accuracy"),
    }


def _convert_both(model_path: str, workdir: str, data: _Data, settings: TrainSettings, say) -> tuple[dict, dict, dict]:
    """The INT8 and FP32 bundles: (bundle paths, conversion results, seconds per conversion)."""
    from edgeship import converters  # noqa: PLC0415
    from edgeship.progress import step  # noqa: PLC0415

    from .quiet import quiet_native  # noqa: PLC0415

    spec = _spec(settings)
    bundles = {"int8": os.path.join(workdir, "digits-int8"), "fp32": os.path.join(workdir, "digits-fp32")}
    results, seconds = {}, {}
    for precision in ("int8", "fp32"):
        t0 = time.perf_counter()
        with step(f"Converting {os.path.basename(model_path)} to {precision.upper()} TFLite -> "
                  f"{_show(bundles[precision])}"), quiet_native():
            results[precision] = converters.convert(
                model_path, bundles[precision], calib=data.calib_dir, precision=precision,
                io="int8" if precision == "int8" else "float", eval_data=data.test_npz, labels=list(LABELS),
                preprocess=spec, name=f"digits-{precision}", task="classification", seed=settings.seed, force=True,
            )
        seconds[precision] = time.perf_counter() - t0
        for w in results[precision].warnings:
            say(f"  warning: {w}")
    return bundles, results, seconds


def _measure(bundles: dict, arts: dict, data: _Data, quick: bool) -> tuple[dict, dict, dict, dict]:
    """(accuracy, latency, runtime info, an example classification) of both bundles, through the runtime."""
    from edgeship import runtime  # noqa: PLC0415
    from edgeship.preprocess import read_image  # noqa: PLC0415
    from edgeship.progress import step  # noqa: PLC0415

    from .quiet import quiet_native  # noqa: PLC0415

    with step("Measuring accuracy and latency of both bundles"), quiet_native():
        models = {p: runtime.load(bundles[p], artifact=arts[p]["file"]) for p in bundles}
        try:
            acc = {p: measure.accuracy(models[p], data.x_test, data.y_test) for p in models}
            lat = measure.latencies(models, data.x_test[:1], runs=40 if quick else 300, warmup=5 if quick else 20)
            info = models["int8"].info
            info = info.to_dict() if hasattr(info, "to_dict") else dict(getattr(info, "__dict__", {}))
            example_path = sorted(
                os.path.join(root, f) for root, _d, files in os.walk(os.path.join(data.test_dir, "7")) for f in files
            )[0]
            top = models["int8"].classify(read_image(example_path), top_k=1)[0]
            example = {"image": example_path, "label": getattr(top, "label", None), "id": int(top.id),
                       "score": float(top.score)}
        finally:
            for m in models.values():
                m.close()
    return acc, lat, info, example


def run_demo(workdir: str = DEFAULT_WORKDIR, *, force: bool = False, quick: bool = False,
             settings: TrainSettings | None = None, verbose: bool = True) -> dict:
    """Train (or reuse) the digits CNN, convert it to INT8 and FP32 bundles, measure both.

    Args:
        workdir: folder for the data, the cached model, the bundles and the report.
        force: retrain the model and rewrite the data even when cached.
        quick: fewer latency runs (for tests); training and conversion are the same.
        settings: training settings (the defaults are what the targets were measured with).
        verbose: print one line per long step, the table and the next steps (TensorFlow's
            start-up noise is kept off the terminal either way).

    Returns:
        The measured figures: ``bytes``, ``gzip_bytes``, ``size_ratio``, ``accuracy``
        (``keras_fp32``, ``tflite_fp32``, ``tflite_int8``, fractions), ``accuracy_drop_points``,
        ``latency_ms`` (``fp32``/``int8`` with ``p50``/``p90``/``mean``), ``bundles``,
        ``targets`` and the paths of everything written.

    Raises:
        edgeship.errors.EdgeshipError: a conversion or the runtime refused something.
        edgeship.errors.MissingDependencyError: the ``convert`` extra is not installed.
    """
    from edgeship import progress  # noqa: PLC0415

    if verbose:
        progress.pin_console(lines=True)
    try:
        return _run(workdir, force=force, quick=quick, settings=settings or TrainSettings(),
                    say=(lambda m="": print(m, flush=True)) if verbose else (lambda *_a, **_k: None))
    finally:
        if verbose:
            progress.unpin_console()


def _run(workdir: str, *, force: bool, quick: bool, settings: TrainSettings, say) -> dict:
    from .quiet import quiet_native  # noqa: PLC0415

    t_start = time.perf_counter()
    _require_convert_extra("by `edgeship demo`")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with quiet_native():
        data = _prepare_data(workdir, settings, force=force)
    say(f"Digits from scikit-learn: {len(data.y_train)} train / {len(data.y_test)} test images, "
        f"{settings.image_size}x{settings.image_size} grey; {data.n_calib} calibration PNGs in {_show(data.calib_dir)}")
    with quiet_native():
        model, model_path, meta, cached = _train_or_load(workdir, settings, data, force=force, say=say)
        keras_probs = model.predict(data.x_test, batch_size=256, verbose=0)
    keras_acc = float(np.mean(np.argmax(keras_probs, axis=1) == data.y_test))

    bundles, results, convert_seconds = _convert_both(model_path, workdir, data, settings, say)
    arts = {p: measure.tflite_artifact(results[p].manifest, p) for p in results}
    acc, lat, info, example = _measure(bundles, arts, data, quick)

    b = {p: int(arts[p]["bytes"]) for p in arts}
    gz = {p: int(arts[p]["gzip_bytes"]) for p in arts}
    size_ratio = b["int8"] / b["fp32"]
    drop = 100.0 * (acc["fp32"] - acc["int8"])
    validation = {p: (results[p].manifest.get("validation") or {}).get("artifacts", {}).get(arts[p]["file"], {})
                  for p in arts}
    targets = measure.targets(size_ratio, drop)
    figures = {
        "workdir": workdir, "model_path": model_path, "model_cached": cached,
        "parameters": meta.get("parameters"), "train_seconds": meta.get("train_seconds"),
        "samples": {"train": int(len(data.y_train)), "test": int(len(data.y_test)), "calibration": data.n_calib},
        "data": {"calib_dir": data.calib_dir, "test_dir": data.test_dir, "test_npz": data.test_npz},
        "bundles": bundles, "artifacts": {p: arts[p]["file"] for p in arts},
        "bytes": b, "gzip_bytes": gz, "size_ratio": size_ratio, "gzip_ratio": gz["int8"] / gz["fp32"],
        "accuracy": {"keras_fp32": keras_acc, "tflite_fp32": acc["fp32"], "tflite_int8": acc["int8"]},
        "accuracy_drop_points": drop, "manifest_validation": validation, "latency_ms": lat,
        "int8_speedup_p50": lat["fp32"]["p50"] / lat["int8"]["p50"] if lat["int8"]["p50"] > 0 else None,
        "runtime": info, "example": example, "convert_seconds": convert_seconds,
        "targets": targets, "targets_met": all(t["pass"] for t in targets.values()), "quick": quick,
        "report": {"markdown": os.path.join(workdir, "demo-report.md"),
                   "json": os.path.join(workdir, "demo-report.json")},
    }
    figures["seconds"] = time.perf_counter() - t_start
    main, checks = measure.tables(figures)
    header = (f"edgeship demo: {meta.get('parameters', 0):,}-parameter digits CNN, "
              f"{len(data.y_test)} held-out test images, runtime backend {info.get('backend', '?')} "
              f"({info.get('threads') or 'default'} threads)")
    measure.write_report(figures, header, main, checks)
    measure.print_summary(say, figures, header, main, checks)
    return figures


def main(argv=None) -> int:
    """``python -m edgeship.demos.digits [--workdir DIR] [--force] [--quick]`` (``edgeship demo`` adds ``--json``)."""
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m edgeship.demos.digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
    p.add_argument("--force", action="store_true", help="retrain and rewrite the data even when cached")
    p.add_argument("--quick", action="store_true", help="fewer latency runs")
    args = p.parse_args(argv)
    run_demo(args.workdir, force=args.force, quick=args.quick)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
