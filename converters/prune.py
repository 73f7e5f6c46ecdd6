"""Magnitude pruning of Keras models with tensorflow-model-optimization.

Sparsity pays only after compression: a pruned INT8 ``.tflite`` has as many bytes
as the dense one, but its zeros gzip away. This module prunes, fine-tunes,
strips the pruning wrappers and measures the sparsity actually achieved in each
layer, so that ``convert()`` can record it in the manifest.

tfmot prunes tf_keras (Keras 2) models only. A Keras 3 model is first rebuilt in
tf_keras by :mod:`edgeship.converters.keras_bridge`, which proves the copy
numerically (max abs diff <= 1e-5) or raises ``UnsupportedModelError`` naming
the layer it cannot bridge.

API (for ``convert()`` and the CLI)
-----------------------------------
``prune_keras(model, *, sparsity, train_data=None, epochs=2, structure=None,
batch_size=32, validation_data=None, seed=0, progress=True, learning_rate=1e-3,
loss=None, ramp=0.6, bridge_samples=None) -> PruneResult``

    ``model``: a Keras 3 or tf_keras model (not modified). ``sparsity``: the
    target fraction of zero weights in every prunable layer, 0 < s < 1.
    ``train_data``: ``(x, y)`` arrays or a :class:`TrainData` from
    :func:`load_train_data` (CLI ``--train-data``); with data, the model is
    fine-tuned for ``epochs`` (``--prune-epochs``) with a PolynomialDecay schedule
    that ramps sparsity from 0 to ``sparsity`` over the first ``ramp`` fraction of
    the fine-tuning steps and holds it for the rest (recovery); without data, the
    weights are pruned once (ConstantSparsity) and no fine-tuning happens, so
    accuracy may drop: ``PruneResult.warnings`` says so. ``structure``
    (``--prune-structure``) chooses where the zeros go. ``None`` (the default,
    what plain ``--prune 0.5`` does): Dense kernels are pruned in aligned blocks
    of 4 consecutive input-channel weights (tfmot's ``block_size=(4, 1)`` on the
    (in, out) kernel), convolutions and the other layers elementwise. Why: TFLite
    stores a FullyConnected weight as (out, in) and a Conv2D weight as OHWI, so
    a block of 4 input weights is 4 contiguous int8 bytes in the flatbuffer and
    gzip (LZ77 + Huffman) codes a long zero run in a few bits, where isolated
    zeros cost almost as much as the weights they replace. Measured by
    ``benchmarks/bench_prune.py`` (Fashion-MNIST CNN, 3 fine-tuning epochs,
    where Dense holds ~95% of the weights): the mean zero-run length of the
    int8 FC weights goes from 2.05 to 9.0 bytes at 50% (4.3 to 18.7 at 75%),
    and the INT8 gzip ratio against the dense INT8 from 0.743x to 0.630x at 50%
    and from 0.453x to 0.372x at 75%, with the same accuracy (INT8 -0.86 and
    -0.16 points vs the dense FP32, i.e. slightly better). Convolutions stay elementwise: their kernels are
    a small share of the bytes here and the first ones have few input channels.
    ``"elementwise"`` (or ``"unstructured"``): every layer elementwise (tfmot's
    plain behaviour, the default before). ``"N:M"`` keeps at most N nonzeros in every M
    consecutive weights along the input-channel axis (``"2:4"``, tfmot's
    ``sparsity_m_by_n=(2, 4)``); the sparsity is then (M-N)/M, ``sparsity`` must be
    None or equal to it, and layers whose input-channel count is not a multiple of
    M are left dense (listed in ``skipped``). ``"1xK"`` (e.g. ``"1x4"``) prunes
    Dense kernels in aligned blocks of K consecutive input-channel weights
    (contiguous in the TFLite file, so the zeros gzip better; tfmot's
    ``block_size=(K, 1)``) and other layers elementwise, at ``sparsity``; each
    layer row then has a ``structure`` field (``"1xK"``, ``"elementwise"`` or
    ``"N:M"``); the manifest's ``pruning.granularity`` says the same in words,
    and ``pruning.structure`` is what was asked (``None`` for the default). The
    loss is inferred from the model's
    output and ``y`` (integer labels, one-hot, binary, else MSE) unless ``loss``
    is given.

    ``PruneResult``: ``model`` (stripped tf_keras model;
    ``tf.lite.TFLiteConverter.from_keras_model`` converts it), ``layers`` (list of
    ``{name, target, achieved, params, structure}``), ``achieved_total``, ``target``,
    ``structure``, ``granularity``, ``bridged``, ``bridge_max_abs_diff``, ``fine_tuned``,
    ``history`` (dict of per-epoch lists), ``skipped`` (``{name, reason}``),
    ``warnings``; ``to_manifest()`` gives the manifest's ``pruning`` section.

``load_train_data(spec, *, preprocess=None, input_shape=None, limit=None) -> TrainData``

    ``spec``: an ``.npz`` with arrays ``x`` and ``y`` (loaded with
    ``allow_pickle=False``; ``x`` is used as the model input as it is), or an image
    folder with one subfolder per class (sorted subfolder names are the classes,
    label = index), decoded with OpenCV through ``preprocess`` (a
    :class:`edgeship.preprocess.PreprocessSpec`) or, without one, a spec derived
    from ``input_shape`` (NHWC: resize to HxW, gray for 1 channel, scale 1/255).
    ``TrainData(x, y, classes)``. Raises :class:`CalibrationError` for missing or
    malformed data.

``achieved_sparsity(model, names=None) -> list[dict]``: per-layer zero fraction of
the prunable weights of a tf_keras or Keras 3 model.

``check_n_m(kernel, n, m, axis) -> bool``: at most N nonzeros in every M
consecutive weights along ``axis`` (the input channels: 2 for Conv2D, 0 for Dense).
``check_blocks(kernel, k, axis) -> bool``: zeros come in whole aligned blocks of k.

Not used: ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (TFLite's sparse tensor
encoding). For the INT8 CNN of the benchmark it makes the raw file larger at
50% (171,704 vs 117,184 bytes) and both gzip files larger than without it
(0.674x vs 0.630x at 50%, 0.397x vs 0.372x at 75%), and XNNPack (LiteRT's default CPU
delegate) refuses the sparse int8 FullyConnected ("failed to prepare"), so the
model runs only on the reference kernels. The benchmark measures it each run.

Errors: ``PruneOptionError`` (bad sparsity/structure/epochs), ``CalibrationError``
(training data), ``UnsupportedModelError`` (bridge), ``MissingDependencyError``.
TensorFlow, tf_keras and tfmot are imported inside the functions. Importing tfmot
sets ``TF_USE_LEGACY_KERAS=1`` in the process; this module restores the variable.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from edgeship.errors import CalibrationError, EdgeshipError, UnsupportedModelError, require

from .keras_bridge import bridge_to_tf_keras

# tf_keras layer class -> (prunable weight attribute, axis of the input channels)
PRUNABLE = {
    "Conv1D": ("kernel", 1),
    "Conv2D": ("kernel", 2),
    "Conv3D": ("kernel", 3),
    "Dense": ("kernel", 0),
    "SeparableConv1D": ("pointwise_kernel", 1),
    "SeparableConv2D": ("pointwise_kernel", 2),
    "Conv2DTranspose": ("kernel", 3),
}


# tfmot's N:M masks group weights along the input channels of rank-2 and rank-4 kernels.
_N_M_LAYERS = ("Conv2D", "SeparableConv2D", "Dense")


from edgeship.errors import PruneOptionError  # noqa: E402  (re-exported)


class TrainData(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    classes: tuple = ()


@dataclass(frozen=True)
class PruneResult:
    model: Any
    layers: list
    achieved_total: float
    target: float
    structure: str | None
    bridged: bool
    bridge_max_abs_diff: float | None
    fine_tuned: bool
    epochs: int
    history: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    warnings: tuple = ()
    granularity: str = ""

    def to_manifest(self) -> dict:
        """The manifest's ``pruning`` section."""
        return {
            "method": "magnitude (tensorflow-model-optimization prune_low_magnitude)",
            "target": self.target,
            "structure": self.structure,
            "granularity": self.granularity,
            "achieved_total": self.achieved_total,
            "fine_tuned": self.fine_tuned,
            "epochs": self.epochs if self.fine_tuned else 0,
            "bridge": {"bridged": self.bridged, "max_abs_diff": self.bridge_max_abs_diff},
            "layers": [dict(layer) for layer in self.layers],
            "skipped": [dict(s) for s in self.skipped],
        }


