"""Calibration and evaluation data sources.

One function, :func:`load_samples`, turns whatever the user points at into a
float32 batch shaped like the model input:

* an image folder (recursive; class subfolders give labels ``y`` by sorted
  subfolder name), decoded with OpenCV through the model's
  :class:`~edgeship.preprocess.PreprocessSpec`;
* a ``.npy`` file shaped like the input (with or without the batch axis);
* a ``.npz`` file with ``x`` and optional ``y``;
* any Python iterable or ndarray (samples, batches or ``(x, y)`` pairs);
* the literal ``"random"``, only when the caller allows it by name.

Sampling is deterministic for a given ``seed``. This module imports only numpy
at module level (OpenCV is imported when an image is decoded).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import safeio
from .errors import CalibrationError, InputError
from .preprocess import IMAGE_EXTENSIONS, PreprocessSpec, read_image
from .progress import progress

MIN_SAMPLES = 8
# Upper bound on samples pulled from an open-ended iterable before sampling.
MAX_ITERABLE_SAMPLES = 20000
RANDOM = "random"
# Memory budget for arrays read from one .npy/.npz file (``calib_max_bytes``, ``--calib-max-bytes``).
DEFAULT_MAX_BYTES = safeio.DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class CalibrationSet:
    """Samples loaded from one source.

    Attributes:
        x: float32 array ``(N, *input_shape)``.
        y: integer labels ``(N,)`` or ``None``.
        kind: ``folder``, ``npy``, ``npz``, ``iterable`` or ``random`` (manifest enum).
        source: where the samples came from, for the manifest and report.
        sha256: hash of the samples (and labels) actually returned.
        classes: class names when ``y`` came from folder names, else ``None``.
        skipped: how many files could not be decoded and were skipped.
        warnings: human-readable warnings (skipped files, assumptions).
    """

    x: np.ndarray
    y: np.ndarray | None
    kind: str
    source: str
    sha256: str
    classes: tuple | None = None
    skipped: int = 0
    warnings: tuple = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx) -> "CalibrationSet":
        """The samples at ``idx`` (with their labels), re-hashed."""
        x = self.x[idx]
        y = None if self.y is None else self.y[idx]
        return CalibrationSet(x, y, self.kind, self.source, _hash(x, y), self.classes, self.skipped, self.warnings)


def default_max_bytes() -> int:
    """The memory budget for one data file: ``EDGESHIP_CALIB_MAX_BYTES`` (e.g. ``4GiB``) or 2 GiB."""
    text = os.environ.get("EDGESHIP_CALIB_MAX_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return safeio.parse_bytes(text)
    except InputError:
        raise CalibrationError(f"EDGESHIP_CALIB_MAX_BYTES={text!r} is not a size in bytes (e.g. 2GiB)") from None


def _hash(x: np.ndarray, y: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _shape_text(shape: Sequence) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def load_samples(
    spec: Any,
    *,
    input_shape: Sequence[int],
    preprocess: PreprocessSpec | None = None,
    count: int = 200,
    seed: int = 0,
    allow_random: bool = False,
    min_count: int = MIN_SAMPLES,
    what: str = "calibration",
    max_bytes: int | None = None,
) -> CalibrationSet:
    """Load up to ``count`` samples shaped like one model input.

    Args:
        spec: a folder or ``.npy``/``.npz`` path, an ndarray, an iterable of
            samples / batches / ``(x, y)`` pairs, or the literal ``"random"``.
        input_shape: shape of one sample, without the batch axis (e.g. ``(16, 16, 1)``).
        preprocess: how images are decoded and normalised; needed for image
            folders; also applied to ``uint8`` arrays (raw pixels).
        count: maximum number of samples returned; a larger source is sampled
            deterministically with ``seed``.
        seed: seed of the sampling (and of ``"random"`` data).
        allow_random: accept the literal ``"random"`` (uniform noise in [0, 1)).
        min_count: fewer usable samples than this is an error.
        what: word used in messages (``calibration`` or ``evaluation``).
        max_bytes: memory budget for the arrays of a ``.npy``/``.npz`` file, checked on
            their headers before anything is allocated (default 2 GiB). Only the
            sampled rows are kept, so memory is about ``count`` samples whatever the file holds.
            ``None``: :func:`default_max_bytes`.

    Returns:
        A :class:`CalibrationSet`.

    Raises:
        CalibrationError: the source is missing, of an unknown kind, holds
            fewer than ``min_count`` usable samples, its samples are not
            shaped like ``input_shape``, a file declares more than ``max_bytes``,
            or a folder holds a FIFO, device or a link leading out of it.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if max_bytes is None:
        max_bytes = default_max_bytes()
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise CalibrationError(f"calib_max_bytes={max_bytes!r} must be a positive number of bytes")
    max_bytes = int(max_bytes)
    if count < 1:
        raise CalibrationError(f"{what} count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    if spec is None:
        raise CalibrationError(
            f"no {what} data given; pass an image folder, a .npy/.npz file or an array "
            "(or 'random' explicitly, which measures nothing real)"
        )
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text == RANDOM:
            if not allow_random:
                raise CalibrationError(f"random {what} data is not allowed here")
            need = 4 * count * int(np.prod(input_shape, dtype=object))
            if need > max_bytes:
                raise CalibrationError(f"{count} random samples shaped {_shape_text(input_shape)} take {need:,} "
                                       f"bytes, more than the memory budget of {max_bytes:,} (calib_max_bytes)")
            x = rng.random((count,) + input_shape, dtype=np.float32)
            return _finish(x, None, "random", "random uniform [0, 1) noise (asked for by name)", (), 0, (
                f"{what} uses random noise (asked for by name): quantization ranges and "
                "validation numbers do not reflect real data",), min_count, what)
        if os.path.isdir(text):
            return _load_folder(text, input_shape, preprocess, count, rng, min_count, what)
        if not os.path.exists(text):
            raise CalibrationError(f"{what} data {text!r} does not exist (expected an image folder, .npy or .npz)")
        ext = os.path.splitext(text)[1].lower()
        if ext not in (".npy", ".npz"):
            raise CalibrationError(
                f"{what} data {text!r} is a file of unknown kind {ext or '(no extension)'!r}; "
                "expected an image folder, a .npy or a .npz file"
            )
        return _load_file(text, ext, input_shape, preprocess, count, rng, min_count, what, max_bytes)
    # in-memory: ndarray or iterable
    if isinstance(spec, np.ndarray):
        x = _to_float(_as_batch(spec, input_shape, "the array", what), preprocess)
        return _sample(x, None, "iterable", f"ndarray{_shape_text(spec.shape)}", count, rng, min_count, what)
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(a, np.ndarray) for a in spec):
        x = _to_float(_as_batch(spec[0], input_shape, "the array", what), preprocess)
        y = _check_labels(spec[1], x.shape[0], "the labels", what)
        return _sample(x, y, "iterable", f"(x, y) arrays{_shape_text(spec[0].shape)}", count, rng, min_count, what)
    try:
        iterator = iter(spec)
    except TypeError:
        raise CalibrationError(
            f"{what} data of type {type(spec).__name__} is not supported; expected a folder, "
            ".npy/.npz path, an ndarray or an iterable of arrays"
        ) from None
    xs, ys = [], []
    total = 0
    for item in progress(iterator, desc=f"{what} data"):
        if isinstance(item, (tuple, list)) and len(item) == 2 and not np.isscalar(item[0]):
            xi, yi = item
        else:
            xi, yi = item, None
        xi = np.asarray(xi)
        xi = _as_batch(xi, input_shape, "an item of the iterable", what)
        xs.append(_to_float(xi, preprocess))
        if yi is not None:
            ys.append(np.asarray(yi).reshape(-1))
        total += xi.shape[0]
        if total >= MAX_ITERABLE_SAMPLES:
            break
    if not xs:
        raise CalibrationError(f"the {what} iterable yielded no samples; need at least {min_count}")
    x = np.concatenate(xs)
    y = None
    if ys:
        if len(ys) != len(xs):
            raise CalibrationError(f"some {what} items have labels and some do not; give (x, y) for all or none")
        y = _check_labels(np.concatenate(ys), x.shape[0], "the iterable", what)
    return _sample(x, y, "iterable", f"iterable of {type(spec).__name__}", count, rng, min_count, what)


