"""Knowledge distillation: a smaller student trained on the teacher's temperature-softened outputs.

Loss (Hinton et al. 2015): ``alpha * CE(labels, student) + (1 - alpha) * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``; with unlabelled data, the soft-target
term alone. Softmax outputs are turned back into logits with ``log`` (softmax is
invariant to the constant that loses), so teachers and students may end in a softmax
or in logits.

The student is the user's Keras model, or derived from the teacher's own config:
:func:`derive_student` multiplies the filters of every convolution and the units of
every Dense layer by ``width``, except the last one (it produces the classes), keeps, with
``depth``, only the teacher's first ``depth`` convolution blocks (a block: a convolution and the
pooling/normalization/activation layers after it, up to the next convolution), and
initializes it afresh (seeded) or, with ``init="teacher"``, from the teacher's weights of the
filters/units it keeps (width pruning; the layers of a shallower student whose shapes still
match). The teacher's logits are computed once. The same
student, from the same initial weights, on the same batches and learning-rate schedule
(Adam, cosine decay to 0), is also trained on the labels alone for as many epochs, so the
report shows what distillation bought.

When it pays: soft targets carry what the teacher learnt beyond the labels, so they help
when the student's labelled data is limited (smaller than what the teacher learnt from) or
unlabelled; with plenty of labels and few epochs the label loss alone converges faster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import InputError, UnsupportedModelError

from .macs import count_macs, count_params
from .training import accuracy, fit, integer_labels, keras_module, outputs_probabilities, predict

__all__ = ["DistillResult", "derive_student", "distill", "distill_loss", "init_from_teacher", "conv_blocks", "SCALED",
           "INITS", "CONVS", "train_labels_only", "labels_only_epochs"]

SCALED = {"Conv1D": "filters", "Conv2D": "filters", "SeparableConv2D": "filters", "Conv2DTranspose": "filters",
          "Dense": "units"}
INITS = ("random", "teacher")
CONVS = ("Conv1D", "Conv2D", "SeparableConv2D", "DepthwiseConv2D")
HEAD = ("Flatten", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
        "Dense", "Dropout")


def conv_blocks(layer_entries: list) -> list:
    """``[(start, end)]`` index ranges of the convolution blocks in a Sequential config's layer list: a
    convolution and the layers after it up to the next convolution or the head (Flatten, global pooling,
    Dense)."""
    blocks, start = [], None
    for i, e in enumerate(layer_entries):
        cls = e.get("class_name")
        if cls in CONVS:
            if start is not None:
                blocks.append((start, i))
            start = i
        elif cls in HEAD and start is not None:
            blocks.append((start, i))
            start = None
    if start is not None:
        blocks.append((start, len(layer_entries)))
    return blocks


def _drop_blocks(cfg: dict, depth: int) -> None:
    """Keep the first ``depth`` convolution blocks of a Sequential config (in place)."""
    layers = cfg["layers"]
    blocks = conv_blocks(layers)
    if not 1 <= int(depth) < len(blocks):
        raise InputError(f"student_depth={depth!r}: the teacher has {len(blocks)} convolution block(s); keep between "
                         f"1 and {len(blocks) - 1} of them" if len(blocks) > 1 else
                         f"student_depth: the teacher has {len(blocks)} convolution block(s), none to drop")
    drop = {i for a, b in blocks[int(depth):] for i in range(a, b)}
    cfg["layers"] = [e for i, e in enumerate(layers) if i not in drop]


@dataclass(frozen=True)
class DistillResult:
    model: Any
    record: dict
    history: list = field(default_factory=list)


def derive_student(teacher, width: float, *, seed: int = 0, init: str = "random", depth: int | None = None):
    """The teacher's architecture with filters/units times ``width`` (the last such layer kept) and, with
    ``depth``, its first ``depth`` convolution blocks only (:func:`conv_blocks`; Sequential teachers).

    ``init="random"``: initialized afresh (seeded); ``"teacher"``: the teacher's weights of the
    filters/units kept (the largest by L1 norm: width pruning, :func:`init_from_teacher`), falling
    back to random for graphs it cannot slice (``student.edgeship_init`` says which).

    Raises:
        UnsupportedModelError: a subclassed teacher, or no layer to narrow; ``depth`` for a non-Sequential one.
        InputError: ``depth`` not between 1 and the teacher's blocks - 1.
    """
    km = keras_module(teacher)
    try:
        cfg = copy.deepcopy(teacher.get_config())
    except NotImplementedError:
        raise UnsupportedModelError("--student-width derives the student from a Sequential or Functional "
                                    f"teacher; {type(teacher).__name__} is subclassed: pass --student") from None
    seq = isinstance(teacher, km.Sequential)
    if depth is not None:
        if not seq:
            raise UnsupportedModelError("--student-depth drops convolution blocks of a Sequential teacher; "
                                        f"{type(teacher).__name__} {teacher.name!r} is not one: pass --student")
        _drop_blocks(cfg, depth)
    entries = [e for e in cfg.get("layers", []) if e.get("class_name") in SCALED]
    if len(entries) < 2:
        raise UnsupportedModelError("--student-width: the teacher has fewer than two Conv/Dense layers to narrow; "
                                    "pass --student")
    for e in entries[:-1]:
        key = SCALED[e["class_name"]]
        e["config"][key] = max(1, int(round(int(e["config"][key]) * float(width))))
        e.pop("build_config", None)
    for e in cfg.get("layers", []):  # shapes downstream of a narrowed layer change: let them be rebuilt
        e.pop("build_config", None)
    km.utils.set_random_seed(int(seed))
    student = (km.Sequential if seq else km.Model).from_config(cfg)
    if not student.built:
        student.build(tuple(teacher.inputs[0].shape))
    if init not in INITS:
        raise InputError(f"student_init={init!r} must be one of {', '.join(INITS)}")
    done = init == "teacher" and init_from_teacher(student, teacher, prefix=depth is not None)
    student.edgeship_init = "teacher" if done else "random"
    return student


def _importance(kernel: np.ndarray) -> np.ndarray:
    """L1 norm of each output unit/filter (the last axis) of a kernel."""
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)


def init_from_teacher(student, teacher, *, prefix: bool = False) -> bool:
    """Copy into ``student`` the teacher's weights of the units/filters it keeps (the largest by L1 norm
    per layer, the channels downstream sliced to match: width pruning of the teacher), for a chain of
    Conv/Dense/BatchNormalization/Flatten and weightless layers; False (student untouched) otherwise.

    ``prefix``: a student with fewer layers (blocks dropped): layers are paired by name and copied up to
    the first one whose shapes no longer match (it and the layers after it keep their own weights); True
    when at least one layer with weights was copied."""
    t_layers = [lyr for lyr in teacher.layers if lyr.__class__.__name__ != "InputLayer"]
    s_layers = [lyr for lyr in student.layers if lyr.__class__.__name__ != "InputLayer"]
    if prefix:
        by_name = {lyr.name: lyr for lyr in t_layers}
        if any(lyr.name not in by_name for lyr in s_layers):
            return False
        t_layers = [by_name[lyr.name] for lyr in s_layers]
    if len(t_layers) != len(s_layers):
        return False
    keep, flat, new = None, None, []  # keep: channels of the current tensor kept (None: all)
    for t, s in zip(t_layers, s_layers):
        cls, tw, sw = t.__class__.__name__, t.get_weights(), s.get_weights()
        if cls in ("Conv1D", "Conv2D", "Dense") and len(tw) in (1, 2):
            k = tw[0]
            if flat is not None and cls == "Dense":  # rows of a Flatten: spatial-major, channels last
                spatial, chans = flat
                rows = (np.arange(spatial)[:, None] * chans + np.asarray(keep)[None, :]).reshape(-1)
                if rows.max() >= k.shape[0]:
                    break
                k = k[rows]
            elif keep is not None:
                k = np.take(k, keep, axis=-2)
            n_out = sw[0].shape[-1]
            out = np.sort(np.argsort(-_importance(k))[:n_out]) if n_out < k.shape[-1] else None
            if out is not None:
                k = k[..., out]
            w = [k] + ([tw[1][out] if out is not None else tw[1]] if len(tw) == 2 else [])
            keep, flat = (list(out) if out is not None else None), None
        elif cls == "BatchNormalization":
            w = [v[keep] if keep is not None else v for v in tw]
        elif cls == "Flatten":
            shape = tuple(t.input.shape)
            if tuple(s.input.shape)[1:-1] != shape[1:-1]:  # a shallower student: another spatial size
                break
            w, flat = [], ((int(np.prod(shape[1:-1])), int(shape[-1])) if keep is not None else None)
            if keep is None:
                flat = None
        elif not tw:
            w = []
        else:
            break
        if len(w) != len(sw) or any(a.shape != b.shape for a, b in zip(w, sw)):
            break
        new.append((s, w))
    else:
        prefix = False  # every layer matched
    if prefix:
        new = new if any(w for _, w in new) else []
    elif len(new) != len(s_layers):
        return False
    for s, w in new:
        if w:
            s.set_weights(w)
    return bool(new)


def as_logits(out: np.ndarray) -> np.ndarray:
    """Logits of an output (softmax rows back through log)."""
    return np.log(np.clip(out, 1e-7, 1.0)) if outputs_probabilities(out) else np.asarray(out, np.float32)


def distill_loss(n_classes: int, temperature: float, alpha: float, labelled: bool, student_probs: bool):
    """A Keras loss on ``y_true = [teacher logits (n), label]`` (TensorFlow ops: both Kerases)."""
    import tensorflow as tf  # noqa: PLC0415

    t2 = float(temperature) ** 2

    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        z = tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)) if student_probs else y_pred
        soft = tf.nn.softmax(y_true[:, :n_classes] / temperature)
        log_s = tf.nn.log_softmax(z / temperature)
        kd = tf.reduce_sum(soft * (tf.math.log(tf.clip_by_value(soft, 1e-12, 1.0)) - log_s), axis=-1) * t2
        if not labelled:
            return kd
        label = tf.cast(y_true[:, n_classes], tf.int32)  # -1: an unlabelled row, soft targets alone
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(label, 0), z)
        return tf.where(label >= 0, alpha * ce + (1.0 - alpha) * kd, kd)

    return loss


def _flip_epochs(x, extra, seed: int):
    """``epoch -> (x, extra)`` with a seeded half of the rows mirrored left-right each epoch; ``extra(flipped)``
    gives the targets of a row set (``flipped``: bool per row)."""
    mirrored = x[:, :, ::-1]

    def data(epoch):
        flip = np.random.default_rng([int(seed), int(epoch)]).random(len(x)) < 0.5
        return np.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), mirrored, x), extra(flip)

    return data


AUGMENTS = (None, "flip")


def labels_only_epochs(epochs: int, n_rows: int, n_labelled: int) -> int:
    """Epochs of the labels-only baseline over its ``n_labelled`` rows: as many optimizer steps as ``epochs``
    over all ``n_rows`` (the distilled run's), at least ``epochs``."""
    if n_labelled == n_rows:
        return int(epochs)
    return max(int(epochs), -(-int(epochs) * int(n_rows) // max(1, int(n_labelled))))


def train_labels_only(plain, x, labels, *, epochs: int, lr: float = 2e-3, seed: int = 0,
                      augment: str | None = None) -> list:
    """Train ``plain`` (in place) on the labelled rows ``(x, labels)`` alone, as :func:`distill`'s baseline
    does (Adam, cosine decay to 0, the same seed; ``augment="flip"``: the same seeded mirroring); per-epoch
    logs. ``epochs``: :func:`labels_only_epochs`."""
    x, labels = np.asarray(x, np.float32), np.asarray(labels)
    return fit(plain, x, labels, epochs=epochs, desc="student on labels alone", lr=lr, seed=seed, cosine=True,
               epoch_data=_flip_epochs(x, lambda f: labels, seed) if augment == "flip" else None)


def distill(teacher, student, train, *, val=None, epochs: int, temperature: float, alpha: float, lr: float = 2e-3,
            seed: int = 0, baseline: bool = True, augment: str | None = None) -> DistillResult:
    """Train ``student`` (in place) on ``teacher``'s soft outputs over ``train`` = ``(x, y or None)``.

    Labels of -1 mark unlabelled rows (soft targets alone); the labels-only baseline then trains
    on the labelled rows for as many optimizer steps as the distilled student.

    ``augment="flip"`` (images, NHWC): each epoch a seeded half of the images is mirrored left-right,
    with the teacher's soft targets on the mirrored images (computed once); the labels-only baseline gets
    the same flips of its labelled images (same labels), so both see the same augmentation.

    ``val`` = ``(x, y)``: accuracies of teacher, student and the labels-only student for the record.

    Raises:
        InputError: the student's output does not match the teacher's classes.
    """
    km = keras_module(student)
    x, y = train
    if augment not in AUGMENTS:
        raise InputError(f"augment={augment!r} must be one of: flip")
    if augment is not None and np.asarray(x).ndim != 4:
        raise InputError("augment='flip' mirrors images: the training data must be NHWC images")
    t_out = predict(teacher, x)
    if t_out.ndim != 2 or t_out.shape[1] < 2:
        raise UnsupportedModelError("distillation needs a classifier teacher (one output of class scores)")
    n = int(t_out.shape[1])
    s_out = predict(student, x[:64])
    if s_out.shape[1:] != t_out.shape[1:]:
        raise InputError(f"the student's output {s_out.shape[1:]} differs from the teacher's {t_out.shape[1:]}")
    labels = integer_labels(y)
    has_label = labels >= 0 if labels is not None else np.zeros(len(x), bool)  # -1: unlabelled row
    labelled = bool(has_label.any())
    n_lab = int(has_label.sum())
    plain = None
    if baseline and labelled:  # the same student, same initial weights, for the labels-only run
        plain = km.models.clone_model(student)
        plain.build(tuple(student.inputs[0].shape))
        plain.set_weights(student.get_weights())
    target = np.concatenate([as_logits(t_out), (labels if labelled else np.zeros(len(x)))[:, None]], 1)
    # the labels-only run sees the labelled rows only; as many optimizer steps as the distilled run
    plain_epochs = labels_only_epochs(epochs, len(x), n_lab)
    loss = distill_loss(n, temperature, alpha, labelled, outputs_probabilities(s_out))
    target = target.astype(np.float32)
    epoch_data = None
    if augment == "flip":
        x = np.asarray(x, np.float32)
        t_flip = np.concatenate([as_logits(predict(teacher, x[:, :, ::-1])), target[:, n:]], 1).astype(np.float32)
        epoch_data = _flip_epochs(x, lambda f: np.where(f[:, None], t_flip, target), seed)
    history = fit(student, x, target, epochs=epochs, desc="distill", lr=lr, loss=loss, seed=seed,
                  cosine=True, epoch_data=epoch_data)
    record = {"temperature": float(temperature), "alpha": float(alpha) if labelled else 0.0, "epochs": int(epochs),
              "learning_rate": float(lr), "schedule": "cosine", "augment": augment, "student_init": getattr(student, "edgeship_init", None),
              "labelled": labelled, "train_count": int(len(x)), "labelled_count": n_lab,
              "teacher_params": count_params(teacher), "teacher_macs": count_macs(teacher),
              "student_params": count_params(student), "student_macs": count_macs(student)}
    if val is not None and val[1] is not None:
        record["teacher_accuracy"] = accuracy(teacher, *val)
        record["student_accuracy"] = accuracy(student, *val)
    if plain is not None:
        xl, yl = x[has_label], labels[has_label]
        hist_plain = train_labels_only(plain, xl, yl, epochs=plain_epochs, lr=lr, seed=seed, augment=augment)
        record["labels_only_history"] = hist_plain
        record["labels_only_epochs"] = plain_epochs
        if val is not None and val[1] is not None:
            record["labels_only_accuracy"] = accuracy(plain, *val)
    return DistillResult(model=student, record=record, history=history)
