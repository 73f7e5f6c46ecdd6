"""Fine-tuning data for pruning: an ``.npz`` with ``x``/``y``, an image folder with one
subfolder per class, or an ``(x, y)`` pair (see :func:`load_train_data`)."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from edgeship.errors import CalibrationError

__all__ = ["TrainData", "load_train_data"]


class TrainData(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    classes: tuple = ()



# -- training data ------------------------------------------------------------------


def _check_xy(x, y, where: str) -> TrainData:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype == object or y.dtype == object:
        raise CalibrationError(f"{where}: x and y must be numeric arrays")
    if x.ndim < 2 or len(x) == 0:
        raise CalibrationError(f"{where}: x must be a batch of samples shaped (N, ...), got shape {x.shape}")
    if len(y) != len(x):
        raise CalibrationError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
    if not np.issubdtype(x.dtype, np.number) or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise CalibrationError(f"{where}: x and y must be numeric (got {x.dtype} and {y.dtype})")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise CalibrationError(f"{where}: x contains NaN or infinite values")
    return TrainData(x.astype(np.float32, copy=False), y)


def load_train_data(spec, *, preprocess=None, input_shape=None, limit: int | None = None) -> TrainData:
    """Load fine-tuning data: an ``.npz`` with ``x``/``y``, an image folder with one
    subfolder per class, or an ``(x, y)`` pair.

    Args:
        spec: path or ``(x, y)``.
        preprocess: ``PreprocessSpec`` for image folders (default: from ``input_shape``).
        input_shape: the model's input shape, e.g. ``(None, 28, 28, 1)`` (NHWC).
        limit: keep at most this many samples (a seeded, class-balanced-agnostic
            prefix after a deterministic shuffle).

    Raises:
        CalibrationError: missing file or folder, no classes or images, wrong keys,
            mismatched lengths, non-numeric arrays, an undecodable image.
    """
    if isinstance(spec, TrainData):
        data = spec
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        data = _check_xy(spec[0], spec[1], "train data")
    elif isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if os.path.isdir(path):
            data = _load_image_folder(path, preprocess, input_shape)
        elif not os.path.exists(path):
            raise CalibrationError(f"training data {path!r} does not exist")
        elif path.lower().endswith(".npz"):
            data = _load_npz(path)
        else:
            raise CalibrationError(
                f"training data {path!r} is neither an .npz file (with arrays x and y) nor an image folder "
                "with one subfolder per class"
            )
    else:
        raise CalibrationError(
            f"training data must be a path or an (x, y) pair, got {type(spec).__name__}"
        )
    if limit is not None and len(data.x) > limit:
        idx = np.random.default_rng(0).permutation(len(data.x))[: int(limit)]
        idx.sort()
        data = TrainData(data.x[idx], data.y[idx], data.classes)
    return data


def _load_npz(path: str) -> TrainData:
    import zipfile  # noqa: PLC0415

    from edgeship.safeio import open_regular  # noqa: PLC0415

    with open_regular(path, error=CalibrationError, what="training data") as fh:  # a FIFO would block is_zipfile
        is_zip = zipfile.is_zipfile(fh)
    if not is_zip:
        raise CalibrationError(f"cannot read {path!r} as an .npz file: not a zip archive (numpy.savez writes one)")
    try:
        from edgeship.safeio import load_npz, npz_names  # noqa: PLC0415

        files = set(npz_names(path, error=CalibrationError))
        missing = {"x", "y"} - files
        if missing:
            raise CalibrationError(
                f"{path!r} has no array named {sorted(missing)[0]!r}; training data needs arrays 'x' "
                f"(inputs) and 'y' (labels), found {sorted(files)}"
            )
        got = load_npz(path, ("x", "y"), error=CalibrationError)  # headers checked against a budget; no pickles
        x, y = got["x"], got["y"]
    except CalibrationError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CalibrationError(f"{path!r} holds object arrays (pickles), which are refused: {exc}") from None
        raise CalibrationError(f"cannot read {path!r} as an .npz file: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError ...
        raise CalibrationError(f"cannot read {path!r} as an .npz file: {exc}") from None
    return _check_xy(x, y, path)


def _load_image_folder(folder: str, preprocess, input_shape) -> TrainData:
    from edgeship.errors import InputError  # noqa: PLC0415
    from edgeship.preprocess import ColorOrder, PreprocessSpec, list_images, read_image  # noqa: PLC0415

    classes = sorted(
        d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")
    )
    if len(classes) < 2:
        raise CalibrationError(
            f"training folder {folder!r} needs one subfolder per class (at least 2); found "
            f"{len(classes)} subfolder(s)"
        )
    if preprocess is None:
        if input_shape is None or len(input_shape) != 4:
            raise CalibrationError(
                f"cannot decode the images in {folder!r} without a preprocessing spec or the model's NHWC input shape"
            )
        h, w, c = input_shape[1], input_shape[2], input_shape[3]
        if h is None or w is None:
            raise CalibrationError(f"the model's input shape {tuple(input_shape)} has no fixed size; pass a preprocessing spec")
        preprocess = PreprocessSpec(size=(int(h), int(w)), color=ColorOrder.GRAY if c == 1 else ColorOrder.RGB)
    xs, ys = [], []
    for label, cls in enumerate(classes):
        files = list_images(os.path.join(folder, cls))
        if not files:
            raise CalibrationError(f"class folder {os.path.join(folder, cls)!r} has no images")
        for f in files:
            try:
                xs.append(preprocess.apply(read_image(f)))
            except InputError as exc:
                raise CalibrationError(f"training image {f!r}: {exc}") from None
            ys.append(label)
    return TrainData(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), tuple(classes))
