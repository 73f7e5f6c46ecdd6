"""Training helpers shared by the compression stages, for Keras 3 and tf_keras models alike.

``keras_module(model)`` is the Keras a model belongs to; ``task_loss`` infers the label
loss from the model's output and ``y``; ``fit`` trains epoch by epoch with one progress
line per epoch; ``accuracy`` is top-1 accuracy on labelled data.
"""

from __future__ import annotations

import numpy as np

from edgeship.progress import progress

__all__ = ["keras_module", "is_tf_keras", "outputs_probabilities", "task_loss", "fit", "accuracy", "predict",
           "integer_labels"]


def is_tf_keras(model) -> bool:
    return any(c.__module__.startswith("tf_keras") for c in type(model).__mro__)


def keras_module(model):
    """``tf_keras`` for a tf_keras model, ``keras`` (3) otherwise."""
    if is_tf_keras(model):
        import tf_keras  # noqa: PLC0415

        return tf_keras
    import keras  # noqa: PLC0415

    return keras


def predict(model, x, batch: int = 256) -> np.ndarray:
    """The first output of ``model`` on ``x`` (float32, in batches)."""
    x = np.asarray(x, np.float32)
    parts = []
    for s in range(0, len(x), batch):
        out = model(x[s : s + batch], training=False)
        if isinstance(out, dict):
            out = out[sorted(out)[0]]
        elif isinstance(out, (list, tuple)):
            out = out[0]
        parts.append(np.asarray(out, np.float32))
    return np.concatenate(parts)


def outputs_probabilities(out: np.ndarray) -> bool:
    """A softmax output (rows in [0, 1] summing to 1) rather than logits."""
    out = np.asarray(out)
    return bool(out.ndim == 2 and out.shape[1] > 1 and np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
                and np.allclose(out.sum(-1), 1.0, atol=1e-3))


def integer_labels(y) -> np.ndarray | None:
    """Class indices of ``y`` (indices or one-hot), or None when ``y`` is not class labels."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, -1).astype(np.int64)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim == 1 and y.size and np.all(np.equal(np.mod(y, 1), 0)):
        return y.astype(np.int64)
    return None


def task_loss(km, model, x, y):
    """``(loss, metrics)`` for labels ``y`` and the model's output (cross-entropy for classes, else MSE)."""
    out = predict(model, x[: min(len(x), 64)])
    probs = outputs_probabilities(out)
    y = np.asarray(y)
    if out.ndim == 2 and out.shape[1] > 1 and integer_labels(y) is not None:
        if y.ndim == 2 and y.shape[1] == out.shape[1]:
            return km.losses.CategoricalCrossentropy(from_logits=not probs), ["accuracy"]
        return km.losses.SparseCategoricalCrossentropy(from_logits=not probs), ["accuracy"]
    return km.losses.MeanSquaredError(), []


def fit(model, x, y, *, epochs: int, desc: str, lr: float = 1e-3, batch_size: int = 64, loss=None,
        metrics=None, seed: int = 0, cosine: bool = False, epoch_data=None) -> list:
    """Train ``model`` in place for ``epochs`` (one progress step per epoch); per-epoch logs.

    ``cosine``: the learning rate decays from ``lr`` to 0 along a cosine over all the steps.
    ``epoch_data``: ``epoch -> (x, y)``, the data of each epoch (as many rows as ``x``: augmented copies).
    """
    km = keras_module(model)
    if loss is None:
        loss, metrics = task_loss(km, model, x, y)
    km.utils.set_random_seed(int(seed))
    rate = float(lr)
    if cosine:
        steps = int(epochs) * max(1, -(-len(x) // int(batch_size)))
        rate = km.optimizers.schedules.CosineDecay(float(lr), decay_steps=steps)
    model.compile(optimizer=km.optimizers.Adam(rate), loss=loss, metrics=list(metrics or []))
    history = []
    for epoch in progress(range(int(epochs)), total=int(epochs), desc=desc):
        xe, ye = epoch_data(epoch) if epoch_data is not None else (x, y)
        h = model.fit(xe, ye, epochs=1, batch_size=batch_size, verbose=0, shuffle=True)
        row = {"epoch": epoch + 1, **{k: round(float(v[-1]), 5) for k, v in h.history.items()}}
        history.append(row)
    return history


def accuracy(model, x, y) -> float | None:
    """Top-1 accuracy (0..1) of the first output against class labels ``y``; None without labels."""
    labels = integer_labels(y)
    if labels is None:
        return None
    out = predict(model, x)
    if out.ndim != 2 or out.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(out, -1) == labels))