# -- options ------------------------------------------------------------------------


ELEMENTWISE = ("elementwise", "unstructured")

# Default granularity (``structure=None``): Dense kernels in aligned blocks of 4
# consecutive input weights, everything else elementwise. See the module docstring.
DEFAULT_DENSE_BLOCK = 4


def _is_elementwise(structure) -> bool:
    return isinstance(structure, str) and structure.strip().lower() in ELEMENTWISE


def parse_block(structure) -> int | None:
    """``"1x4"`` -> 4: blocks of K consecutive input-channel weights pruned together.

    Raises:
        PruneOptionError: K outside 2..64.
    """
    if not isinstance(structure, str) or "x" not in structure.lower():
        return None
    try:
        one, k_text = structure.lower().split("x")
        if one.strip() != "1":
            raise ValueError
        k = int(k_text)
    except ValueError:
        raise PruneOptionError(f"block structure {structure!r} is not 1xK (e.g. '1x4')") from None
    if not (2 <= k <= 64):
        raise PruneOptionError(f"block structure {structure!r} needs 2 <= K <= 64")
    return k


def check_blocks(kernel, k: int, axis: int) -> bool:
    """True when the zeros of ``kernel`` come in whole aligned blocks of ``k`` along ``axis``."""
    a = np.moveaxis(np.asarray(kernel), axis, -1)
    c = a.shape[-1] - a.shape[-1] % k
    zeros = (a[..., :c] == 0).reshape(-1, k).sum(axis=1)
    return bool(np.all((zeros == 0) | (zeros == k)))


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: at most N nonzeros in every M consecutive weights.

    Raises:
        PruneOptionError: not of the form N:M with 0 < N < M.
    """
    if structure is None or structure == "":
        return None
    if isinstance(structure, str) and (_is_elementwise(structure) or parse_block(structure) is not None):
        return None  # not N:M: elementwise or 1xK blocks (parse_block validates K)
    if isinstance(structure, (tuple, list)) and len(structure) == 2:
        n, m = structure
    else:
        try:
            n_text, m_text = str(structure).split(":")
            n, m = int(n_text), int(m_text)
        except ValueError:
            raise PruneOptionError(f"pruning structure {structure!r} is not N:M (e.g. '2:4')") from None
    if not (0 < n < m):
        raise PruneOptionError(f"pruning structure {structure!r} needs 0 < N < M (e.g. '2:4')")
    return int(n), int(m)


def _target_sparsity(sparsity, nm) -> float:
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-6:
            raise PruneOptionError(
                f"sparsity {sparsity} contradicts structure {nm[0]}:{nm[1]}, which means sparsity {implied:g}; "
                "pass one of them"
            )
        return implied
    if sparsity is None:
        raise PruneOptionError("pass sparsity (0 < sparsity < 1) or a structure such as '2:4'")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise PruneOptionError(f"sparsity {sparsity!r} is not a number between 0 and 1") from None
    if not (0.0 < s < 1.0):
        raise PruneOptionError(f"sparsity {sparsity!r} must be between 0 and 1 (exclusive), e.g. 0.5")
    return s


# -- heavy imports ------------------------------------------------------------------


def _tf_stack():
    """(tensorflow, tf_keras, tfmot) with TF_USE_LEGACY_KERAS left as it was."""
    tf = require("tensorflow", "convert", "to prune Keras models")
    tk = require("tf_keras", "convert", "to prune Keras models")
    prev = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        getattr(tf.keras, "version", None)  # resolve tf.keras before tfmot flips the variable
        tfmot = require("tensorflow_model_optimization", "convert", "to prune Keras models")
    finally:
        if prev is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = prev
    return tf, tk, tfmot


# -- measuring ----------------------------------------------------------------------


def _prunable_kernel(layer):
    spec = PRUNABLE.get(type(layer).__name__)
    if spec is None:
        return None, None
    w = getattr(layer, spec[0], None)
    return (w, spec[1]) if w is not None else (None, None)


def achieved_sparsity(model, names=None) -> list[dict]:
    """Fraction of zeros in each prunable layer's kernel (``names``: only these)."""
    rows = []
    for layer in model.layers:
        if names is not None and layer.name not in names:
            continue
        w, _axis = _prunable_kernel(layer)
        if w is None:
            continue
        a = np.asarray(w)
        rows.append({"name": layer.name, "params": int(a.size), "achieved": float(np.mean(a == 0)) if a.size else 0.0})
    return rows


