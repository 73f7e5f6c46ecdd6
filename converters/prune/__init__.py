"""Weight pruning: Keras models with tensorflow-model-optimization, ONNX weights by magnitude.

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

from .data import TrainData, load_train_data
from .keras import PruneResult, achieved_sparsity, prune_keras
from .options import (
    DEFAULT_DENSE_BLOCK, ELEMENTWISE, PRUNABLE, PruneOptionError, check_blocks, check_n_m, parse_block,
    parse_structure, target_sparsity,
)

__all__ = ["prune_keras", "PruneResult", "TrainData", "load_train_data", "achieved_sparsity", "check_n_m",
           "check_blocks", "parse_structure", "parse_block", "target_sparsity", "PruneOptionError", "PRUNABLE",
           "ELEMENTWISE", "DEFAULT_DENSE_BLOCK"]