# -- sources ---------------------------------------------------------------------------


def _load_file(text, ext, input_shape, preprocess, count, rng, min_count, what, max_bytes) -> CalibrationSet:
    """A .npy/.npz file: headers checked, then only the sampled rows read (see ``_sample``)."""
    seen: dict = {}

    def select(shape, dtype):
        if tuple(shape) == input_shape:
            shape = (1,) + tuple(shape)
            seen["single"] = True
        elif tuple(shape[1:]) != input_shape:
            raise CalibrationError(
                f"{what} data in {text} is shaped {_shape_text(shape)}; expected "
                f"{_shape_text((None,) + input_shape)} or one sample {_shape_text(input_shape)}")
        if dtype.kind not in "fiub":
            raise CalibrationError(f"{what} data in {text} has dtype {dtype}; expected numbers (float32 or uint8)")
        n = int(shape[0])
        seen["n"] = n
        if n < min_count:
            raise CalibrationError(f"{what} data {text!r} holds {n} sample(s); need at least {min_count}")
        if seen.get("single"):
            return None
        if n > count:  # the same draw as _sample makes on a full array
            seen["idx"] = np.sort(rng.choice(n, size=count, replace=False))
            return seen["idx"]
        return None

    try:
        if ext == ".npy":
            x, y = safeio.load_npy(text, max_bytes=max_bytes, error=CalibrationError, select=select), None
        else:
            arrays = safeio.load_npz(text, ("x",), max_bytes=max_bytes, error=CalibrationError, required=("x",),
                                     select={"x": select})
            x = arrays["x"]
            y = None
            if "y" in safeio.npz_names(text, error=CalibrationError):
                y = safeio.load_npz(text, ("y",), max_bytes=max_bytes - x.nbytes, error=CalibrationError)["y"]
    except MemoryError:
        raise CalibrationError(f"{what} data {text!r}: not enough memory to read it") from None
    if seen.get("single"):
        x = x[None]
    n = seen.get("n", x.shape[0])
    if y is not None:
        y = _check_labels(y, n, text, what)
        if "idx" in seen:
            y = y[seen["idx"]]
    x = _to_float(np.asarray(x), preprocess)
    return _sample(x, y, ext[1:], text, count, rng, min(min_count, x.shape[0]), what)