def check_n_m(kernel, n: int, m: int, axis: int) -> bool:
    """True when every group of ``m`` consecutive weights along ``axis`` (the input
    channels; a trailing partial group counts as a group) has at most ``n`` nonzeros."""
    a = np.moveaxis(np.asarray(kernel), axis, -1)
    c = a.shape[-1]
    pad = (-c) % m
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    groups = a.reshape(-1, m)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n))


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

    if not zipfile.is_zipfile(path):
        raise CalibrationError(f"cannot read {path!r} as an .npz file: not a zip archive (numpy.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            missing = {"x", "y"} - files
            if missing:
                raise CalibrationError(
                    f"{path!r} has no array named {sorted(missing)[0]!r}; training data needs arrays 'x' "
                    f"(inputs) and 'y' (labels), found {sorted(files)}"
                )
            x, y = z["x"], z["y"]
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


# -- pruning ------------------------------------------------------------------------


def _infer_loss(tk, model, x, y):
    """(loss, metrics) from the model's output and the labels."""
    out = model(x[: min(len(x), 64)], training=False)
    out = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
    probs = bool(np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6))
    units = out.shape[-1] if out.ndim > 1 else 1
    y = np.asarray(y)
    integer = np.issubdtype(y.dtype, np.integer) or (y.size and np.all(np.equal(np.mod(y, 1), 0)))
    if units > 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) and integer:
        softmax = probs and np.allclose(out.sum(-1), 1.0, atol=1e-3)
        return tk.losses.SparseCategoricalCrossentropy(from_logits=not softmax), ["accuracy"]
    if units > 1 and y.ndim == 2 and y.shape[1] == units and np.allclose(y.sum(-1), 1.0, atol=1e-3):
        softmax = probs and np.allclose(out.sum(-1), 1.0, atol=1e-3)
        return tk.losses.CategoricalCrossentropy(from_logits=not softmax), ["accuracy"]
    if units == 1 and integer and set(np.unique(y).tolist()) <= {0, 1}:
        return tk.losses.BinaryCrossentropy(from_logits=not probs), ["accuracy"]
    return tk.losses.MeanSquaredError(), []


