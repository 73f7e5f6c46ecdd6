"""Knowledge distillation: a smaller student trained on the teacher's temperature-softened outputs.

Loss (Hinton et al. 2015): ``alpha * CE(labels, student) + (1 - alpha) * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``; with unlabelled data, the soft-target
term alone. Softmax outputs are turned back into logits with ``log`` (softmax is
invariant to the constant that loses), so teachers and students may end in a softmax
or in logits.

The student is the user's Keras model, or derived from the teacher's own config:
:func:`derive_student` multiplies the filters of every convolution and the units of
every Dense layer by ``width``, except the last one (it produces the classes), and
initializes it afresh (seeded). The same student, from the same initial weights, is
also trained on the labels alone for as many epochs, so the report shows what
distillation bought.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import InputError, UnsupportedModelError

from .macs import count_macs, count_params
from .training import accuracy, fit, integer_labels, keras_module, outputs_probabilities, predict

__all__ = ["DistillResult", "derive_student", "distill", "distill_loss", "SCALED"]

SCALED = {"Conv1D": "filters", "Conv2D": "filters", "SeparableConv2D": "filters", "Conv2DTranspose": "filters",
          "Dense": "units"}


@dataclass(frozen=True)
class DistillResult:
    model: Any
    record: dict
    history: list = field(default_factory=list)


def derive_student(teacher, width: float, *, seed: int = 0):
    """A fresh model with the teacher's architecture, filters/units times ``width`` (the last such layer kept).

    Raises:
        UnsupportedModelError: a subclassed teacher, or no layer to narrow.
    """
    km = keras_module(teacher)
    try:
        cfg = copy.deepcopy(teacher.get_config())
    except NotImplementedError:
        raise UnsupportedModelError("--student-width derives the student from a Sequential or Functional "
                                    f"teacher; {type(teacher).__name__} is subclassed: pass --student") from None
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
    seq = isinstance(teacher, km.Sequential)
    student = (km.Sequential if seq else km.Model).from_config(cfg)
    if not student.built:
        student.build(tuple(teacher.inputs[0].shape))
    return student


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
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y_true[:, n_classes], tf.int32), z)
        return alpha * ce + (1.0 - alpha) * kd

    return loss


def distill(teacher, student, train, *, val=None, epochs: int, temperature: float, alpha: float, lr: float = 2e-3,
            seed: int = 0, baseline: bool = True) -> DistillResult:
    """Train ``student`` (in place) on ``teacher``'s soft outputs over ``train`` = ``(x, y or None)``.

    ``val`` = ``(x, y)``: accuracies of teacher, student and the labels-only student for the record.

    Raises:
        InputError: the student's output does not match the teacher's classes.
    """
    km = keras_module(student)
    x, y = train
    t_out = predict(teacher, x)
    if t_out.ndim != 2 or t_out.shape[1] < 2:
        raise UnsupportedModelError("distillation needs a classifier teacher (one output of class scores)")
    n = int(t_out.shape[1])
    s_out = predict(student, x[:64])
    if s_out.shape[1:] != t_out.shape[1:]:
        raise InputError(f"the student's output {s_out.shape[1:]} differs from the teacher's {t_out.shape[1:]}")
    labels = integer_labels(y)
    labelled = labels is not None
    plain = None
    if baseline and labelled:  # the same student, same initial weights, for the labels-only run
        plain = km.models.clone_model(student)
        plain.build(tuple(student.inputs[0].shape))
        plain.set_weights(student.get_weights())
    target = np.concatenate([as_logits(t_out), (labels if labelled else np.zeros(len(x)))[:, None]], 1)
    loss = distill_loss(n, temperature, alpha, labelled, outputs_probabilities(s_out))
    history = fit(student, x, target.astype(np.float32), epochs=epochs, desc="distill", lr=lr, loss=loss, seed=seed)
    record = {"temperature": float(temperature), "alpha": float(alpha) if labelled else 0.0, "epochs": int(epochs),
              "labelled": labelled, "train_count": int(len(x)),
              "teacher_params": count_params(teacher), "teacher_macs": count_macs(teacher),
              "student_params": count_params(student), "student_macs": count_macs(student)}
    if val is not None and val[1] is not None:
        record["teacher_accuracy"] = accuracy(teacher, *val)
        record["student_accuracy"] = accuracy(student, *val)
    if plain is not None:
        hist_plain = fit(plain, x, labels, epochs=epochs, desc="student on labels alone", lr=lr, seed=seed)
        record["labels_only_history"] = hist_plain
        if val is not None and val[1] is not None:
            record["labels_only_accuracy"] = accuracy(plain, *val)
    return DistillResult(model=student, record=record, history=history)
