"""``edgeship eval``: each artifact of a bundle measured against its source or labels."""

from __future__ import annotations

import itertools
import os

import numpy as np

from . import bundle as _bundle
from . import manifest as _manifest
from . import metrics
from .errors import CalibrationError, InputError


def source_reference(man: dict):
    """The source model, if it is still at its recorded path with its recorded hash."""
    src = man.get("source") or {}
    path = src.get("path")
    if not path or not os.path.exists(path) or not src.get("sha256"):
        return None, "the source model is not at its recorded path"
    if os.path.isdir(path):
        from .errors import UnsafeModelError  # noqa: PLC0415

        digest = _bundle.sha256_tree(path, error=UnsafeModelError, what="SavedModel folder")
    else:
        digest = _bundle.sha256_file(path)
    if digest != src["sha256"]:
        return None, "the source model at its recorded path has changed (sha256 differs)"
    from edgeship.converters import registry  # noqa: PLC0415
    from edgeship.converters.registry import load_plugins  # noqa: PLC0415

    load_plugins()
    _name, loader = registry.find_loader(path)
    if loader is None:
        return None, f"no loader for the source model {path}"
    shape = tuple(src["inputs"][0]["shape"]) if src.get("inputs") else None
    import warnings  # noqa: PLC0415

    from .demos.quiet import quiet_native  # noqa: PLC0415

    # TensorFlow/tf2onnx start-up lines and deprecation warnings are not for a person (shown if it fails)
    with quiet_native(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = loader(path, input_shape=shape, allow_legacy_h5=src.get("format") == "h5", allow_unsafe=False)
    return source, f"source model {path}"


def _run_batched(fn, x: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = []
    for i in range(0, x.shape[0], batch):
        o = fn(x[i : i + batch])
        outs.append(np.asarray(o))
    return np.concatenate(outs, axis=0)


def evaluate_bundle(path: str, data: str, *, count: int | None = None, against: str = "auto",
                    calib_max_bytes: int | None = None) -> dict:
    """Measure every artifact of the bundle at ``path`` on ``data``.

    Raises:
        BundleError: ``path`` is not a valid bundle.
        CalibrationError: ``data`` cannot be read or does not fit the model.
        InputError: ``against='labels'`` but the data has no labels, or
            ``against='source'`` but the source is unavailable.
    """
    from edgeship import runtime
    from edgeship.calibration import load_samples

    man = _manifest.read(path)
    src_inputs = (man.get("source") or {}).get("inputs") or man["artifacts"][0]["inputs"]
    shape = tuple(src_inputs[0]["shape"])[1:]
    pre = man.get("preprocessing")
    from .preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(pre) if pre else None
    samples = load_samples(data, input_shape=shape, preprocess=spec, count=count or 10**9, seed=0, min_count=1,
                           what="evaluation", max_bytes=calib_max_bytes)
    x, y = samples.x, samples.y
    reference = None
    ref_name = "labels"
    if against in ("auto", "source"):
        src, why = (None, "")
        try:
            src, why = source_reference(man)
        except ImportError:
            src, why = None, "the converter extra (edgeship[convert]) is not installed"
        if src is not None:
            reference = _run_batched(lambda b: src.predict(b)[0], x)
            ref_name = why
        elif against == "source":
            raise InputError(f"cannot evaluate against the source: {why}")
    if reference is None and y is None:
        raise InputError(f"{data!r} has no labels and the source model is unavailable; pass an .npz with x and y")
    outputs = {}
    report = {"bundle": os.path.abspath(path), "data": data, "count": int(x.shape[0]), "reference": ref_name,
              "artifacts": {}, "pairs": {}}
    for art in man["artifacts"]:
        with runtime.load(path, artifact=art["file"]) as m:
            out = _run_batched(lambda b: next(iter(m.run(b).values())), x)
        outputs[art["file"]] = out
        if reference is not None:
            report["artifacts"][art["file"]] = metrics.compare(reference, out, labels=y)
        else:
            acc = metrics.accuracy(out, y)
            report["artifacts"][art["file"]] = {"accuracy": acc, "count": int(x.shape[0])}
    for a, b in itertools.combinations(outputs, 2):
        report["pairs"][f"{a} vs {b}"] = metrics.compare(outputs[a], outputs[b])
    return report


__all__ = ["evaluate_bundle", "source_reference", "CalibrationError"]