def _list_images(folder: str, what: str) -> list[str]:
    """Image files under ``folder`` (recursive, sorted), walked without leaving it.

    Like :func:`edgeship.preprocess.list_images`, but a FIFO, socket or device anywhere in
    the folder, or a link that leads out of it (``/proc/self/mem``, ``/etc/passwd``), is a
    :class:`CalibrationError` naming it; nothing outside the folder is opened.
    """
    files = safeio.tree_files(folder, error=CalibrationError, what=f"{what} folder")
    return [p for rel, p in files
            if rel.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(rel).startswith(".")]


def _load_folder(folder, input_shape, preprocess, count, rng, min_count, what) -> CalibrationSet:
    if preprocess is None:
        raise CalibrationError(
            f"an image folder as {what} data needs a preprocessing spec (size, colour, scale) "
            "to turn images into model inputs"
        )
    paths = _list_images(folder, what)
    if len(paths) < min_count:
        raise CalibrationError(
            f"{what} folder {folder!r} holds {len(paths)} image(s); need at least {min_count} "
            f"(searched recursively for {', '.join(('png', 'jpg', 'jpeg', 'bmp', 'webp', 'tif'))})"
        )
    rels = [os.path.relpath(p, folder) for p in paths]
    in_sub = [os.sep in r for r in rels]
    classes = None
    labels = None
    if all(in_sub):
        classes = tuple(sorted({r.split(os.sep, 1)[0] for r in rels}))
        if len(classes) > 1:
            index = {c: i for i, c in enumerate(classes)}
            labels = np.asarray([index[r.split(os.sep, 1)[0]] for r in rels], np.int64)
        else:
            classes = None
    order = rng.permutation(len(paths))
    xs, ys, skipped, first_err = [], [], 0, None
    want = min(count, len(paths))
    for i in progress(order, total=len(paths), desc=f"{what} images"):
        if len(xs) >= want:
            break
        try:
            img = read_image(paths[i])
            sample = preprocess.apply(img)
        except InputError as exc:
            skipped += 1
            first_err = first_err or str(exc)
            continue
        if sample.shape != input_shape:
            raise CalibrationError(
                f"images in {folder!r} become samples shaped {_shape_text(sample.shape)} with the "
                f"preprocessing spec, but the model expects {_shape_text(input_shape)}; fix --preprocess"
            )
        xs.append(sample)
        if labels is not None:
            ys.append(labels[i])
    warns = ()
    if skipped:
        warns = (f"skipped {skipped} image(s) in {folder!r} that could not be decoded (first: {first_err})",)
    if len(xs) < min_count:
        raise CalibrationError(
            f"{what} folder {folder!r}: only {len(xs)} of {len(paths)} image(s) could be decoded "
            f"({skipped} skipped); need at least {min_count}"
        )
    x = np.stack(xs).astype(np.float32)
    y = np.asarray(ys, np.int64) if labels is not None else None
    return _finish(x, y, "folder", folder, classes, skipped, warns, min_count, what)