class _Progress:
    """A tf_keras callback factory showing one bar over all fine-tuning batches."""

    @staticmethod
    def make(tk, total: int, enabled: bool):
        from edgeship import progress as _p  # noqa: PLC0415

        show = enabled and _p.enabled()

        class Bar(tk.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = None
                self.n = 0
                self.epoch = 0
                if show:
                    try:
                        from tqdm import tqdm  # noqa: PLC0415

                        self.bar = tqdm(total=total, desc="prune fine-tune", leave=False, file=sys.stderr,
                                        dynamic_ncols=True)
                    except ImportError:
                        self.bar = None

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch + 1

            def on_train_batch_end(self, batch, logs=None):
                self.n += 1
                if not show:
                    return
                loss = (logs or {}).get("loss")
                if self.bar is not None:
                    self.bar.update(1)
                    if loss is not None and self.n % 10 == 0:
                        self.bar.set_postfix(epoch=self.epoch, loss=f"{float(loss):.4f}", refresh=False)
                elif self.n % max(1, total // 50) == 0 or self.n == total:
                    sys.stderr.write(f"\rprune fine-tune epoch {self.epoch}: {self.n}/{total}")
                    sys.stderr.flush()

            def on_train_end(self, logs=None):
                if self.bar is not None:
                    self.bar.close()
                elif show:
                    sys.stderr.write("\r" + " " * 60 + "\r")

        return Bar()


def prune_keras(
    model,
    *,
    sparsity: float | None,
    train_data=None,
    epochs: int = 2,
    structure: str | None = None,
    batch_size: int = 32,
    validation_data=None,
    seed: int = 0,
    progress: bool = True,
    learning_rate: float = 1e-3,
    loss=None,
    ramp: float = 0.6,
    bridge_samples=None,
) -> PruneResult:
    """Prune a Keras 3 or tf_keras model by weight magnitude and return a stripped
    tf_keras model with the sparsity achieved per layer. See the module docstring.

    Raises:
        PruneOptionError: sparsity/structure/epochs/batch_size out of range.
        CalibrationError: training data malformed or not matching the model's input.
        UnsupportedModelError: the model cannot be bridged or has nothing to prune.
        MissingDependencyError: tensorflow, tf_keras or tfmot missing (extra ``convert``).
    """
    block = parse_block(structure)
    elementwise = _is_elementwise(structure)
    nm = None if (block or elementwise) else parse_structure(structure)
    default = nm is None and not block and not elementwise
    if default:
        block = DEFAULT_DENSE_BLOCK  # Dense kernels in 1x4 blocks, the rest elementwise
    target = _target_sparsity(sparsity, nm)
    if int(epochs) < 1:
        raise PruneOptionError(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise PruneOptionError(f"batch_size must be >= 1, got {batch_size}")
    if not (0.0 < float(ramp) <= 1.0):
        raise PruneOptionError(f"ramp must be in (0, 1], got {ramp}")

    data = None
    if train_data is not None:
        data = load_train_data(train_data, input_shape=_model_input_shape(model))
    warnings: list[str] = []

    tf, tk, tfmot = _tf_stack()
    if data is not None:
        _check_input_shape(model, data.x)
    samples = bridge_samples if bridge_samples is not None else (data.x[:16] if data is not None else None)
    bridge = bridge_to_tf_keras(model, samples=samples, seed=seed)
    base = bridge.model

    # Work on a copy: never change the caller's model.
    try:
        work = tk.models.clone_model(base)
        work.set_weights(base.get_weights())
    except Exception as exc:  # subclassed or non-serializable tf_keras models
        raise UnsupportedModelError(
            f"cannot rebuild model {getattr(base, 'name', '?')!r} for pruning ({type(exc).__name__}: {exc}); "
            "pruning needs a Sequential or Functional model of built-in layers"
        ) from None

    selected, skipped = [], []
    for layer in work.layers:
        w, axis = _prunable_kernel(layer)
        if w is None:
            continue
        if nm is not None and type(layer).__name__ not in _N_M_LAYERS:
            skipped.append({"name": layer.name,
                            "reason": f"{type(layer).__name__}: N:M pruning supports Conv2D, SeparableConv2D and "
                                      "Dense kernels only"})
            continue
        if nm is not None and w.shape[axis] % nm[1] != 0:
            skipped.append({"name": layer.name,
                            "reason": f"{w.shape[axis]} input channels is not a multiple of {nm[1]} ({nm[0]}:{nm[1]})"})
            continue
        selected.append(layer.name)
    if not selected:
        raise UnsupportedModelError(
            "the model has no prunable layer (Conv1D/2D/3D, Dense, SeparableConv, Conv2DTranspose)"
            + (f"; skipped: {skipped}" if skipped else "")
        )

    sched_mod = tfmot.sparsity.keras
    steps_per_epoch = math.ceil(len(data.x) / int(batch_size)) if data is not None else 0
    total_steps = steps_per_epoch * int(epochs)
    if data is not None and total_steps >= 2:
        ramp_steps = max(1, int(round(float(ramp) * total_steps)))
        frequency = max(1, ramp_steps // 20)
        end_step = max(frequency, (ramp_steps // frequency) * frequency)
        schedule = sched_mod.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0,
                                             end_step=end_step, frequency=frequency)
    else:
        schedule = sched_mod.ConstantSparsity(target, begin_step=0, frequency=1)

    params: dict = {"pruning_schedule": schedule}
    if nm is not None:
        params["sparsity_m_by_n"] = (nm[1] - nm[0], nm[1])  # tfmot: (zeros, block)

    def wrap(layer):
        if layer.name in selected:
            extra = {}
            if block and type(layer).__name__ == "Dense" and layer.kernel.shape[0] % block == 0:
                # tf kernel (in, out); TFLite stores (out, in): blocks over the input rows are contiguous there.
                extra["block_size"] = (block, 1)
                block_layers.add(layer.name)
            return sched_mod.prune_low_magnitude(layer, **params, **extra)
        return layer

    block_layers: set = set()

    pruned = tk.models.clone_model(work, clone_function=wrap)

    history: dict = {}
    fine_tuned = False
    if data is not None and total_steps >= 2:
        tf.random.set_seed(int(seed))
        loss_fn, metrics = (loss, ["accuracy"]) if loss is not None else _infer_loss(tk, base, data.x, data.y)
        pruned.compile(optimizer=tk.optimizers.Adam(learning_rate=float(learning_rate)), loss=loss_fn,
                       metrics=metrics)
        val = None
        if validation_data is not None:
            v = load_train_data(validation_data)
            val = (v.x, v.y)
        callbacks = [sched_mod.UpdatePruningStep(), _Progress.make(tk, total_steps, progress)]
        h = pruned.fit(data.x, data.y, batch_size=int(batch_size), epochs=int(epochs), verbose=0,
                       validation_data=val, callbacks=callbacks, shuffle=True)
        history = {k: [float(v) for v in vals] for k, vals in h.history.items()}
        fine_tuned = True
    else:
        if data is not None:
            warnings.append("too few training samples for fine-tuning; pruned once without it")
        else:
            warnings.append("no training data: pruned once without fine-tuning, accuracy may drop "
                            "(pass --train-data to fine-tune)")
        _apply_masks_once(pruned, sched_mod)

    stripped = sched_mod.strip_pruning(pruned)
    measured = {r["name"]: r for r in achieved_sparsity(stripped, names=set(selected))}
    layers = [{"name": n, "target": target, "achieved": measured[n]["achieved"], "params": measured[n]["params"]}
              for n in selected if n in measured]
    for r in layers:
        r["structure"] = (f"{nm[0]}:{nm[1]}" if nm else
                          f"1x{block}" if r["name"] in block_layers else "elementwise")
    total = sum(r["params"] for r in layers)
    achieved_total = sum(r["achieved"] * r["params"] for r in layers) / total if total else 0.0
    for r in layers:
        if r["achieved"] + 0.02 < target and nm is None:
            warnings.append(f"layer {r['name']} reached sparsity {r['achieved']:.3f}, below the target {target:g}")
    if nm is not None:
        for lyr in stripped.layers:
            if lyr.name in measured:
                w, axis = _prunable_kernel(lyr)
                if not check_n_m(np.asarray(w), nm[0], nm[1], axis):
                    warnings.append(f"layer {lyr.name} does not hold the {nm[0]}:{nm[1]} structure")
    for lyr in stripped.layers:
        if lyr.name in block_layers:
            w, axis = _prunable_kernel(lyr)
            if not check_blocks(np.asarray(w), block, axis):
                warnings.append(f"layer {lyr.name} does not hold the 1x{block} block structure")
    return PruneResult(
        model=stripped,
        layers=layers,
        achieved_total=float(achieved_total),
        target=float(target),
        structure=(f"{nm[0]}:{nm[1]}" if nm else "elementwise" if elementwise else
                   None if default else f"1x{block}"),
        granularity=_granularity(nm, block, elementwise, block_layers, layers),
        bridged=bridge.bridged,
        bridge_max_abs_diff=float(bridge.max_abs_diff) if bridge.bridged else None,
        fine_tuned=fine_tuned,
        epochs=int(epochs),
        history=history,
        skipped=skipped,
        warnings=tuple(warnings),
    )


def _granularity(nm, block, elementwise, block_layers, layers) -> str:
    """How the zeros were laid out, in words, for the manifest."""
    if nm is not None:
        return f"{nm[0]}:{nm[1]} along the input channels"
    if elementwise:
        return "elementwise (unstructured) in every layer"
    others = [r["name"] for r in layers if r["name"] not in block_layers]
    text = (f"Dense kernels in aligned 1x{block} blocks of consecutive input weights "
            f"(contiguous in TFLite's (out, in) FullyConnected weights), other layers elementwise")
    if block_layers:
        text += f"; blocks: {', '.join(sorted(block_layers))}"
    if others:
        text += f"; elementwise: {', '.join(others)}"
    return text


def _model_input_shape(model):
    inputs = getattr(model, "inputs", None) or []
    return tuple(inputs[0].shape) if len(inputs) == 1 else None


def _check_input_shape(model, x) -> None:
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"pruning with training data needs a model with one input; this one has {len(inputs)}"
        )
    want = tuple(inputs[0].shape)[1:]
    got = tuple(x.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
        raise CalibrationError(f"training samples are shaped {got} but the model expects {want}")


def _apply_masks_once(pruned, sched_mod) -> None:
    """Prune the wrapped layers once, without training (step 1 of ConstantSparsity)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper  # noqa: PLC0415

    for layer in pruned.layers:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            layer.pruning_step.assign(1)
            layer.pruning_obj.conditional_mask_update()
            layer.pruning_obj.weight_mask_op()
