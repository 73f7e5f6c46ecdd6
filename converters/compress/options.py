"""The options of the compression stages that train: :class:`CompressOptions`, checked by :func:`check`.

Stage order (fixed, documented in :mod:`edgeship.converters.compress`):
distill -> low-rank -> prune -> QAT / post-training INT8.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edgeship.errors import InputError

__all__ = ["CompressOptions", "check", "compression_options", "rank_value", "AUTO", "DEFAULT_ENERGY", "MAX_WIDTH"]

AUTO = "auto"
DEFAULT_ENERGY = 0.9  # low-rank "auto": keep the singular values holding this share of each kernel's energy
MAX_WIDTH = 1.0


@dataclass(frozen=True)
class CompressOptions:
    """Distillation, low-rank factorization and quantization-aware training.

    Attributes:
        low_rank: ``None`` (off), a rank (int >= 1, per layer; layers where it saves
            nothing stay dense) or ``"auto"`` (per layer, the smallest rank keeping
            ``low_rank_energy`` of the squared singular values).
        low_rank_energy: the energy budget of ``"auto"`` (0 < e < 1).
        low_rank_epochs: fine-tuning epochs after factorizing (Keras, with ``train_data``).
        distill: train a smaller student on the teacher's soft outputs (``student`` or
            ``student_width``).
        student: a Keras model or a ``.keras`` path: the student to train.
        student_width: derive the student from the teacher, filters/units times this
            (0 < w < 1; default 0.5 when neither ``student`` nor this is given).
        student_depth: a derived student keeps only the teacher's first this many convolution
            blocks (a Sequential teacher; None: all of them).
        student_init: a derived student's initial weights: ``"random"`` (seeded) or
            ``"teacher"`` (the teacher's weights of the filters/units kept, largest L1 norm).
        distill_augment: ``None`` or ``"flip"``: each epoch a seeded half of the training images
            mirrored left-right (soft targets of the mirrored images; the labels-only baseline gets
            the same flips).
        distill_lr: the student's peak learning rate (Adam, cosine decay to 0; the labels-only
            baseline gets the same).
        distill_epochs: student training epochs (the labels-only baseline gets as many).
        temperature: softmax temperature of the soft targets.
        alpha: weight of the label loss (the soft-target loss has ``1 - alpha``);
            unlabelled data: soft targets only.
        qat: quantization-aware training before INT8 export (tfmot ``quantize_model``).
        qat_epochs, qat_lr: QAT fine-tuning epochs and learning rate.
        qat_fallback: with ``max_drop`` and ``train_data``: when post-training INT8 (and
            ``auto_fallback``) cannot meet ``max_drop``, retry with QAT.
        train_data: training data (same kinds as pruning's); the convert ``train_data``
            keyword fills it when left None.
        stage_latency: measure each stage's latency for the report (a temporary FP32 TFLite
            of the stage's model through :mod:`edgeship.runtime`, about a second per stage).
    """

    low_rank: int | str | None = None
    low_rank_energy: float = DEFAULT_ENERGY
    low_rank_epochs: int = 2
    distill: bool = False
    student: Any = None
    student_width: float | None = None
    student_depth: int | None = None
    student_init: str = "random"
    distill_epochs: int = 5
    distill_augment: str | None = None
    distill_lr: float = 2e-3
    temperature: float = 4.0
    alpha: float = 0.3
    qat: bool = False
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    qat_fallback: bool = True
    train_data: Any = None
    stage_latency: bool = True

    @property
    def active(self) -> bool:
        """Any stage asked for (QAT as a --max-drop fallback alone does not count)."""
        return self.low_rank is not None or self.distill or self.qat


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what}={value!r} must be a positive integer")


def _fraction(value, what: str, *, closed: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < float(value) and (
        float(value) <= 1 if closed else float(value) < 1)
    if not ok:
        raise InputError(f"{what}={value!r} must be a number between 0 and 1")


def check(opts: CompressOptions) -> CompressOptions:
    """Refuse impossible compression options before any work.

    Raises:
        InputError: a bad rank/energy/width/epochs/temperature/learning rate, a student
            path that does not exist, both ``student`` and ``student_width``, or a stage
            that trains without ``train_data`` (distillation, QAT).
    """
    if not isinstance(opts, CompressOptions):
        raise InputError(f"compress must be a CompressOptions, not {type(opts).__name__}")
    lr = opts.low_rank
    if lr is not None and not (isinstance(lr, str) and lr.lower() == AUTO):
        if isinstance(lr, str) and lr.strip().isdigit():
            lr = int(lr)
        if isinstance(lr, bool) or not isinstance(lr, int) or lr < 1:
            raise InputError(f"low_rank={opts.low_rank!r} must be a positive integer rank or 'auto'")
    _fraction(opts.low_rank_energy, "low_rank_energy")
    for v, what in ((opts.low_rank_epochs, "low_rank_epochs"), (opts.distill_epochs, "distill_epochs"),
                    (opts.qat_epochs, "qat_epochs")):
        _positive_int(v, what)
    if opts.student_width is not None:
        _fraction(opts.student_width, "student_width")
    if opts.student_depth is not None:
        _positive_int(opts.student_depth, "student_depth")
        if opts.student is not None:
            raise InputError("student_depth (--student-depth) applies to a derived student, not a given student")
    if opts.distill_augment not in (None, "flip"):
        raise InputError(f"distill_augment={opts.distill_augment!r} must be 'flip' (or None: no augmentation)")
    if opts.student_init not in ("random", "teacher"):
        raise InputError(f"student_init={opts.student_init!r} must be 'random' or 'teacher'")
    if opts.student is not None and opts.student_init != "random":
        raise InputError("student_init applies to a derived student (student_width), not a given student")
    if opts.student is not None and opts.student_width is not None:
        raise InputError("pass either student (--student) or student_width (--student-width), not both")
    if (opts.student is not None or opts.student_width is not None or opts.student_depth is not None) \
            and not opts.distill:
        raise InputError("student/student_width/student_depth apply to distillation: add distill=True (--distill)")
    if isinstance(opts.student, (str, os.PathLike)) and not os.path.isfile(os.fspath(opts.student)):
        raise InputError(f"student model {os.fspath(opts.student)!r} does not exist (expected a .keras file)")
    for v, what in ((opts.temperature, "temperature"), (opts.qat_lr, "qat_lr"), (opts.distill_lr, "distill_lr")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v) > 0:
            raise InputError(f"{what}={v!r} must be a positive number")
    if isinstance(opts.alpha, bool) or not isinstance(opts.alpha, (int, float)) or not 0 <= float(opts.alpha) <= 1:
        raise InputError(f"alpha={opts.alpha!r} must be between 0 and 1")
    if not isinstance(opts.stage_latency, bool):
        raise InputError(f"stage_latency={opts.stage_latency!r} must be True or False")
    if opts.train_data is None:
        if opts.distill:
            raise InputError("distillation trains the student: pass train_data (--train-data)")
        if opts.qat:
            raise InputError("quantization-aware training needs train_data (--train-data)")
    if isinstance(opts.train_data, (str, os.PathLike)) and not os.path.exists(os.fspath(opts.train_data)):
        raise InputError(f"training data {os.fspath(opts.train_data)!r} does not exist")
    return opts


def rank_value(low_rank) -> int | str | None:
    """``"auto"``, an int rank or None (a digit string becomes an int)."""
    if low_rank is None:
        return None
    if isinstance(low_rank, str):
        return AUTO if low_rank.lower() == AUTO else int(low_rank)
    return int(low_rank)


def compression_options(compress, train_data, *, pruning: bool, max_drop) -> tuple:
    """``(CompressOptions or None, train_data for pruning)`` from ``convert()``'s arguments.

    ``train_data`` serves the compression stages when any is asked for, and QAT as the
    ``max_drop`` fallback; pruning gets it too when pruning is asked for. Without either,
    it goes to pruning alone (which refuses it without ``prune``).
    """
    if compress is None and (train_data is None or max_drop is None):
        return None, train_data
    opts = compress if compress is not None else CompressOptions()
    if isinstance(opts, CompressOptions) and opts.train_data is None and train_data is not None:
        import dataclasses  # noqa: PLC0415

        opts = dataclasses.replace(opts, train_data=train_data)
    return opts, (train_data if pruning else None)
