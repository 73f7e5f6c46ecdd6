"""``edgeship convert``: a Keras or ONNX model -> a calibrated, validated bundle."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..errors import InputError, UsageError
from ..safeio import byte_size
from ..vocab import CalibMethod, Format, IOType, Precision, Target, Task, parse, values
from .common import cli_message, emit_json, int_at_least, quiet_tf_env, require_path, stdout_to_stderr

NEEDS_CALIBRATION = (Precision.INT8.value, Precision.INT16X8.value)


def parse_targets(text: str) -> tuple:
    """``--target cpu,edgetpu`` -> ``("cpu", "edgetpu")`` (argparse ``type=``; values from :class:`~edgeship.vocab.Target`)."""
    items = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of {', '.join(values(Target))}")
    try:
        return tuple(parse(Target, t, "--target").value for t in items)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--target ", "", 1)) from None


def parse_formats(text: str | None) -> tuple | None:
    """``--formats tflite,onnx`` -> ``("tflite", "onnx")``.

    Raises:
        UsageError: a format that is not one of :class:`~edgeship.vocab.Format`.
    """
    if not text:
        return None
    items = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in items if f not in values(Format)]
    if bad or not items:
        raise UsageError(f"--formats has {', '.join(map(repr, bad)) or 'nothing'}; expected a comma list of "
                         f"{', '.join(values(Format))}")
    return items


def parse_shape(text: str | None):
    """``--input-shape 1,224,224,3`` -> ``(1, 224, 224, 3)``; ``?`` leaves a dimension dynamic (``1,3,?,?`` -> ``(1, 3, None, None)``).

    Raises:
        UsageError: not a list of integers, or a dimension <= 0.
    """
    if not text:
        return None
    try:
        dims = [None if d.strip() == "?" else int(d) for d in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers such as 1,224,224,3 "
                         "(? for a dimension left dynamic, e.g. 1,3,?,?)") from None
    if any(d is not None and d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r} has a non-positive dimension (write ? for a dimension left "
                         "dynamic, e.g. 1,3,?,?)")
    return tuple(dims)


def parse_labels(text: str | None):
    """``--labels FILE`` (one per line) or ``--labels a,b,c`` -> a list of names.

    Raises:
        UsageError: neither an existing file nor a comma list.
    """
    if not text:
        return None
    if os.path.isfile(text):
        with open(text, "r", encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip()]
    if "," in text:
        return [s.strip() for s in text.split(",")]
    raise UsageError(f"--labels {text!r} is neither a file (one label per line) nor a comma-separated list")


def effective_precision(args) -> str:
    """The precision ``convert`` will use: ``--precision``, else what the ``--target`` prefers (the converter's rule).

    Raises:
        InputError: a choice the targets cannot run (e.g. ``--target edgetpu --precision fp16``).
    """
    from edgeship.converters.targets import parse_targets as resolve_targets  # noqa: PLC0415

    _targets, precision, _io, _formats = resolve_targets(args.target, args.precision, args.io,
                                                         parse_formats(args.formats))
    return str(getattr(precision, "value", precision))


def check_calibration(args) -> None:
    """``--calib`` present when the precision (given, or the default for the targets) needs it; its path exists.

    Raises:
        UsageError: no ``--calib`` for an integer precision.
        InputError: ``--calib`` names a path that does not exist.
    """
    precision = effective_precision(args)
    if args.calib is None and precision in NEEDS_CALIBRATION:
        how = f"--precision {precision}" + ("" if args.precision else " (the default)")
        raise UsageError(f"{how} needs calibration data: pass --calib IMAGES_DIR|FILE.npy|FILE.npz "
                         "(or --calib random to use noise, which the report will flag)")
    if args.calib is not None and args.calib != "random":
        require_path(args.calib, "--calib")


def compress_options(args):
    """The ``CompressOptions`` of ``--low-rank``/``--distill``/``--qat`` and their settings; None when none is given.

    ``--student``/``--student-width`` alone count as given, so that their check
    (they need ``--distill``) runs instead of the flag being ignored."""
    if not args.distill and (args.temperature is not None or args.alpha is not None or args.student_init is not None
                             or args.student_depth is not None or args.distill_augment is not None
                             or args.distill_lr is not None):
        raise UsageError("--distill-temperature/--distill-alpha/--distill-augment/--distill-lr/--student-init/"
                         "--student-depth apply to distillation: add --distill")
    if (args.low_rank is None and not args.distill and not args.qat
            and args.student is None and args.student_width is None and args.student_depth is None):
        return None
    from edgeship.converters.compress import CompressOptions  # noqa: PLC0415

    low_rank = args.low_rank
    if low_rank is not None and low_rank.strip().isdigit():
        low_rank = int(low_rank)
    return CompressOptions(low_rank=low_rank, low_rank_energy=args.low_rank_energy,
                           low_rank_epochs=args.low_rank_epochs, distill=args.distill, student=args.student,
                           student_width=args.student_width, student_depth=args.student_depth,
                           distill_epochs=args.distill_epochs, distill_augment=args.distill_augment,
                           qat=args.qat, qat_epochs=args.qat_epochs, qat_lr=args.qat_lr,
                           **{k: v for k, v in (("temperature", args.temperature), ("alpha", args.alpha),
                                                ("student_init", args.student_init),
                                                ("distill_lr", args.distill_lr)) if v is not None})


def cmd_convert(args) -> int:
    quiet_tf_env()
    require_path(args.model, "model")
    check_calibration(args)
    for flag, value in (("--eval", args.eval), ("--train-data", args.train_data), ("--student", args.student)):
        require_path(value, flag)
    formats = parse_formats(args.formats)
    labels = parse_labels(args.labels)
    input_shape = parse_shape(args.input_shape)
    from edgeship.converters import convert  # noqa: PLC0415

    from .. import progress  # noqa: PLC0415

    # Bars (on a terminal) stay visible while the converter silences TensorFlow's fd 2.
    progress.pin_console(lines=progress.enabled())
    with contextlib.ExitStack() as stack:
        stack.callback(progress.unpin_console)
        out = stack.enter_context(stdout_to_stderr(args.json))
        result = convert(
            args.model, args.output, calib=args.calib, precision=args.precision, io=args.io, formats=formats,
            preprocess=args.preprocess, labels=labels, eval_data=args.eval, max_drop=args.max_drop,
            calib_count=args.calib_count, seed=args.seed, input_shape=input_shape, force=args.force,
            calib_max_bytes=args.calib_max_bytes,
            allow_legacy_h5=args.allow_legacy_h5, allow_unsafe=args.allow_unsafe, calib_method=args.calib_method,
            exclude=tuple(e for e in (args.exclude or "").split(",") if e), target=args.target, prune=args.prune,
            prune_structure=args.prune_structure, prune_epochs=args.prune_epochs, train_data=args.train_data,
            auto_fallback=args.auto_fallback, layer_errors=args.layer_errors, compress=compress_options(args),
            task=args.task,
        )
        if args.json:
            emit_json(out, {"bundle": result.bundle, "warnings": list(result.warnings), "manifest": result.manifest})
        else:
            for w in result.warnings:
                print(f"edgeship: warning: {cli_message(w, getattr(args, 'cli_flags', {}))}", file=sys.stderr)
            print(result.table())
            print(f"\nwrote {result.bundle}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("convert", help="convert a Keras or ONNX model into a bundle")
    c.add_argument("model", help=".keras, SavedModel folder, .h5 (with --allow-legacy-h5), .onnx or a float "
                   ".tflite (through tf2onnx)")
    c.add_argument("-o", "--output", required=True, help="bundle folder to write (required)")
    c.add_argument("--calib", help="calibration data: image folder, .npy, .npz (x[, y]) or the word 'random'; "
                                   "needed by int8 and int16x8 (default: none)")
    c.add_argument("--calib-count", type=int_at_least(1), default=200, help="maximum calibration samples (default 200)")
    c.add_argument("--calib-max-bytes", type=byte_size, default=None, metavar="SIZE",
                   help="memory budget for a .npy/.npz --calib/--eval file, checked on its header before "
                        "anything is read (default 2GiB; e.g. 512MiB)")
    c.add_argument("--calib-method", choices=values(CalibMethod), default=CalibMethod.MINMAX.value,
                   help=f"calibration method (default {CalibMethod.MINMAX.value})")
    c.add_argument("--precision", choices=values(Precision), default=None,
                   help="default: int8, or what the --target prefers (gpu: fp16)")
    c.add_argument("--io", choices=values(IOType), default=None,
                   help="input/output type of integer models (default int8; int16 for int16x8)")
    c.add_argument("--formats", default=None,
                   help="comma list of tflite,onnx (default tflite, or what the --target prefers: jetson -> onnx)")
    c.add_argument("--target", type=parse_targets, default=None, metavar="|".join(values(Target)) + "[,...]",
                   help="devices the bundle is for (several allowed); shapes precision, I/O and formats (default cpu)")
    c.add_argument("--preprocess", help="e.g. size=224x224,resize=letterbox,color=rgb,scale=1/255,mean=0.5,std=0.5 "
                                        "(default: from the model's input: its size, scale=1/255)")
    c.add_argument("--task", choices=[t for t in values(Task) if t != "regression"], default=None,
                   help="what the model does: classification, detection (INT8 keeps the decode head in float; "
                        "validated on detections), segmentation or other (dense maps: cosine/SQNR). "
                        "Default: inferred from the graph where unambiguous (the report says so), else other")
    c.add_argument("--labels", help="labels file (one per line) or a comma list, one per class (default: none)")
    c.add_argument("--eval", help="held-out data for validation: .npy, or .npz with x and optional y, or image folder "
                                  "(a detector's folder with YOLO txt labels, as `edgeship eval --data`: validated "
                                  "on mAP@0.5:0.95 against them; default: a part of --calib)")
    c.add_argument("--max-drop", type=float, help="fail (writing nothing) if accuracy drops more than this many "
                                                  "points (detectors: mAP@0.5:0.95 with labelled --eval images, else "
                                                  "detection F1 against the source; default: no limit)")
    c.add_argument("--input-shape", help="fix input dimensions, e.g. 1,224,224,3; ? leaves one dynamic (1,3,?,?: "
                   "ONNX artifacts keep dynamic height/width; default: batch fixed to 1, the rest as the model says)")
    c.add_argument("--exclude", help="comma list of node names or op types to keep in float (ONNX; default: none)")
    c.add_argument("--prune", type=float, metavar="SPARSITY",
                   help="prune weights to this sparsity (0-0.95) first (default: no pruning)")
    c.add_argument("--prune-structure", help="sparsity pattern: 2:4 (N:M), 1xK (blocks of K input weights) or "
                                             "elementwise; default: 1x4 blocks in Dense kernels, elementwise in "
                                             "convolutions")
    c.add_argument("--prune-epochs", type=int_at_least(0), default=2,
                   help="fine-tuning epochs while pruning (default 2)")
    c.add_argument("--train-data", help="training data for pruning, --low-rank, --distill and --qat: image folder "
                                        "with class subfolders, or .npz x/y (default: none, prune without "
                                        "fine-tuning)")
    g = c.add_argument_group("compression that trains (order: distill -> low-rank -> prune -> QAT/PTQ INT8; "
                             "--train-data trains them)")
    g.add_argument("--low-rank", metavar="RANK|auto",
                   help="factorize Dense/Conv2D kernels (ONNX: Gemm/MatMul weights) by truncated SVD to this rank, or "
                        "per layer by an energy budget with 'auto' (default: off)")
    g.add_argument("--low-rank-energy", type=float, default=0.9,
                   help="share of the squared singular values 'auto' keeps per layer (default 0.9)")
    g.add_argument("--low-rank-epochs", type=int_at_least(1), default=2,
                   help="fine-tuning epochs after factorizing, with --train-data (default 2)")
    g.add_argument("--distill", action="store_true",
                   help="train a smaller student on the model's soft outputs (needs --train-data; default: off)")
    g.add_argument("--student", help="the student model (.keras) for --distill (default: derived, --student-width)")
    g.add_argument("--student-width", type=float, default=None,
                   help="derive the student: filters/units times this, 0-1 (default 0.5)")
    g.add_argument("--student-depth", type=int_at_least(1), default=None,
                   help="derive the student with only the teacher's first N convolution blocks (a Sequential "
                        "teacher; default: all)")
    g.add_argument("--student-init", choices=("random", "teacher"), default=None,
                   help="a derived student's initial weights: random (seeded), or the teacher's weights of the "
                        "filters/units kept (largest L1 norm) (default random)")
    g.add_argument("--distill-epochs", type=int_at_least(1), default=5, help="student training epochs (default 5)")
    g.add_argument("--distill-temperature", "--temperature", dest="temperature", type=float, default=None,
                   help="softmax temperature of the soft targets, > 0 (default 4)")
    g.add_argument("--distill-augment", choices=("flip",), default=None,
                   help="mirror a seeded half of the training images each epoch, with the teacher's soft targets "
                        "of the mirrored ones (the labels-only baseline gets the same flips) (default: off)")
    g.add_argument("--distill-lr", type=float, default=None,
                   help="the student's peak learning rate (Adam, cosine decay; the labels-only baseline gets the "
                        "same) (default 2e-3)")
    g.add_argument("--distill-alpha", dest="alpha", type=float, default=None,
                   help="weight of the label loss, 0-1; the soft-target loss gets 1 - alpha (default 0.3)")
    g.add_argument("--qat", action="store_true",
                   help="quantization-aware training before INT8 export (needs --train-data; default: off; used "
                        "automatically when --max-drop is missed after post-training INT8 and --train-data is given)")
    g.add_argument("--qat-epochs", type=int_at_least(1), default=2, help="QAT epochs (default 2)")
    g.add_argument("--qat-lr", type=float, default=1e-4, help="QAT learning rate (default 1e-4)")
    c.add_argument("--auto-fallback", action="store_true",
                   help="with --max-drop: keep the most quantization-sensitive layers in float until the drop fits "
                        "(default: off)")
    c.add_argument("--layer-errors", action="store_true",
                   help="measure the ten layers with the largest INT8 error (default: off)")
    c.add_argument("--seed", type=int, default=0, help="seed of the data split and sampling (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing bundle (default: refuse)")
    c.add_argument("--allow-legacy-h5", action="store_true",
                   help="accept legacy .h5 files (HDF5 loading ignores safe mode; default: refuse)")
    c.add_argument("--allow-unsafe", action="store_true",
                   help="skip the allow-lists (Keras layers/ops/TF functions, SavedModel ops, HDF5 external data, "
                        "vocabulary paths) and load with Keras safe mode off: the file may then run code, read or "
                        "write files; only for files you trust (default: refuse)")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: a table)")
    c.set_defaults(func=cmd_convert)
    return c