# -- helpers ---------------------------------------------------------------------------


def _as_batch(arr, input_shape, where, what) -> np.ndarray:
    arr = np.asarray(arr)
    if tuple(arr.shape) == input_shape:
        arr = arr[None]
    elif tuple(arr.shape[1:]) != input_shape:
        raise CalibrationError(
            f"{what} data in {where} is shaped {_shape_text(arr.shape)}; expected "
            f"{_shape_text((None,) + input_shape)} or one sample {_shape_text(input_shape)}"
        )
    if arr.dtype.kind not in "fiub":
        raise CalibrationError(f"{what} data in {where} has dtype {arr.dtype}; expected numbers (float32 or uint8)")
    return arr


def _to_float(arr: np.ndarray, preprocess: PreprocessSpec | None) -> np.ndarray:
    """uint8 arrays are raw pixels: normalise them like decoded images."""
    if arr.dtype == np.uint8 and preprocess is not None:
        return preprocess.normalize(arr)  # the rule's formula, in the spec's layout
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    return np.asarray(arr, dtype=np.float32)


def _check_labels(y, n, where, what):
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise CalibrationError(f"{what} labels in {where} number {y.shape[0]} but there are {n} samples")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise CalibrationError(f"{what} labels in {where} must be class indices; got dtype {y.dtype}")
    return y.astype(np.int64)


def _sample(x, y, kind, source, count, rng, min_count, what) -> CalibrationSet:
    n = int(x.shape[0])
    if n < min_count:
        raise CalibrationError(f"{what} data {source!r} holds {n} sample(s); need at least {min_count}")
    if n > count:
        idx = np.sort(rng.choice(n, size=count, replace=False))
        x = x[idx]
        y = None if y is None else y[idx]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise CalibrationError(f"{what} data {source!r} contains NaN or infinite values")
    return _finish(x, y, kind, source, None, 0, (), min_count, what)


def _finish(x, y, kind, source, classes, skipped, warns, min_count, what) -> CalibrationSet:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] < min_count:  # pragma: no cover - guarded by callers
        raise CalibrationError(f"{what} data {source!r} holds {x.shape[0]} sample(s); need at least {min_count}")
    return CalibrationSet(x, y, kind, source, _hash(x, y), classes, skipped, tuple(warns))
