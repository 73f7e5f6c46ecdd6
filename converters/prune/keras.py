"""Magnitude pruning of Keras models with tensorflow-model-optimization (``prune_keras``).

See :mod:`edgeship.converters.prune` for the API and the measurements behind the defaults.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import CalibrationError, UnsupportedModelError, require

from ..keras_bridge import bridge_to_tf_keras
from .data import load_train_data
from .options import (
    DEFAULT_DENSE_BLOCK, N_M_LAYERS, PRUNABLE, PruneOptionError, check_blocks, check_n_m, is_elementwise, parse_block,
    parse_structure, target_sparsity,
)

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
    elementwise = is_elementwise(structure)
    nm = None if (block or elementwise) else parse_structure(structure)
    default = nm is None and not block and not elementwise
    if default:
        block = DEFAULT_DENSE_BLOCK  # Dense kernels in 1x4 blocks, the rest elementwise
    target = target_sparsity(sparsity, nm)
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
        if nm is not None and type(layer).__name__ not in N_M_LAYERS:
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
